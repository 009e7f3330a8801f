"""Train a sparse dictionary on an activation store: a TopK SAE (Gao et al. 2024) by default, any architecture,
sweep or transcoder by overrides.

    jaxinterp train --config configs/train.py \
        --config.store=stores/smollm2_pydoc --config.hook=blocks.12.hook_resid_post \
        --config.out=runs/topk --config.sae.n_latents=4096 --config.sae.k=32 --config.steps=2000

Other architectures and sweeps (several SAEs from the same batches) are overrides::

    jaxinterp train --config configs/train.py --config.sae.architecture=jumprelu --config.normalize=true
    jaxinterp train --config configs/train.py --config.sweep="k16: k=16; k64: k=64; bt: architecture=batch_topk"

A transcoder (Dunefsky et al. 2024) reads one hook and reconstructs another; ``sae.skip`` adds a
linear skip connection (Paulo et al. 2025)::

    jaxinterp train --config configs/train.py --config.hook=blocks.5.mlp.hook_in \
        --config.target_hook=blocks.5.hook_mlp_out --config.sae.skip=true --config.out=runs/tc5

Variant ``:quick`` trains 100 steps of a 1024-latent SAE, for a smoke test.
"""

import ml_collections

from jaxinterp.schemas import TRAIN


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = TRAIN.defaults()  # every field's default and doc: jaxinterp/schemas.py
    if variant == "quick":
        config.steps = 100
        config.sae.n_latents = 1024
        config.out = "runs/topk_quick"
    return config
