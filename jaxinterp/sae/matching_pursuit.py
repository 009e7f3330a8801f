"""Matching-pursuit SAE (Costa et al. 2025, "From Flat to Hierarchical: Extracting Sparse Representations
with Matching Pursuit").

The encoder is greedy residual pursuit over the decoder's unit-norm rows ``d_i`` (tied: there is no
``W_enc``), for ``k`` steps from ``r = x − b_dec``::

    i = argmax_i relu(r · d_i);  a = relu(r · d_i);  f_i += a;  r −= a·d_i

unrolled with ``lax.scan`` and differentiated end to end (the argmax passes no gradient; the
coefficient and residual updates do). ``x̂ = f W_dec + b_dec``. This is SAELens'
``matching_pursuit`` encoding step for step (``_encode_matching_pursuit``, ``max_iterations = k``),
with its two early stops: a token stops once its residual norm is below ``residual_threshold``
(0 = off) or, with ``stop_on_duplicate_support``, once a step adds no new latent (the step that
re-selects a latent still applies its update, then the token stops). Ties pick the lowest index,
as ``torch.max``. The loss is the FVU alone (SAELens adds no auxiliary term). SAELens applies
``a·d_i`` without dividing by ``‖d_i‖²``, which is matching pursuit only for unit-norm rows, so the
decoder is kept unit-norm.

``residual_threshold`` is in the units the SAE trains on; :func:`fold_scales` records the input
scale so that the export divides it by the scale, as SAELens' ``fold_activation_norm_scaling_factor``
does (the selection itself is scale-free: ``b_dec/s`` and an unchanged ``W_dec`` give every
coefficient divided by ``s``).

Cost (CPU, 2 cores shared with other jobs; d_in 576, d_sae 4,096, k 32, batch 1,024, jitted
``value_and_grad``, median of 5, two runs): 6.2 / 6.7 s against TopK's 0.39 / 0.44 s, 15-16x; the
forward alone 4.7 s, against 0.13 s for one ``[1024, 576] × [576, 4096]`` matmul. Each step is a
full ``[tokens, d_in] × [d_in, d_sae]`` correlation matmul, so the forward costs about k encoder
matmuls where TopK needs one; the backward is cheap (one gathered row per token per step).

Sparse kernels: the decode is :func:`~jaxinterp.sae.sparse.sparse_decode` of the k (value, index)
pairs (duplicates add up, as SAELens' ``scatter_add_``); the correlations cannot use
``topk_encode``, since each step's selection depends on the previous residual. (Updating them
through the Gram matrix, ``c −= a·(W_dec W_decᵀ)[i]``, would replace the k matmuls by one Gram
product and k row gathers, but its rounding drifts from SAELens' direct correlations, which
near-ties in the argmax would expose.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.config import Field
from jaxinterp.sae.base import Architecture, LossContext, LossOutput, Params, b_dec_init, option, total_variance
from jaxinterp.sae.sparse import SparseLatents, dense_from_sparse, sparse_decode
from jaxinterp.sae.spec import ArchitectureSpec

__all__ = ["SPEC", "fold_scales", "make", "pursuit"]

FIELDS = {
    "residual_threshold": Field(float, "Matching pursuit: a token stops once its residual norm is below this "
                                       "(training units; 0 = off; SAELens' default)", minimum=0.0, default=1e-2),
    "stop_on_duplicate_support": Field(bool, "Matching pursuit: a token stops once a step adds no new latent "
                                             "(SAELens' default)", default=True),
}

# Scalar the export multiplies residual_threshold by (1 / input scale), set by fold_scales.
RESIDUAL_SCALE = "residual_scale"


def pursuit(W_dec: jax.Array, z: jax.Array, k: int, residual_threshold: float | jax.Array,
            stop_on_duplicate_support: bool | jax.Array) -> SparseLatents:
    """``k`` steps of matching pursuit of ``z`` [tokens, d] over the rows of ``W_dec`` [d_sae, d].

    Returns each step's coefficient and latent, [tokens, k] (coefficient 0 once a token has
    stopped; a latent can appear twice).
    """
    tokens = z.shape[0]
    rows = jnp.arange(tokens)
    residual_threshold = jnp.asarray(residual_threshold, z.dtype)

    def step(carry, t):
        residual, done, values, indices = carry
        scores = jax.nn.relu(jax.lax.stop_gradient(residual) @ jax.lax.stop_gradient(W_dec).T)
        index = jnp.argmax(scores, axis=-1).astype(jnp.int32)
        atom = jnp.take(W_dec, index, axis=0)
        value = jax.nn.relu(jnp.sum(residual * atom, axis=-1)) * (~done).astype(z.dtype)
        residual = residual - value[:, None] * atom
        new = (value > 0) & ~jnp.any((indices == index[:, None]) & (values > 0), axis=-1)
        stopped = jax.lax.stop_gradient(
            (stop_on_duplicate_support & ~new)
            | ((residual_threshold > 0) & (jnp.linalg.norm(residual, axis=-1) < residual_threshold)))
        values = values.at[rows, t].set(value)
        indices = indices.at[rows, t].set(index)
        return (residual, done | stopped, values, indices), None

    init = (z, jnp.zeros((tokens,), bool), jnp.zeros((tokens, k), z.dtype), jnp.full((tokens, k), -1, jnp.int32))
    (_, _, values, indices), _ = jax.lax.scan(step, init, jnp.arange(k))
    return SparseLatents(values, jnp.maximum(indices, 0))


def make(cfg: Mapping[str, Any]) -> Architecture:
    """A matching-pursuit architecture: ``k`` steps; ``residual_threshold`` (0.01), ``stop_on_duplicate_support``
    (true), SAELens' defaults."""
    if option(cfg, "transcode", False) or option(cfg, "skip", False):
        raise ValueError("config field 'sae.architecture': 'matching_pursuit' has no transcoder form (its encoder is "
                         "the decoder's transpose, in one space); use 'topk' or 'relu' for a transcoder")
    k = cfg["k"]
    threshold = option(cfg, "residual_threshold", FIELDS["residual_threshold"].default)
    stop_duplicate = bool(option(cfg, "stop_on_duplicate_support", FIELDS["stop_on_duplicate_support"].default))

    def init(key, d_in, d_sae, sample, d_out=None, target_sample=None):
        W_dec = jax.random.normal(key, (d_sae, d_in), jnp.float32)
        W_dec = W_dec / jnp.linalg.norm(W_dec, axis=-1, keepdims=True)
        return {"W_dec": W_dec, "b_dec": b_dec_init(sample, option(cfg, "b_dec_init", "mean"))}, {}

    def steps(params: Params, arch_state, x: jax.Array) -> SparseLatents:
        # an imported SAE carries its own options in arch_state (from_portable)
        return pursuit(params["W_dec"], x - params["b_dec"], k, arch_state.get("residual_threshold", threshold),
                       arch_state.get("stop_on_duplicate_support", stop_duplicate))

    def encode(params: Params, arch_state, x: jax.Array) -> jax.Array:
        return dense_from_sparse(steps(params, arch_state, x), params["W_dec"].shape[0])

    def decode(params: Params, latents) -> jax.Array:
        if isinstance(latents, SparseLatents):
            return sparse_decode(latents, params["W_dec"]) + params["b_dec"]
        return latents @ params["W_dec"] + params["b_dec"]

    def loss(params: Params, arch_state, x: jax.Array, y: jax.Array, ctx: LossContext):
        selected = steps(params, arch_state, x)
        x_hat = decode(params, selected)
        fvu = jnp.sum(jnp.square(y - x_hat)) / total_variance(y)
        # Dense latents for the metrics: a latent selected twice must count once in L0 and firing counts.
        latents = dense_from_sparse(jax.lax.stop_gradient(selected), params["W_dec"].shape[0])
        return fvu, LossOutput(latents, {"fvu": fvu}, arch_state, x_hat)

    # TopK's rate: like TopK, only k decoder rows per token get gradient.
    return Architecture("matching_pursuit", init, encode, decode, loss, unit_norm_decoder=True, base_lr=2e-3)


def fold_scales(params: Params, input_scale: float, target_scale: float, transcode: bool) -> Params:
    """Raw-activation params for an SAE trained on ``input_scale · x``: ``b_dec/s`` and the same unit-norm
    ``W_dec`` (every coefficient and the reconstruction divide by ``s``, the selection is unchanged),
    plus ``residual_scale = 1/s`` for the exported ``residual_threshold``."""
    scale = jnp.asarray(params.get(RESIDUAL_SCALE, 1.0), jnp.float32) / input_scale
    return {**params, "b_dec": params["b_dec"] / input_scale, RESIDUAL_SCALE: scale}


def to_portable(params: Params, arch_state, cfg: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``W_dec``, ``b_dec``, and the options as 0-d arrays (``residual_threshold`` in raw units,
    ``stop_on_duplicate_support``); ``W_enc = W_decᵀ`` and a zero ``b_enc`` for readers of the standard
    form (``(x − b_dec) W_enc`` is the first step's correlations)."""
    W_dec = np.asarray(params["W_dec"], np.float32)
    threshold = float(arch_state.get("residual_threshold", option(cfg, "residual_threshold",
                                                                  FIELDS["residual_threshold"].default)))
    stop = bool(arch_state.get("stop_on_duplicate_support", option(cfg, "stop_on_duplicate_support",
                                                                   FIELDS["stop_on_duplicate_support"].default)))
    scale = float(params.get(RESIDUAL_SCALE, 1.0))
    return {"W_enc": np.ascontiguousarray(W_dec.T), "b_enc": np.zeros(W_dec.shape[0], np.float32), "W_dec": W_dec,
            "b_dec": np.asarray(params["b_dec"], np.float32),
            "residual_threshold": np.asarray(threshold * scale, np.float32),
            "stop_on_duplicate_support": np.asarray(float(stop), np.float32)}  # every portable array is float32


def from_portable(weights: Mapping[str, np.ndarray], cfg: Mapping[str, Any]) -> tuple[Params, dict]:
    """``(params, arch_state)``: the options read from the weights override ``cfg``'s."""
    params = {name: jnp.asarray(weights[name], jnp.float32) for name in ("W_dec", "b_dec")}
    state = {}
    if "residual_threshold" in weights:
        state["residual_threshold"] = jnp.asarray(weights["residual_threshold"], jnp.float32)
    if "stop_on_duplicate_support" in weights:
        state["stop_on_duplicate_support"] = jnp.asarray(np.asarray(weights["stop_on_duplicate_support"]) != 0)
    return params, state


SPEC = ArchitectureSpec(name="matching_pursuit", make=make, family="matching_pursuit", fields=FIELDS,
                        to_portable=to_portable, from_portable=from_portable, fold_scales=fold_scales,
                        transcoder=False)
