"""Train state and optimizer for SAE training: a NamedTuple pytree, built by pure functions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxinterp.sae import remove_parallel_decoder_grad, topk

__all__ = ["TrainState", "make_optimizer", "learning_rate", "init_state"]


class TrainState(NamedTuple):
    """Everything a resumed run needs besides the buffer position (which is ``step``)."""

    step: jax.Array
    params: dict[str, jax.Array]
    opt_state: Any
    tokens_since_fired: jax.Array  # [d_sae] int32, for the dead-latent fraction
    fire_count: jax.Array  # [d_sae] float32, firings over the whole run
    tokens_seen: jax.Array  # scalar float32


def learning_rate(cfg: Mapping[str, Any]) -> float:
    """``cfg.lr``, or by default 2e-4 / √(n_latents / 2¹⁴) (Gao et al. 2024, §2.3)."""
    if cfg["lr"] > 0:
        return cfg["lr"]
    return 2e-4 / (cfg["sae"]["n_latents"] / 2**14) ** 0.5


def make_optimizer(cfg: Mapping[str, Any]) -> optax.GradientTransformation:
    """Clip → drop decoder-parallel gradient → Adam with linear warm-up, constant, linear decay."""
    peak, steps = learning_rate(cfg), cfg["steps"]
    decay_steps = int(round(steps * cfg["decay_fraction"]))
    flat_until = max(cfg["warmup_steps"], steps - decay_steps)
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(0.0, peak, max(cfg["warmup_steps"], 1)),
            optax.constant_schedule(peak),
            optax.linear_schedule(peak, 0.0, max(steps - flat_until, 1)),
        ],
        boundaries=[cfg["warmup_steps"], flat_until],
    )
    clip = optax.clip_by_global_norm(cfg["grad_clip"]) if cfg["grad_clip"] > 0 else optax.identity()
    return optax.chain(clip, remove_parallel_decoder_grad(), optax.adam(schedule))


def init_state(key: jax.Array, b_dec: jax.Array, d_in: int, d_sae: int,
               optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh state; jit it with ``out_shardings`` to create it already sharded."""
    params = topk.init_params(key, d_in, d_sae, b_dec)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        tokens_since_fired=jnp.zeros((d_sae,), jnp.int32),
        fire_count=jnp.zeros((d_sae,), jnp.float32),
        tokens_seen=jnp.zeros((), jnp.float32),
    )
