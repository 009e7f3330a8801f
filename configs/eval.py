"""Evaluate a trained SAE: holdout reconstruction metrics, feature density, the SAE spliced into the
source model (CE loss clean / spliced / zero-ablated, CE-loss recovered, KL), and top-activating
examples of a few latents.

    jaxinterp eval --config configs/eval.py --config.run=runs/topk
    jaxinterp eval --config configs/eval.py --config.run=runs/topk --config.latents=12,345 --config.ce_contexts=0
    jaxinterp eval --config configs/eval.py --config.run=runs/tcs --config.sae=l0 --config.transcoder_set=runs/tcs
"""

import ml_collections

from jaxinterp.schemas import distributed_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.distributed = distributed_config()  # processes: from the environment (launch/local.py, TPU pod, SLURM)
    config.run = "runs/topk"
    config.sae = ""  # a sweep run names the SAE to use
    config.store = ""
    config.eval_tokens = 16384
    config.batch_size = 4096
    config.massive_ratio = 10.0  # *_nonmassive metrics: norm > 10x median = massive (Sun et al. 2024)
    config.model = ""  # '' = the model recorded in the store's manifest
    config.backend = "auto"
    config.contexts = 64
    config.ce_contexts = 16
    config.ce_batch_size = 4
    config.latents = ""
    config.n_latents = 8
    config.examples_per_latent = 10
    config.out = ""
    config.allow_other_model = False  # refuse a store made by another model than the SAE's
    config.transcoder_set = ""  # runs whose transcoders replace every MLP they cover at once (the replacement model)
    config.transcoder_set_saes = ""  # members of its one sweep run; '' = all
    return config
