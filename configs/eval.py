"""Evaluate a trained SAE: holdout reconstruction metrics, feature density, the SAE spliced into the
source model (CE loss clean / spliced / zero-ablated, CE-loss recovered, KL), and top-activating
examples of a few latents.

    jaxinterp eval --config configs/eval.py --config.run=runs/topk
    jaxinterp eval --config configs/eval.py --config.run=runs/topk --config.latents=12,345 --config.ce_contexts=0
    jaxinterp eval --config configs/eval.py --config.run=runs/tcs --config.sae=l0 --config.transcoder_set=runs/tcs
    jaxinterp eval --config configs/eval.py --config.run=runs/clt    # a cross-layer transcoder: per-layer metrics
"""

import ml_collections

from jaxinterp.schemas import EVAL


def get_config() -> ml_collections.ConfigDict:
    config = EVAL.defaults()  # every field's default and doc: jaxinterp/schemas.py
    return config
