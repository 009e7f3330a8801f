"""ReLU SAE with an L1 penalty scaled by decoder row norms (Conerly et al. 2024, Anthropic
"Circuits Updates — April 2024"; Bricken et al. 2023). Decoder norms are free: the penalty
``λ·Σ_i f_i‖W_dec,i‖`` stops the SAE from shrinking latents by growing decoder rows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxinterp.config import Field
from jaxinterp.sae.base import (Architecture, LossContext, LossOutput, Params, dense_decode, init_dictionary,
                                linear_warmup, option, pre_activations, skip_term, total_variance)

from jaxinterp.sae.spec import ArchitectureSpec

__all__ = ["make", "L1_COEFFICIENT", "PENALTY_WARMUP_STEPS", "SPEC"]

# Shared with JumpReLU's L0 penalty.
PENALTY_WARMUP_STEPS = Field(int, "ReLU/JumpReLU/Gated: steps of linear penalty warm-up", minimum=0, default=0)
L1_COEFFICIENT = Field(float, "ReLU/Gated: L1 penalty weight, scaled by decoder norms", minimum=0.0, default=5.0)


def make(cfg: Mapping[str, Any]) -> Architecture:
    """A ReLU + L1 architecture (``l1_coefficient`` = 5, ``penalty_warmup_steps`` = 0).

    The L1 coefficient ramps up linearly over the warm-up, as in Conerly et al. 2024.
    """
    l1 = linear_warmup(option(cfg, "l1_coefficient", L1_COEFFICIENT.default),
                       option(cfg, "penalty_warmup_steps", PENALTY_WARMUP_STEPS.default))
    transcode = option(cfg, "transcode", False)

    def init(key, d_in, d_sae, sample, d_out=None, target_sample=None):
        return init_dictionary(key, d_in, d_sae, sample, d_out, target_sample, cfg), {}

    def encode(params: Params, arch_state, x: jax.Array) -> jax.Array:
        return jax.nn.relu(pre_activations(params, x, transcode))

    def loss(params: Params, arch_state, x: jax.Array, y: jax.Array, ctx: LossContext):
        acts = encode(params, arch_state, x)
        x_hat = skip_term(params, x, dense_decode(params, acts))
        variance = total_variance(y)
        squared_error = jnp.sum(jnp.square(y - x_hat))
        penalty = jnp.sum(acts @ jnp.linalg.norm(params["W_dec"], axis=-1))
        total = (squared_error + l1(ctx.step) * penalty) / variance
        terms = {"fvu": squared_error / variance, "l1": penalty / variance}
        return total, LossOutput(acts, terms, arch_state, x_hat)

    # Gao et al.'s 2e-4 (Conerly et al. train at 5e-5; at 10x, 13% of latents died within 100k tokens).
    return Architecture("relu", init, encode, dense_decode, loss, unit_norm_decoder=False, base_lr=2e-4)


# Decoder norms are free (unit_norm_decoder=False), so a warm start leaves them as they are.
SPEC = ArchitectureSpec("relu", make, "relu", fields={
    "l1_coefficient": L1_COEFFICIENT,
    "penalty_warmup_steps": PENALTY_WARMUP_STEPS,
})
