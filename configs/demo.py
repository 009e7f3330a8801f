"""The default end-to-end run: SmolLM2-135M over the embedded pydoc corpus, one hook, a TopK SAE.

    jaxinterp demo
    jaxinterp demo --config configs/demo.py:quick --config.out=/tmp/demo   # ~1 minute smoke test

Everything goes under ``out``: store/, run/ (orbax checkpoints), eval/ (metrics, feature density,
top-activating examples), saelens/, summary.json.
Sized to finish in a few minutes on 2 CPU cores.
"""

import ml_collections

from jaxinterp.schemas import DEMO


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = DEMO.defaults()  # every field's default and doc: jaxinterp/schemas.py
    config.extract.chunk_mib = 1.0  # the demo's numbers in README.md and its tests were measured with 1 MiB chunks
    config.train.steps = 800
    config.train.dead_tokens = 200_000  # the demo sees ~1M tokens; the 10M default would never trigger
    config.train.checkpoint_every = 400
    if variant == "quick":
        config.extract.max_tokens = 16384
        config.extract.hooks = "blocks.3.hook_resid_post"
        config.train.steps = 150
        config.train.batch_size = 512
        config.train.sae.n_latents = 1024
        config.train.holdout_fraction = 0.1
        config.train.eval_tokens = 2048
        config.train.checkpoint_every = 100
        config.eval.eval_tokens = 2048
        config.eval.contexts = 16
        config.eval.ce_contexts = 4
    return config
