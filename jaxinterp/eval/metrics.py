"""The metrics every stage reports, defined once (design.md §6).

All are pure ``jnp`` functions over a batch, usable inside ``jax.jit``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "fraction_variance_unexplained",
    "explained_variance",
    "l0",
    "dead_fraction",
    "dense_fraction",
    "log10_firing_frequency",
]


def fraction_variance_unexplained(x: jax.Array, x_hat: jax.Array) -> jax.Array:
    """FVU = Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over the batch ("normalized MSE", Gao et al. 2024).

    Example::

        fraction_variance_unexplained(x, x) == 0.0
        fraction_variance_unexplained(x, x.mean(0, keepdims=True)) == 1.0
    """
    x = x.astype(jnp.float32)
    residual = jnp.sum(jnp.square(x - x_hat.astype(jnp.float32)))
    total = jnp.sum(jnp.square(x - jnp.mean(x, axis=0, keepdims=True)))
    return residual / total


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
