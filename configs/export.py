"""Export a trained run for other tools.

    jaxinterp export --config configs/export.py --config.run=runs/topk \
        --config.format=saelens --config.out=exports/topk_saelens
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.run = "runs/topk"
    config.sae = ""  # a sweep run names the SAE to use
    config.format = "saelens"
    config.out = "exports/topk_saelens"
    config.overwrite = False
    return config
