"""Reconstruction metrics of a trained SAE over held-out activations."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.sae import Architecture, latent_fires

__all__ = ["evaluate_reconstruction", "reconstruction_sums"]


@partial(jax.jit, static_argnums=0)
def reconstruction_sums(architecture: Architecture, params, arch_state, x, mean):
    """One batch's sums: ‖x − x̂‖², ‖x − mean‖², active latents, x̂·x̂, x̂·x, and fires per latent."""
    latents = architecture.encode(params, arch_state, x)
    x_hat = architecture.decode(params, latents)
    fires = latent_fires(latents, params["W_dec"].shape[0])
    return (jnp.sum(jnp.square(x - x_hat)), jnp.sum(jnp.square(x - mean)), jnp.sum(fires),
            jnp.sum(x_hat * x_hat), jnp.sum(x_hat * x), fires)


def evaluate_reconstruction(architecture: Architecture, params: dict[str, jax.Array], arch_state: dict[str, jax.Array],
                            x: np.ndarray, batch_size: int = 4096) -> tuple[dict[str, float], np.ndarray]:
    """Metrics over all rows of ``x`` and each latent's firing count there.

    Returns ``({fvu, explained_variance, l0, relative_reconstruction_bias, tokens}, fire_count)``.
    FVU is about the holdout mean; sums are accumulated over batches, so results equal the
    one-batch definitions. The relative reconstruction bias γ = Σ x̂·x̂ / Σ x̂·x is the scale that
    best maps x̂ back onto x (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated
    Sparse Autoencoders", §5.1): γ < 1 means the SAE shrinks its reconstructions.
    """
    if len(x) == 0:
        raise ValueError("no holdout activations to evaluate")
    mean = jnp.asarray(x.mean(axis=0, dtype=np.float64), jnp.float32)
    totals = np.zeros(5)
    fire_count = np.zeros(params["W_dec"].shape[0], np.float64)
    for first in range(0, len(x), batch_size):
        *sums, fires = reconstruction_sums(architecture, params, arch_state, jnp.asarray(x[first: first + batch_size]), mean)
        totals += np.asarray(sums, np.float64)
        fire_count += np.asarray(fires)
    residual, total, active, hat_hat, hat_x = totals
    fvu = residual / total
    metrics = {"fvu": fvu, "explained_variance": 1.0 - fvu, "l0": active / len(x),
               "relative_reconstruction_bias": hat_hat / hat_x, "tokens": int(len(x))}
    return metrics, fire_count
