"""One optimisation step of every SAE of a run on one batch: a pure function, jitted by the loop."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxinterp.eval.metrics import MASSIVE_RATIO, dead_fraction, dense_fraction, reconstruction_metrics
from jaxinterp.sae import LossContext, latent_fires, mean_l0, normalize_decoder
from jaxinterp.train.members import Member, member_rows
from jaxinterp.train.state import SAEState, TrainState

__all__ = ["train_step", "sae_step"]

_INT32_MAX = jnp.iinfo(jnp.int32).max


def sae_step(member: Member, sae: SAEState, x: jax.Array, step: jax.Array, tokens_seen: jax.Array,
             dead_tokens: int, compute_dtype: str = "float32",
             massive_ratio: float = MASSIVE_RATIO, y: jax.Array | None = None) -> tuple[SAEState, dict[str, jax.Array]]:
    """Gradient step of one SAE (or transcoder: input ``x``, target ``y``; ``None`` = ``x``), decoder
    renormalisation if its architecture wants it, and the latent-firing bookkeeping; returns the new
    state and its metrics.

    The metrics include :func:`~jaxinterp.eval.metrics.reconstruction_metrics` of the loss's own ŷ
    against the target (FVU over all tokens and over those below ``massive_ratio`` × the batch's
    median target norm), in float32.

    With ``compute_dtype="bfloat16"`` the loss runs on bf16 copies of params and data; the casts'
    VJPs return float32 gradients to the float32 master weights and optimizer.
    """
    dead_mask = sae.tokens_since_fired >= dead_tokens
    dtype = jnp.dtype(compute_dtype)

    def loss_fn(params, arch_state, x, y, ctx):
        x_cast = x.astype(dtype)
        # An SAE's target is its input itself (the same array: the loss's ops are unchanged).
        y_cast = x_cast if y is None else y.astype(dtype)
        loss, out = member.architecture.loss(_cast(params, dtype), arch_state, x_cast, y_cast, ctx)
        return loss.astype(jnp.float32), out

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, out), grads = grad_fn(sae.params, sae.arch_state, x, y, LossContext(step, dead_mask))
    updates, opt_state = member.optimizer.update(grads, sae.opt_state, sae.params)
    params = optax.apply_updates(sae.params, updates)
    if member.architecture.unit_norm_decoder:
        params = normalize_decoder(params)

    fires = latent_fires(out.latents, member.d_sae)
    n_tokens = x.shape[0]
    # Saturate instead of overflowing int32 on very long runs.
    since = jnp.minimum(sae.tokens_since_fired, _INT32_MAX - n_tokens) + n_tokens
    new = SAEState(params, opt_state, out.arch_state, jnp.where(fires > 0, 0, since), sae.fire_count + fires)
    target = x if y is None else y
    metrics = {
        "loss": loss,
        **out.terms,
        # A cross-layer member's [tokens, L, d]: FVU of all its target layers together.
        **reconstruction_metrics(target.reshape(n_tokens, -1), out.x_hat.reshape(n_tokens, -1), massive_ratio),
        "l0": mean_l0(out.latents),
        "dead_fraction": dead_fraction(new.tokens_since_fired, dead_tokens),
        "dense_fraction": dense_fraction(new.fire_count, tokens_seen + n_tokens),
    }
    return new, metrics


def _cast(params: dict[str, jax.Array], dtype) -> dict[str, jax.Array]:
    return {name: value.astype(dtype) if jnp.issubdtype(value.dtype, jnp.floating) else value
            for name, value in params.items()}


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *, members: Sequence[Member],
               dead_tokens: int, compute_dtype: str = "float32",
               massive_ratio: float = MASSIVE_RATIO) -> tuple[TrainState, dict[str, dict[str, jax.Array]]]:
    """Steps every member on its hook's rows of ``batch`` (a transcoder: its input hook's rows and its
    target hook's, row-aligned); metrics are ``{member: {name: value}}``.

    Example::

        step = jax.jit(partial(train_step, members=members, dead_tokens=10**7), donate_argnums=0)
        state, metrics = step(state, {"blocks.12.hook_resid_post": x})
    """
    saes, metrics = {}, {}
    for member in members:
        saes[member.name], metrics[member.name] = sae_step(
            member, state.saes[member.name], member_rows(batch, member.input_hooks), state.step, state.tokens_seen,
            dead_tokens, compute_dtype, massive_ratio,
            member_rows(batch, member.target_hooks) if member.transcoder else None)
    n_tokens = next(iter(batch.values())).shape[0]
    return TrainState(state.step + 1, state.tokens_seen + n_tokens, saes), metrics
