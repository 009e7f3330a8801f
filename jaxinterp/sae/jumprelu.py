"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with
JumpReLU Sparse Autoencoders").

``f(z) = z·H(z − θ)`` with a learned per-latent threshold ``θ = exp(log_threshold)`` and an L0
penalty. ``H`` has no useful gradient, so θ is trained with straight-through estimators using a
rectangle kernel of width ``bandwidth`` (the paper's eqs. 11–12).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.config import Field
from jaxinterp.sae.base import (Architecture, LossContext, LossOutput, Params, dense_decode, init_dictionary,
                                linear_warmup, option, pre_activations, skip_term, total_variance)

from jaxinterp.sae.relu import PENALTY_WARMUP_STEPS
from jaxinterp.sae.spec import LATENT, ArchitectureSpec, standard_from_portable, standard_to_portable
from jaxinterp.sae.topk import renormalize_encoder

__all__ = ["make", "jump_relu", "heaviside", "initial_log_threshold", "SPEC"]


def _rectangle(u: jax.Array) -> jax.Array:
    return (jnp.abs(u) < 0.5).astype(u.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def jump_relu(z: jax.Array, threshold: jax.Array, bandwidth: float) -> jax.Array:
    """``z · 1[z > θ]``; ∂/∂θ = −(θ/ε)·K((z − θ)/ε) (straight-through, rectangle kernel K)."""
    return z * (z > threshold)


def _jump_relu_forward(z, threshold, bandwidth):
    return jump_relu(z, threshold, bandwidth), (z, threshold)


def _jump_relu_backward(bandwidth, residuals, g):
    z, threshold = residuals
    g_threshold = -(threshold / bandwidth) * _rectangle((z - threshold) / bandwidth) * g
    return g * (z > threshold), jnp.sum(g_threshold, axis=tuple(range(z.ndim - threshold.ndim)))


jump_relu.defvjp(_jump_relu_forward, _jump_relu_backward)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def heaviside(z: jax.Array, threshold: jax.Array, bandwidth: float) -> jax.Array:
    """``1[z > θ]``; ∂/∂θ = −(1/ε)·K((z − θ)/ε), no gradient to z (the paper's eq. 12)."""
    return (z > threshold).astype(z.dtype)


def _heaviside_forward(z, threshold, bandwidth):
    return heaviside(z, threshold, bandwidth), (z, threshold)


def _heaviside_backward(bandwidth, residuals, g):
    z, threshold = residuals
    g_threshold = -(1.0 / bandwidth) * _rectangle((z - threshold) / bandwidth) * g
    return jnp.zeros_like(z), jnp.sum(g_threshold, axis=tuple(range(z.ndim - threshold.ndim)))


heaviside.defvjp(_heaviside_forward, _heaviside_backward)


def initial_log_threshold(pre: jax.Array, target_l0: int, floor: float = 1e-3) -> jax.Array:
    """Per-latent log-thresholds at which each latent fires on ``target_l0 / d_sae`` of ``pre``'s
    tokens, so training starts near the wanted sparsity instead of with half the latents on."""
    quantile = jnp.quantile(pre, 1.0 - target_l0 / pre.shape[1], axis=0)
    return jnp.log(jnp.maximum(quantile, floor))


def make(cfg: Mapping[str, Any]) -> Architecture:
    """A JumpReLU architecture: ``l0_coefficient``, ``penalty_warmup_steps``, ``bandwidth`` (0.001),
    and ``k``, the L0 the thresholds are initialised for (from the first training batch)."""
    l0_coefficient = linear_warmup(option(cfg, "l0_coefficient", 1.0), option(cfg, "penalty_warmup_steps", 0))
    bandwidth, target_l0 = option(cfg, "bandwidth", 1e-3), cfg["k"]
    transcode = option(cfg, "transcode", False)

    def init(key, d_in, d_sae, sample, d_out=None, target_sample=None):
        params = init_dictionary(key, d_in, d_sae, sample, d_out, target_sample, cfg)
        pre = pre_activations(params, jnp.asarray(sample, jnp.float32), transcode)
        return {**params, "log_threshold": initial_log_threshold(pre, min(target_l0, d_sae))}, {}

    def encode(params: Params, arch_state, x: jax.Array) -> jax.Array:
        pre = pre_activations(params, x, transcode)
        return jax.nn.relu(pre) * (pre > jnp.exp(params["log_threshold"]))

    def loss(params: Params, arch_state, x: jax.Array, y: jax.Array, ctx: LossContext):
        pre = pre_activations(params, x, transcode)
        threshold = jnp.exp(params["log_threshold"])
        acts = jump_relu(jax.nn.relu(pre), threshold, bandwidth)
        x_hat = skip_term(params, x, dense_decode(params, acts))
        variance = total_variance(y)
        squared_error = jnp.sum(jnp.square(y - x_hat))
        l0_sum = jnp.sum(heaviside(pre, threshold, bandwidth))
        total = (squared_error + l0_coefficient(ctx.step) * l0_sum) / variance
        terms = {"fvu": squared_error / variance, "l0_penalty": l0_sum / variance}
        return total, LossOutput(acts, terms, arch_state, x_hat)

    # Gao et al.'s 2e-4 (the paper trains at 7e-5; at 10x, 41% of latents died within 100k tokens).
    return Architecture("jumprelu", init, encode, dense_decode, loss, unit_norm_decoder=True, base_lr=2e-4)


def _to_portable(params: Params, arch_state, cfg: Mapping[str, Any]) -> dict[str, np.ndarray]:
    # exp in float32 numpy, as exporters always computed it.
    return {**standard_to_portable(params, arch_state, cfg),
            "threshold": np.exp(np.asarray(params["log_threshold"], np.float32))}


def _from_portable(weights: Mapping[str, np.ndarray], cfg: Mapping[str, Any]) -> tuple[Params, dict]:
    """``log_threshold = log(max(threshold, 0))``: ``-inf`` for a zero threshold, which ``exp`` maps
    back to 0 (a plain ReLU on that latent); a negative threshold acts as 0 does, since
    ``relu(pre)·1[pre > θ]`` is ``relu(pre)`` for any θ ≤ 0."""
    params, arch_state = standard_from_portable(weights, cfg)
    threshold = np.maximum(np.asarray(weights["threshold"], np.float32), np.float32(0))
    with np.errstate(divide="ignore"):
        params["log_threshold"] = jnp.asarray(np.log(threshold))
    return params, arch_state


def _renormalize(params: Params, arch_state, norms: jax.Array) -> tuple[Params, dict]:
    # θ_i·n_i compares the same pre-activation scaled by n_i: exact for any row norms.
    params, arch_state = renormalize_encoder(params, arch_state, norms)
    return {**params, "log_threshold": params["log_threshold"] + jnp.log(norms)}, arch_state


SPEC = ArchitectureSpec(
    "jumprelu", make, "jumprelu",
    fields={"l0_coefficient": Field(float, "JumpReLU: L0 penalty weight", minimum=0.0, default=1.0),
            "penalty_warmup_steps": PENALTY_WARMUP_STEPS,
            "bandwidth": Field(float, "JumpReLU: straight-through rectangle-kernel width", minimum=1e-9,
                               default=1e-3)},
    param_axes={"log_threshold": (LATENT,)}, to_portable=_to_portable, from_portable=_from_portable,
    unit_norm_renormalize=_renormalize, renormalize_exact=True)
