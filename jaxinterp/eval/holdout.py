"""Reconstruction metrics of a trained SAE over held-out activations."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.sae import Architecture, SparseLatents

__all__ = ["evaluate_reconstruction"]


@partial(jax.jit, static_argnums=0)
def _batch_sums(architecture: Architecture, params, arch_state, x, mean):
    latents = architecture.encode(params, arch_state, x)
    x_hat = architecture.decode(params, latents)
    values = latents.values if isinstance(latents, SparseLatents) else latents
    return jnp.sum(jnp.square(x - x_hat)), jnp.sum(jnp.square(x - mean)), jnp.sum(values > 0)


def evaluate_reconstruction(architecture: Architecture, params: dict[str, jax.Array], arch_state: dict[str, jax.Array],
                            x: np.ndarray, batch_size: int = 4096) -> dict[str, float]:
    """FVU (about the holdout mean), explained variance and L0 over all rows of ``x``.

    Sums are accumulated over batches, so the result equals the one-batch definition of FVU.
    """
    if len(x) == 0:
        raise ValueError("no holdout activations to evaluate")
    mean = jnp.asarray(x.mean(axis=0, dtype=np.float64), jnp.float32)
    residual = total = active = 0.0
    for first in range(0, len(x), batch_size):
        r, t, a = _batch_sums(architecture, params, arch_state, jnp.asarray(x[first: first + batch_size]), mean)
        residual, total, active = residual + float(r), total + float(t), active + float(a)
    fvu = residual / total
    return {"fvu": fvu, "explained_variance": 1.0 - fvu, "l0": active / len(x), "tokens": int(len(x))}
