"""The memory planner: a training run's bytes per device on a ('data', 'model') mesh it need not have.

Two parts, each from JAX itself rather than from a formula per architecture:

- **State** (parameters, optimizer state, the latent counters): ``jax.eval_shape`` of the run's
  state and its shardings on an abstract D×M mesh (``jax.sharding.AbstractMesh``): each leaf's
  shard shape times its itemsize. Exact.
- **The step** (the batch rows, XLA's temporary buffers, the outputs the step does not write in
  place): the train step compiled for host CPU devices on a small planning mesh of d′×m′ ≤ 2×2
  whose every device holds exactly the planned device's share (batch_size/D rows, n_latents/M
  latents), read from the compiled executable's memory analysis. The sharded program keeps the
  planned run's collectives and its masked gathers from latent-sharded decoders, which a one-device
  compile of the same shapes would not have. The largest batch that fits is searched with more
  compiles (XLA's buffers grow with the rows in steps, not linearly).

The step is compiled by the CPU backend; an accelerator's compiler fuses differently, so the
activations are an estimate for it (the state is exact everywhere). The planner needs 4 host CPU
devices: ``jaxinterp plan`` asks JAX for them (``jax_num_cpu_devices``) before anything starts it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh, NamedSharding

from jaxinterp.config import ConfigError
from jaxinterp.mesh import batch_sharding, make_mesh
from jaxinterp.sae.sparse import unchunked
from jaxinterp.train.members import Member, build_members, member_configs, run_hooks
from jaxinterp.train.state import SAEState, abstract_state, state_shardings
from jaxinterp.train.step import train_step

__all__ = ["MemberPlan", "Plan", "PLANNING_DEVICES", "plan_memory", "plan_run", "format_plan", "state_bytes"]

# Host CPU devices the planning mesh may use (at most 2 on each axis).
PLANNING_DEVICES = 4
_GIB = 2**30


class MemberPlan(NamedTuple):
    """One dictionary's state, in bytes per device."""

    name: str
    n_latents: int
    latents_per_device: int
    params: int
    optimizer: int
    counters: int  # arch_state, tokens_since_fired, fire_count


class Plan(NamedTuple):
    """A run's bytes per device on a D×M mesh; ``fits`` compares :attr:`total` with ``device_memory``."""

    data: int
    model: int
    batch_size: int
    members: tuple[MemberPlan, ...]
    batch: int  # the step's input rows on one device
    activations: int  # XLA's temporary buffers of the compiled step
    outputs: int  # step outputs not written over the donated state (metrics)
    device_memory: int
    max_batch_size: int  # the largest batch_size that fits (rows per device a multiple of 8); 0 = none or not searched

    @property
    def state(self) -> int:
        return sum(m.params + m.optimizer + m.counters for m in self.members)

    @property
    def total(self) -> int:
        return self.state + self.batch + self.activations + self.outputs

    @property
    def fits(self) -> bool:
        return self.total <= self.device_memory


def state_bytes(abstract: Any, shardings: Any) -> int:
    """Bytes on one device of a pytree of ``ShapeDtypeStruct``s under its ``NamedSharding`` pytree."""
    leaves = jax.tree.leaves(abstract)
    placements = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))
    return sum(math.prod(s.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
               for leaf, s in zip(leaves, placements, strict=True))


def _member_plan(member: Member, sae: SAEState, placement: SAEState, model: int) -> MemberPlan:
    counters = state_bytes((sae.arch_state, sae.tokens_since_fired, sae.fire_count),
                           (placement.arch_state, placement.tokens_since_fired, placement.fire_count))
    per_device = member.d_sae // model if member.d_sae % model == 0 else member.d_sae
    return MemberPlan(member.name, member.d_sae, per_device, state_bytes(sae.params, placement.params),
                      state_bytes(sae.opt_state, placement.opt_state), counters)


def _step_memory(cfg: Mapping[str, Any], members: Sequence[Member], d_in: Mapping[str, int], rows: int,
                 data: int, model: int) -> tuple[int, int, int]:
    """(input rows, temporaries, non-aliased outputs) in bytes on one device of the step compiled on the
    planning mesh, each of whose devices holds ``rows`` batch rows and 1/``model`` of every member's latents."""
    shard_latents = model > 1 and all(m.d_sae % model == 0 for m in members)
    plan_data, plan_model = min(data, 2), 2 if shard_latents else 1
    cpus = jax.devices("cpu")
    if len(cpus) < plan_data * plan_model:
        raise ConfigError(f"the memory planner compiles on {plan_data * plan_model} host CPU devices and this "
                          f"process has {len(cpus)}; run `jaxinterp plan`, or start Python with "
                          f"XLA_FLAGS=--xla_force_host_platform_device_count={PLANNING_DEVICES}")
    local = [m._replace(d_sae=m.d_sae // model * plan_model) if shard_latents else m for m in members]
    mesh = make_mesh(plan_data, plan_model, devices=cpus)
    abstract = abstract_state(local, d_in)
    shardings = state_shardings(abstract, local, mesh)
    hooks = run_hooks(local)
    batch = {hook: jax.ShapeDtypeStruct((rows * plan_data, d_in[hook]), jnp.float32, sharding=batch_sharding(mesh))
             for hook in hooks}
    placed = jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), abstract, shardings)
    step = jax.jit(partial(train_step, members=local, dead_tokens=cfg["dead_tokens"],
                           compute_dtype=cfg["compute_dtype"], massive_ratio=cfg["massive_ratio"]),
                   in_shardings=(shardings, {hook: batch_sharding(mesh) for hook in hooks}),
                   out_shardings=(shardings, None), donate_argnums=0)
    with jax.set_mesh(mesh), unchunked():
        memory = step.lower(placed, batch).compile().memory_analysis()
    state = state_bytes(abstract, shardings)
    return (memory.argument_size_in_bytes - state, memory.temp_size_in_bytes,
            memory.output_size_in_bytes - memory.alias_size_in_bytes)


def plan_memory(cfg: Mapping[str, Any], d_in: Mapping[str, int], data: int, model: int,
                device_memory: int, search_batch: bool = True) -> Plan:
    """The :class:`Plan` of the train config ``cfg`` (its members, batch_size, dtypes) on a
    ``data`` × ``model`` mesh of devices with ``device_memory`` bytes each; ``d_in[hook]`` is the
    width of every input and target hook. ``search_batch`` also finds the largest batch that fits
    (a few more compiles).

    Raises:
      ConfigError: naming ``batch_size`` when it does not split evenly over ``mesh.data``.
    """
    if cfg["batch_size"] % data:
        raise ConfigError(f"config field 'batch_size': {cfg['batch_size']} rows do not split evenly over "
                          f"mesh.data={data} devices")
    members = build_members(cfg, list(d_in))
    abstract = abstract_state(members, d_in)
    shardings = state_shardings(abstract, members, AbstractMesh((data, model), ("data", "model")))
    member_plans = tuple(_member_plan(m, abstract.saes[m.name], shardings.saes[m.name], model) for m in members)
    rows = cfg["batch_size"] // data

    def planned(rows: int) -> Plan:
        return Plan(data, model, rows * data, member_plans, *_step_memory(cfg, members, d_in, rows, data, model),
                    device_memory, 0)

    plan = planned(rows)
    if not search_batch:
        return plan
    return plan._replace(max_batch_size=_largest_rows(lambda n: planned(n).fits, rows, plan.fits) * data)


def _largest_rows(fits: Callable[[int], bool], rows: int, rows_fit: bool, limit: int = 2**20) -> int:
    """The most rows per device (within 1/16, a multiple of 8 unless it is ``rows``) for which ``fits``:
    from ``rows`` (whose verdict is ``rows_fit``) doubling or halving, then bisecting; 0 if not even 8 fit.
    XLA's buffers grow with the rows in steps, not linearly, so each probe is a compile."""
    if rows_fit:
        low = rows
        while 2 * low <= limit and fits(2 * low):
            low *= 2
        if 2 * low > limit:
            return low
        high = 2 * low
    else:
        high, low = rows, rows // 2 // 8 * 8
        while low >= 8 and not fits(low):
            high, low = low, low // 2 // 8 * 8
        if low < 8:
            return 0
    while high - low > max(8, low // 16):
        middle = (low + high) // 2 // 8 * 8
        if middle <= low:
            break
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def plan_run(cfg: Mapping[str, Any]) -> Plan:
    """:func:`plan_memory` of a ``jaxinterp plan`` config: a train config plus ``device_memory_gib``, ``d_in``
    (0: every hook's width from the store; else that width for every hook, no store needed) and ``n_layers``
    (with ``d_in``: the layers a wildcard hook such as ``blocks.*.mlp.hook_in`` expands to).

    Raises:
      ConfigError: naming ``mesh.data``/``mesh.model`` when one is -1 (there are no devices to count).
    """
    for axis in ("data", "model"):
        if cfg["mesh"][axis] < 1:
            raise ConfigError(f"config field 'mesh.{axis}': plan needs the planned mesh's size (>= 1), not "
                              f"{cfg['mesh'][axis]}; e.g. --config.mesh.data=4 --config.mesh.model=64")
    if cfg["d_in"] > 0:
        named = {hook for m in member_configs(cfg).values() for hooks in (m["hook"], m["target_hook"])
                 for hook in hooks.split(",")}  # a crosscoder's hook lists its sources
        if any("*" in hook for hook in named) and cfg["n_layers"] < 1:
            raise ConfigError("config field 'n_layers': a layer wildcard in hook needs the model's layer count "
                              "when d_in is given (no store)")
        available = [hook.replace("*", str(layer)) for hook in named for layer in range(max(cfg["n_layers"], 1))]
        members = build_members(cfg, available)
        d_in = dict.fromkeys(run_hooks(members), cfg["d_in"])
    else:
        from jaxinterp.store import open_store

        store = open_store(cfg["store"])
        members = build_members(cfg, store.manifest["hook_names"])
        d_in = {hook: int(store.array(hook).shape[1]) for hook in run_hooks(members)}  # a missing hook lists the store's
    return plan_memory(cfg, d_in, cfg["mesh"]["data"], cfg["mesh"]["model"], int(cfg["device_memory_gib"] * _GIB))


def _gib(n: int) -> str:
    return f"{n / _GIB:.3f}"


def format_plan(plan: Plan) -> str:
    """The plan as a table: GiB per device for every member, the step, and the verdict."""
    lines = [f"mesh {plan.data} (data) x {plan.model} (model), batch_size {plan.batch_size} "
             f"({plan.batch_size // plan.data} rows per device); GiB per device",
             f"  {'member':<16} {'latents':>10} {'per device':>10} {'params':>8} {'optimizer':>9} {'counters':>8}"]
    for m in plan.members:
        lines.append(f"  {m.name:<16} {m.n_latents:>10} {m.latents_per_device:>10} {_gib(m.params):>8} "
                     f"{_gib(m.optimizer):>9} {_gib(m.counters):>8}")
    lines += [f"  state {_gib(plan.state)} + batch {_gib(plan.batch)} + step activations {_gib(plan.activations)}"
              f" + outputs {_gib(plan.outputs)} = {_gib(plan.total)} of {_gib(plan.device_memory)}: "
              + ("fits" if plan.fits else "does NOT fit"),
              f"  largest batch_size that fits: {plan.max_batch_size}" if plan.max_batch_size
              else "  no batch_size fits: the state and the step's batch-independent buffers (gradients, optimizer "
                   "updates) fill the device; raise mesh.model"]
    return "\n".join(lines)
