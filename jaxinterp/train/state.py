"""Train state: NamedTuple pytrees built by pure functions (``jax.eval_shape`` then a sharded jit)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxinterp.mesh import logical_sharding
from jaxinterp.sae import architecture_spec
from jaxinterp.sae.spec import LATENT, ArchitectureSpec
from jaxinterp.train.members import Member, member_rows

__all__ = ["SAEState", "TrainState", "abstract_state", "init_state", "param_shardings", "state_shardings"]


class SAEState(NamedTuple):
    """One SAE's trained and tracked values."""

    params: dict[str, jax.Array]
    opt_state: Any
    arch_state: dict[str, jax.Array]  # non-trained architecture values, e.g. BatchTopK's threshold
    tokens_since_fired: jax.Array  # [d_sae] int32, for dead latents (counted in tokens)
    fire_count: jax.Array  # [d_sae] float32, firings over the whole run


class TrainState(NamedTuple):
    """Everything a resumed run needs besides the buffer position (which is ``step``).

    The step is deterministic given (state, batch), so no RNG is carried.
    """

    step: jax.Array
    tokens_seen: jax.Array  # scalar float32, per SAE (every SAE sees every batch)
    saes: dict[str, SAEState]


def init_state(key: jax.Array, samples: Mapping[str, jax.Array], members: Sequence[Member],
               initial: Mapping[str, tuple[dict, dict]] | None = None) -> TrainState:
    """A fresh state; ``samples[hook]`` is a data batch for data-dependent init (``b_dec`` from the
    member's target hook, thresholds from its input hook).

    Every member starts from ``key`` itself, so a sweep member equals a separate run with that seed.
    ``initial[name]`` = ``(params, arch_state)`` replaces a member's init (warm start).
    """
    saes = {}
    for member in members:
        sample = member_rows(samples, member.input_hooks)  # [tokens, d], a cross-layer member's [tokens, L, d]
        if initial and member.name in initial:
            params, arch_state = initial[member.name]
        elif member.transcoder:
            target = member_rows(samples, member.target_hooks)
            params, arch_state = member.architecture.init(key, sample.shape[-1], member.d_sae, sample,
                                                          target.shape[-1], target)
        else:
            params, arch_state = member.architecture.init(key, sample.shape[-1], member.d_sae, sample)
        saes[member.name] = SAEState(
            params=params,
            opt_state=member.optimizer.init(params),
            arch_state=arch_state,
            tokens_since_fired=jnp.zeros((member.d_sae,), jnp.int32),
            fire_count=jnp.zeros((member.d_sae,), jnp.float32),
        )
    return TrainState(step=jnp.zeros((), jnp.int32), tokens_seen=jnp.zeros((), jnp.float32), saes=saes)


def abstract_state(members: Sequence[Member], d_in: Mapping[str, int]) -> TrainState:
    """Shapes and dtypes of a run's state, without computing anything; ``d_in[hook]`` is each input
    and target hook's width."""
    samples = {hook: jax.ShapeDtypeStruct((2, d), np.float32) for hook, d in d_in.items()}
    return jax.eval_shape(partial(init_state, members=members), jax.random.key(0), samples)


def _last_dict_key(path) -> str | None:
    keys = [entry.key for entry in path if isinstance(entry, jax.tree_util.DictKey)]
    return keys[-1] if keys else None


def param_shardings(params: Mapping[str, Any], spec: ArchitectureSpec, mesh: Mesh) -> dict[str, NamedSharding]:
    """``NamedSharding`` of each parameter (arrays or ``ShapeDtypeStruct``s) by its spec's logical axes."""
    return {name: logical_sharding(spec.axes(name), leaf.shape, mesh) for name, leaf in params.items()}


def state_shardings(abstract: TrainState, members: Sequence[Member], mesh: Mesh) -> TrainState:
    """A ``NamedSharding`` for every leaf of ``abstract`` (a :func:`abstract_state`), from logical axes.

    Each member's params take its spec's axes (``spec.axes(name)``), its ``arch_state`` the spec's
    ``state_axes``, the latent counters ``(latent,)``; an optimizer-state leaf follows the param
    named by the last dict key of its path (optax's ``mu`` / ``nu`` dicts mirror the params); the
    rest (step, counts, ``b_dec``) is replicated.
    """
    def replicated(tree):
        return jax.tree.map(lambda leaf: NamedSharding(mesh, PartitionSpec()), tree)

    saes = {}
    for member in members:
        spec, sae = architecture_spec(member.architecture.name), abstract.saes[member.name]

        def by_param(path, leaf, spec=spec, params=sae.params):
            name = _last_dict_key(path)
            axes = spec.axes(name) if name in params and leaf.shape == params[name].shape else None
            return logical_sharding(axes, leaf.shape, mesh)

        saes[member.name] = SAEState(
            params=param_shardings(sae.params, spec, mesh),
            opt_state=jax.tree_util.tree_map_with_path(by_param, sae.opt_state),
            arch_state={name: logical_sharding(spec.state_axes.get(name), leaf.shape, mesh)
                        for name, leaf in sae.arch_state.items()},
            tokens_since_fired=logical_sharding((LATENT,), sae.tokens_since_fired.shape, mesh),
            fire_count=logical_sharding((LATENT,), sae.fire_count.shape, mesh),
        )
    return TrainState(step=replicated(abstract.step), tokens_seen=replicated(abstract.tokens_seen), saes=saes)
