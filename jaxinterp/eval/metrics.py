"""The metrics every stage reports, defined once (design.md §6).

All are pure ``jnp`` functions over a batch, usable inside ``jax.jit``.

Massive activations: a few tokens of Llama-family models have residual norms far above the rest
(Sun et al. 2024, "Massive Activations in Large Language Models") and carry most of the variance
(SmolLM2 layer 15: 64 of 43,180 held-out tokens, 96%), so FVU is also reported over the other
tokens: a token is *massive* when ``‖x‖ > massive_ratio × median ‖x‖`` over the rows measured
together (a training batch, or all evaluated holdout rows).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "MASSIVE_RATIO",
    "fraction_variance_unexplained",
    "fvu_metrics",
    "massive_token_mask",
    "reconstruction_metrics",
    "squared_error_sums",
    "token_norms",
    "explained_variance",
    "l0",
    "dead_fraction",
    "dense_fraction",
    "log10_firing_frequency",
    "approximate_feature_activation",
    "code_norm",
]


# Massive activations sit orders of magnitude above the median (Sun et al. 2024); a token norm 10x the
# median isolates them (SmolLM2 layer 15: 0.15% of held-out tokens, 96% of the variance).
MASSIVE_RATIO = 10.0


def token_norms(x: jax.Array) -> jax.Array:
    """[tokens] float32 ‖x_t‖ of [tokens, d_in] activations."""
    return jnp.linalg.norm(x.astype(jnp.float32), axis=-1)


def massive_token_mask(norms: jax.Array, massive_ratio: float = MASSIVE_RATIO) -> jax.Array:
    """[tokens] bool: ``norms > massive_ratio × median(norms)`` (massive activations, Sun et al. 2024)."""
    return norms > massive_ratio * jnp.median(norms)


def squared_error_sums(x: jax.Array, x_hat: jax.Array, mean: jax.Array,
                       rows: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(Σ‖x_t − x̂_t‖², Σ‖x_t − mean‖²) over the ``rows`` ([tokens] bool, default all): FVU's two sums,
    additive over batches when ``mean`` is fixed."""
    x = x.astype(jnp.float32)
    residual = jnp.square(x - x_hat.astype(jnp.float32))
    total = jnp.square(x - mean)
    if rows is None:
        return jnp.sum(residual), jnp.sum(total)
    weight = rows.astype(jnp.float32)
    return weight @ jnp.sum(residual, axis=-1), weight @ jnp.sum(total, axis=-1)


def fraction_variance_unexplained(x: jax.Array, x_hat: jax.Array, rows: jax.Array | None = None) -> jax.Array:
    """FVU = Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over the batch ("normalized MSE", Gao et al. 2024), or over
    the ``rows`` ([tokens] bool) only, about their own mean.

    Example::

        fraction_variance_unexplained(x, x) == 0.0
        fraction_variance_unexplained(x, x.mean(0, keepdims=True)) == 1.0
    """
    residual, total = _fvu_sums(x, x_hat, rows)
    return residual / total


def fvu_metrics(residual: Any, total: Any, residual_nonmassive: Any, total_nonmassive: Any, massive_rows: Any,
                rows: Any) -> dict[str, Any]:
    """The reported names, from FVU's sums over all rows and over the non-massive rows (jnp or numpy):
    ``fvu``, ``explained_variance``, ``fvu_nonmassive``, ``explained_variance_nonmassive``,
    ``massive_fraction`` (of rows flagged massive)."""
    fvu, fvu_nonmassive = residual / total, residual_nonmassive / total_nonmassive
    return {"fvu": fvu, "explained_variance": 1.0 - fvu, "fvu_nonmassive": fvu_nonmassive,
            "explained_variance_nonmassive": 1.0 - fvu_nonmassive, "massive_fraction": massive_rows / rows}


def reconstruction_metrics(x: jax.Array, x_hat: jax.Array, massive_ratio: float = MASSIVE_RATIO) -> dict[str, jax.Array]:
    """:func:`fvu_metrics` of one batch [tokens, d_in], the massive tokens judged against its median norm.

    Example::

        reconstruction_metrics(x, x_hat)["fvu_nonmassive"] == fraction_variance_unexplained(x, x_hat, ~mask)
    """
    massive = massive_token_mask(token_norms(x), massive_ratio)
    return fvu_metrics(*_fvu_sums(x, x_hat, None), *_fvu_sums(x, x_hat, ~massive),
                       jnp.sum(massive, dtype=jnp.float32), x.shape[0])


def _fvu_sums(x: jax.Array, x_hat: jax.Array, rows: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """FVU's sums about the mean of the ``rows`` themselves."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=0) if rows is None else rows.astype(jnp.float32) @ x / jnp.sum(rows)
    return squared_error_sums(x, x_hat, mean, rows)


def explained_variance(x: jax.Array, x_hat: jax.Array) -> jax.Array:
    """1 − FVU: variance explained about the mean (not about zero)."""
    return 1.0 - fraction_variance_unexplained(x, x_hat)


def l0(latents: jax.Array) -> jax.Array:
    """Mean number of non-zero latents per token (``latents`` is [tokens, ...] values)."""
    return jnp.mean(jnp.sum(latents != 0, axis=-1).astype(jnp.float32))


def dead_fraction(tokens_since_fired: jax.Array, window_tokens: int) -> jax.Array:
    """Fraction of latents that have not fired in the last ``window_tokens`` tokens."""
    return jnp.mean((tokens_since_fired >= window_tokens).astype(jnp.float32))


def dense_fraction(fire_count: jax.Array, n_tokens: jax.Array, threshold: float = 0.1) -> jax.Array:
    """Fraction of latents firing on more than ``threshold`` of tokens."""
    return jnp.mean((fire_count / jnp.maximum(n_tokens, 1) > threshold).astype(jnp.float32))


def log10_firing_frequency(fire_count: jax.Array, n_tokens: jax.Array, eps: float = 1e-10) -> jax.Array:
    """log10 of each latent's firing frequency (SAELens' ``sparsity.safetensors`` convention)."""
    return jnp.log10(fire_count / jnp.maximum(n_tokens, 1) + eps)


def approximate_feature_activation(x: jax.Array, b_dec: jax.Array | None = None) -> jax.Array:
    """[tokens] AFA, ``‖x − b_dec‖₂``: what the code's norm ``‖f‖`` should be when the decoder rows are
    unit-norm and ε-quasi-orthogonal (Lee et al. 2025, "Evaluating and Designing Sparse Autoencoders by
    Approximating Quasi-Orthogonality"; ``‖z‖² = ‖f‖² + Σ_{i≠j} f_i f_j d_i·d_j``, the cross terms bounded by ε).
    ``b_dec`` defaults to none (``z = x``)."""
    z = x if b_dec is None else x - b_dec
    return jnp.sqrt(jnp.sum(jnp.square(z.astype(jnp.float32)), axis=-1))


def code_norm(latents: jax.Array, decoder_norms: jax.Array | None = None) -> jax.Array:
    """[tokens] ``‖f‖₂`` of dense latents [tokens, d_sae]; with ``decoder_norms`` [d_sae], ``‖f ⊙ ‖W_dec,i‖‖₂``,
    the norm the code would have with unit-norm decoder rows (what AFA approximates for any decoder)."""
    f = latents.astype(jnp.float32)
    if decoder_norms is not None:
        f = f * decoder_norms
    return jnp.sqrt(jnp.sum(jnp.square(f), axis=-1))
