"""TopK sparse autoencoder (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

Pure functions over a params dict ``{W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in],
b_dec [d_in]}``. Latents are kept sparse as ``(values, indices)`` of shape [tokens, k], so the
decoder and its gradient touch only the k selected rows of ``W_dec``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxinterp.eval.metrics import fraction_variance_unexplained

__all__ = ["SparseLatents", "init_params", "encode", "decode", "dense_latents", "fold_input_scale", "loss_fn"]


class SparseLatents(NamedTuple):
    """The k active latents of each token: ``values`` (≥ 0) and ``indices``, both [tokens, k]."""

    values: jax.Array
    indices: jax.Array


def init_params(key: jax.Array, d_in: int, d_sae: int, b_dec: jax.Array | None = None) -> dict[str, jax.Array]:
    """Unit-norm random decoder rows, ``W_enc = W_decᵀ``, zero ``b_enc``, ``b_dec`` from data (or 0)."""
    W_dec = jax.random.normal(key, (d_sae, d_in), jnp.float32)
    W_dec = W_dec / jnp.linalg.norm(W_dec, axis=-1, keepdims=True)
    return {
        "W_enc": W_dec.T,
        "b_enc": jnp.zeros((d_sae,), jnp.float32),
        "W_dec": W_dec,
        "b_dec": jnp.zeros((d_in,), jnp.float32) if b_dec is None else jnp.asarray(b_dec, jnp.float32),
    }


def encode(params: dict[str, jax.Array], x: jax.Array, k: int) -> SparseLatents:
    """``topk(relu(W_encᵀ(x − b_dec) + b_enc))`` as values and indices."""
    pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
    values, indices = jax.lax.top_k(pre, k)
    return SparseLatents(jax.nn.relu(values), indices)


def decode(params: dict[str, jax.Array], latents: SparseLatents) -> jax.Array:
    """``Σ_i values_i · W_dec[indices_i] + b_dec``, gathering only the active decoder rows."""
    rows = jnp.take(params["W_dec"], latents.indices, axis=0)
    return jnp.einsum("tk,tkd->td", latents.values, rows) + params["b_dec"]


def dense_latents(latents: SparseLatents, d_sae: int) -> jax.Array:
    """[tokens, d_sae] dense latent activations (for export checks and small batches only)."""
    dense = jnp.zeros((latents.values.shape[0], d_sae), latents.values.dtype)
    return dense.at[jnp.arange(latents.values.shape[0])[:, None], latents.indices].set(latents.values)


def loss_fn(params: dict[str, jax.Array], x: jax.Array, k: int) -> tuple[jax.Array, SparseLatents]:
    """Reconstruction loss = FVU of the batch (scale-free, as in sparsify); returns the latents too."""
    latents = encode(params, x, k)
    return fraction_variance_unexplained(x, decode(params, latents)), latents


def fold_input_scale(params: dict[str, jax.Array], scale: float) -> dict[str, jax.Array]:
    """Params that act on raw ``x`` for an SAE trained on ``scale · x``.

    ``W_enc·scale`` and ``b_dec/scale`` give the same pre-activations (so the same top-k), and
    ``W_dec/scale``, ``b_dec/scale`` return the reconstruction in raw units. Decoder rows are then no
    longer unit-norm, as in SAELens exports of normalised SAEs.
    """
    return {
        "W_enc": params["W_enc"] * scale,
        "b_enc": params["b_enc"],
        "W_dec": params["W_dec"] / scale,
        "b_dec": params["b_dec"] / scale,
    }
