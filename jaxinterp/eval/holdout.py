"""Reconstruction metrics of a trained SAE over held-out activations."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxinterp.eval.metrics import MASSIVE_RATIO, fvu_metrics, massive_token_mask, squared_error_sums, token_norms
from jaxinterp.sae import Architecture, latent_fires
from jaxinterp.sae.base import skip_term

__all__ = ["evaluate_reconstruction", "latent_count", "reconstruction_sums"]


def latent_count(params: dict[str, jax.Array]) -> int:
    """Latents of a dictionary: its decoder's rows, or a cross-layer transcoder's ``b_enc [L, n]`` entries."""
    return params["W_dec"].shape[0] if "W_dec" in params else params["b_enc"].size


@partial(jax.jit, static_argnums=0)
def reconstruction_sums(architecture: Architecture, params, arch_state, x, mean, massive, mean_nonmassive, y=None):
    """One batch's sums: ‖y − ŷ‖² and ‖y − mean‖² over all rows, the same over the rows not
    ``massive`` (about ``mean_nonmassive``), active latents, ŷ·ŷ, ŷ·y, and fires per latent; the
    target ``y`` is ``x`` for an SAE (``None``), another hook's rows for a transcoder."""
    latents = architecture.encode(params, arch_state, x)
    x_hat = skip_term(params, x, architecture.decode(params, latents))
    y = x if y is None else y
    # A cross-layer transcoder's [tokens, L, d]: all its target layers as one row.
    y, x_hat = y.reshape(y.shape[0], -1), x_hat.reshape(x_hat.shape[0], -1)
    fires = latent_fires(latents, latent_count(params))
    return (*squared_error_sums(y, x_hat, mean), *squared_error_sums(y, x_hat, mean_nonmassive, ~massive),
            jnp.sum(fires), jnp.sum(x_hat * x_hat), jnp.sum(x_hat * y), fires)


def evaluate_reconstruction(architecture: Architecture, params: dict[str, jax.Array], arch_state: dict[str, jax.Array],
                            x: np.ndarray, batch_size: int = 4096,
                            massive_ratio: float = MASSIVE_RATIO,
                            y: np.ndarray | None = None, progress: bool = False) -> tuple[dict[str, float], np.ndarray]:
    """Metrics over all rows of ``x`` and each latent's firing count there; for a transcoder the
    metrics are of its target ``y`` (row-aligned with ``x``; ``None`` = ``x``, an SAE), and so are
    the norms that pick massive rows and the means FVU is about.

    Returns ``({fvu, explained_variance, fvu_nonmassive, explained_variance_nonmassive,
    massive_fraction, l0, relative_reconstruction_bias, tokens}, fire_count)``.
    FVU is about the holdout mean; sums are accumulated over batches, so results equal the
    one-batch definitions. The ``_nonmassive`` FVU leaves out the rows whose norm exceeds
    ``massive_ratio`` × the median norm of all of ``x`` (:mod:`jaxinterp.eval.metrics`), about
    the other rows' mean. The relative reconstruction bias γ = Σ x̂·x̂ / Σ x̂·x is the scale that
    best maps x̂ back onto x (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated
    Sparse Autoencoders", §5.1): γ < 1 means the SAE shrinks its reconstructions. ``progress``
    shows a bar with tokens/s.
    """
    if len(x) == 0:
        raise ValueError("no holdout activations to evaluate")
    target = x if y is None else y
    target = target.reshape(len(target), -1)  # a cross-layer transcoder's layers as one row
    norms = np.concatenate([np.asarray(token_norms(jnp.asarray(target[first: first + batch_size])))
                            for first in range(0, len(x), batch_size)])
    massive = np.asarray(massive_token_mask(norms, massive_ratio))
    mean = jnp.asarray(target.mean(axis=0, dtype=np.float64), jnp.float32)
    mean_nonmassive = jnp.asarray(target[~massive].mean(axis=0, dtype=np.float64), jnp.float32)
    totals = np.zeros(7)
    fire_count = np.zeros(latent_count(params), np.float64)
    bar = tqdm(total=len(x), unit="tok", unit_scale=True, desc="eval", disable=not progress)
    for first in range(0, len(x), batch_size):
        rows = slice(first, first + batch_size)
        *sums, fires = reconstruction_sums(architecture, params, arch_state, jnp.asarray(x[rows]), mean,
                                           jnp.asarray(massive[rows]), mean_nonmassive,
                                           None if y is None else jnp.asarray(y[rows]))
        totals += np.asarray(sums, np.float64)
        fire_count += np.asarray(fires)
        bar.update(min(batch_size, len(x) - first))
    bar.close()
    residual, total, residual_nonmassive, total_nonmassive, active, hat_hat, hat_x = totals
    fvus = fvu_metrics(residual, total, residual_nonmassive, total_nonmassive, int(massive.sum()), len(x))
    metrics = {**{key: float(value) for key, value in fvus.items()}, "l0": active / len(x),
               "relative_reconstruction_bias": hat_hat / hat_x, "tokens": int(len(x))}
    return metrics, fire_count
