"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse Autoencoders").

Two encoder paths share ``W_enc``: the gate ``π_gate = (x − b_dec) W_enc + b_gate`` decides which
latents fire, the magnitude ``π_mag = (x − b_dec)(W_enc ⊙ exp(r_mag)) + b_mag`` how strongly, and
``f = 1[π_gate > 0] ⊙ relu(π_mag)``. The Heaviside passes no gradient, so the gate is trained by
the paper's two extra terms (its training loss)::

    L = ‖x − x̂(f)‖² + λ·Σ_i relu(π_gate)_i ‖W_dec,i‖ + ‖x − x̂_frozen(relu(π_gate))‖²

where ``x̂_frozen`` decodes through a stop-gradient copy of ``W_dec`` and ``b_dec`` (the paper's
frozen decoder). The L1 is scaled by decoder row norms and the decoder norms are free, as in
SAELens' ``GatedTrainingSAE`` (instead of the paper's unit-norm decoder); every term is divided by
the batch's total variance (:mod:`jaxinterp.sae.base`). Parameter names and the encoding are
SAELens' ``gated`` ones (``W_enc``, ``b_gate``, ``r_mag``, ``b_mag``, ``W_dec``, ``b_dec``; no
``b_enc``), so a SAELens ``gated`` directory is these weights as they are. SAELens has no gated
transcoder, so ``transcode`` is refused.

Cost (CPU, 2 shared cores; d_in 576, d_sae 4,096, batch 1,024, jitted ``value_and_grad``, median of 5):
0.98 / 1.4 s against TopK's (k 32) 0.39 / 0.44 s: dense encoder and decoder, as the ReLU SAE, plus
the aux decode.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.sae.base import (Architecture, LossContext, LossOutput, Params, dense_decode, init_dictionary,
                                linear_warmup, option, total_variance)
from jaxinterp.sae.relu import L1_COEFFICIENT, PENALTY_WARMUP_STEPS
from jaxinterp.sae.spec import LATENT, ArchitectureSpec

__all__ = ["SPEC", "gate_and_magnitude", "make"]

GATED_NAMES = ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec")

# ReLU's fields: the same penalty (L1 × decoder norms, here on relu(π_gate)) in the same loss units.
FIELDS = {"l1_coefficient": L1_COEFFICIENT, "penalty_warmup_steps": PENALTY_WARMUP_STEPS}


def gate_and_magnitude(params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(π_gate, π_mag)`` [tokens, d_sae]; ``(z W_enc) ⊙ exp(r_mag)`` is ``z (W_enc ⊙ exp(r_mag))``, one matmul."""
    projected = (x - params["b_dec"]) @ params["W_enc"]
    return projected + params["b_gate"], projected * jnp.exp(params["r_mag"]) + params["b_mag"]


def _refuse_transcoder(cfg: Mapping[str, Any]) -> None:
    if option(cfg, "transcode", False) or option(cfg, "skip", False):
        raise ValueError("config field 'sae.architecture': 'gated' has no transcoder form (SAELens has none); "
                         "use 'relu' or 'jumprelu' for a transcoder")


def make(cfg: Mapping[str, Any]) -> Architecture:
    """A Gated architecture (``l1_coefficient``, ``penalty_warmup_steps``: ReLU's fields and defaults)."""
    _refuse_transcoder(cfg)
    l1 = linear_warmup(option(cfg, "l1_coefficient", FIELDS["l1_coefficient"].default),
                       option(cfg, "penalty_warmup_steps", FIELDS["penalty_warmup_steps"].default))

    def init(key, d_in, d_sae, sample, d_out=None, target_sample=None):
        params = init_dictionary(key, d_in, d_sae, sample, d_out, target_sample, cfg)
        del params["b_enc"]  # the gate and magnitude paths have their own biases (SAELens: zeros)
        zeros = jnp.zeros((d_sae,), jnp.float32)
        return {**params, "b_gate": zeros, "r_mag": zeros, "b_mag": zeros}, {}

    def encode(params: Params, arch_state, x: jax.Array) -> jax.Array:
        gate, magnitude = gate_and_magnitude(params, x)
        return (gate > 0).astype(magnitude.dtype) * jax.nn.relu(magnitude)

    def loss(params: Params, arch_state, x: jax.Array, y: jax.Array, ctx: LossContext):
        gate, magnitude = gate_and_magnitude(params, x)
        acts = (gate > 0).astype(magnitude.dtype) * jax.nn.relu(magnitude)
        x_hat = dense_decode(params, acts)
        variance = total_variance(y)
        squared_error = jnp.sum(jnp.square(y - x_hat))
        gate_acts = jax.nn.relu(gate)
        penalty = jnp.sum(gate_acts @ jnp.linalg.norm(params["W_dec"], axis=-1))
        frozen = jax.lax.stop_gradient({"W_dec": params["W_dec"], "b_dec": params["b_dec"]})
        aux_error = jnp.sum(jnp.square(y - dense_decode(frozen, gate_acts)))
        total = (squared_error + l1(ctx.step) * penalty + aux_error) / variance
        terms = {"fvu": squared_error / variance, "l1": penalty / variance, "aux_fvu": aux_error / variance}
        return total, LossOutput(acts, terms, arch_state, x_hat)

    # Gao et al.'s 2e-4, as the ReLU SAE (the gate is an L1-penalised ReLU encoder).
    return Architecture("gated", init, encode, dense_decode, loss, unit_norm_decoder=False, base_lr=2e-4)


def to_portable(params: Params, arch_state, cfg: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """SAELens' gated weights as float32 numpy."""
    return {name: np.asarray(params[name], np.float32) for name in GATED_NAMES}


def from_portable(weights: Mapping[str, np.ndarray], cfg: Mapping[str, Any]) -> tuple[Params, dict]:
    """``(params, {})`` from SAELens' gated weights."""
    _refuse_transcoder(cfg)
    return {name: jnp.asarray(weights[name], jnp.float32) for name in GATED_NAMES}, {}


# The standard fold is exact here: W_enc·s and b_dec/s give the same π_gate and π_mag from raw x
# (b_gate, r_mag, b_mag unchanged), and W_dec/s, b_dec/s the reconstruction in raw units.
SPEC = ArchitectureSpec(
    name="gated", make=make, family="gated", fields=FIELDS,
    param_axes={"b_gate": (LATENT,), "r_mag": (LATENT,), "b_mag": (LATENT,)},
    to_portable=to_portable, from_portable=from_portable, transcoder=False)
