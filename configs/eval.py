"""Evaluate a trained run on held-out activations (FVU, explained variance, L0, dead/dense fractions).

    jaxinterp eval --config configs/eval.py --config.run=runs/topk
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.run = "runs/topk"
    config.sae = ""  # a sweep run names the SAE to use
    config.store = ""
    config.eval_tokens = 16384
    config.batch_size = 4096
    config.out = ""
    return config
