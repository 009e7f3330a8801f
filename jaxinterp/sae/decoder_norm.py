"""Unit-norm decoder rows: the gradient's component parallel to each row is removed before the
optimizer sees it, and rows are renormalised after each update (Bricken et al. 2023)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["remove_parallel_decoder_grad", "normalize_decoder"]


class _EmptyState(NamedTuple):
    pass


def remove_parallel_decoder_grad() -> optax.GradientTransformation:
    """An optax transform: ``g_W_dec −= (g·w) w`` per decoder row (needs ``params``).

    Example::

        tx = optax.chain(remove_parallel_decoder_grad(), optax.adam(1e-3))
    """

    def init_fn(params):
        del params
        return _EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("remove_parallel_decoder_grad needs params")
        W_dec, g = params["W_dec"], updates["W_dec"]
        parallel = jnp.sum(g * W_dec, axis=-1, keepdims=True) * W_dec
        return {**updates, "W_dec": g - parallel}, state

    return optax.GradientTransformation(init_fn, update_fn)


def normalize_decoder(params: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Rescales every decoder row to unit norm."""
    W_dec = params["W_dec"]
    return {**params, "W_dec": W_dec / jnp.maximum(jnp.linalg.norm(W_dec, axis=-1, keepdims=True), 1e-8)}
