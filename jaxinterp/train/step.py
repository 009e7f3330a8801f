"""One SAE optimisation step: a pure function of (state, batch), jitted by the loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxinterp.eval.metrics import dead_fraction, l0
from jaxinterp.sae import normalize_decoder, topk
from jaxinterp.train.state import TrainState

__all__ = ["train_step"]

_INT32_MAX = jnp.iinfo(jnp.int32).max


def train_step(state: TrainState, batch: jax.Array, *, k: int, optimizer: optax.GradientTransformation,
               dead_tokens: int) -> tuple[TrainState, dict[str, jax.Array]]:
    """Gradient step on the FVU loss, decoder renormalisation, and latent-firing bookkeeping."""
    (loss, latents), grads = jax.value_and_grad(topk.loss_fn, has_aux=True)(state.params, batch, k)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = normalize_decoder(optax.apply_updates(state.params, updates))

    d_sae = state.fire_count.shape[0]
    active = (latents.values > 0).astype(jnp.float32).ravel()
    fires = jnp.zeros((d_sae,), jnp.float32).at[latents.indices.ravel()].add(active)
    n_tokens = batch.shape[0]
    # Saturate instead of overflowing int32 on very long runs.
    since = jnp.minimum(state.tokens_since_fired, _INT32_MAX - n_tokens) + n_tokens
    tokens_since_fired = jnp.where(fires > 0, 0, since)
    new_state = TrainState(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        tokens_since_fired=tokens_since_fired,
        fire_count=state.fire_count + fires,
        tokens_seen=state.tokens_seen + n_tokens,
    )
    metrics = {
        "fvu": loss,
        "l0": l0(latents.values),
        "dead_fraction": dead_fraction(tokens_since_fired, dead_tokens),
    }
    return new_state, metrics
