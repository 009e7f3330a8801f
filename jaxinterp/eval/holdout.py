"""Reconstruction metrics of a TopK SAE over held-out activations."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.sae import topk

__all__ = ["evaluate_reconstruction"]


@partial(jax.jit, static_argnames="k")
def _batch_sums(params, x, mean, k):
    latents = topk.encode(params, x, k)
    x_hat = topk.decode(params, latents)
    return (
        jnp.sum(jnp.square(x - x_hat)),
        jnp.sum(jnp.square(x - mean)),
        jnp.sum(latents.values > 0),
    )


def evaluate_reconstruction(params: dict[str, jax.Array], x: np.ndarray, k: int, batch_size: int = 4096) -> dict[str, float]:
    """FVU (about the holdout mean), explained variance and L0 over all rows of ``x``.

    Sums are accumulated over batches, so the result equals the one-batch definition of FVU.
    """
    if len(x) == 0:
        raise ValueError("no holdout activations to evaluate")
    mean = jnp.asarray(x.mean(axis=0, dtype=np.float64), jnp.float32)
    residual = total = active = 0.0
    for first in range(0, len(x), batch_size):
        r, t, a = _batch_sums(params, jnp.asarray(x[first: first + batch_size]), mean, k)
        residual, total, active = residual + float(r), total + float(t), active + float(a)
    fvu = residual / total
    return {"fvu": fvu, "explained_variance": 1.0 - fvu, "l0": active / len(x), "tokens": int(len(x))}
