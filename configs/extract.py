"""Extract residual-stream activations of SmolLM2-135M over the embedded corpus into a store.

    jaxinterp extract --config configs/extract.py \
        --config.model=smollm2 --config.hooks=blocks.12.hook_resid_post \
        --config.data=pydoc --config.out=stores/smollm2_pydoc

Variant ``:quick`` extracts 8k tokens, for a smoke test.
"""

import ml_collections

from jaxinterp.schemas import distributed_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.distributed = distributed_config()  # processes: from the environment (launch/local.py, TPU pod, SLURM)
    config.model = "smollm2"
    config.hooks = "blocks.12.hook_resid_post"
    config.data = "pydoc"
    config.text_field = "text"
    config.out = "stores/smollm2_pydoc"
    config.dtype = "float32"
    config.model_dtype = "float32"
    config.context_size = 256
    config.prepend_bos = True
    config.max_tokens = 0
    config.backend = "auto"
    config.batch_size = 8
    config.chunk_mib = 2.0
    config.shard_mib = 64.0
    config.overwrite = False
    config.process_index = 0
    config.process_count = -1
    if variant == "quick":
        config.max_tokens = 8192
        config.out = "stores/smollm2_pydoc_quick"
    return config
