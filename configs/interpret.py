"""Auto-interpretation of a trained SAE (Paulo et al. 2024, EleutherAI's delphi): its latent cache over a store,
in delphi's layout, at <out>/cache/<hook>/.

    jaxinterp interpret --config configs/interpret.py --config.run=runs/topk
    jaxinterp interpret --config configs/interpret.py --config.run=exports/topk_saelens --config.store=stores/smollm2
    python launch/local.py -n 2 -d 4 -- jaxinterp interpret --config configs/interpret.py --config.run=runs/topk
"""

import ml_collections

from jaxinterp.schemas import INTERPRET


def get_config() -> ml_collections.ConfigDict:
    config = INTERPRET.defaults()  # every field's default and doc: jaxinterp/schemas.py
    return config
