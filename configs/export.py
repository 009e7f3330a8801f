"""Export a trained run for other tools.

    jaxinterp export --config configs/export.py --config.run=runs/topk \
        --config.format=saelens --config.out=exports/topk_saelens

Formats (``--config.format``):
  saelens   SAELens v6 directory (``sae_lens.SAE.load_from_disk(out)``); every architecture
            (BatchTopK and Matryoshka as jumprelu, ReLU as standard).
  sparsify  EleutherAI sparsify / delphi: ``<out>/<hookpoint>/`` with the hookpoint an HF module
            path (``layers.6``); ``sparsify.SparseCoder.load_from_disk(out/hookpoint)``. TopK only.
  npz       Gemma-Scope-style ``<out>/params.npz`` (+ ``cfg.json``); JumpReLU, BatchTopK,
            Matryoshka, and ReLU (threshold 0). Not TopK.

A sweep run needs ``--config.sae=<name>``. Load any of them back with
``jaxinterp.export.load_sae(path)``.
"""

import ml_collections

from jaxinterp.schemas import distributed_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.distributed = distributed_config()  # processes: from the environment (launch/local.py, TPU pod, SLURM)
    config.run = "runs/topk"
    config.sae = ""  # a sweep run names the SAE to use
    config.format = "saelens"  # saelens | sparsify | npz
    config.out = "exports/topk_saelens"
    config.overwrite = False
    return config
