"""Extract residual-stream activations of SmolLM2-135M over the embedded corpus into a store.

    jaxinterp extract --config configs/extract.py \
        --config.model=smollm2 --config.hooks=blocks.12.hook_resid_post \
        --config.data=pydoc --config.out=stores/smollm2_pydoc

Variant ``:quick`` extracts 8k tokens, for a smoke test.
"""

import ml_collections

from jaxinterp.schemas import EXTRACT


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = EXTRACT.defaults()  # every field's default and doc: jaxinterp/schemas.py
    if variant == "quick":
        config.max_tokens = 8192
        config.out = "stores/smollm2_pydoc_quick"
    return config
