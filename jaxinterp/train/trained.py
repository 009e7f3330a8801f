"""Loading a trained SAE back from a run directory (for export and evaluation)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from jaxinterp.config import ConfigError
from jaxinterp.sae import Architecture
from jaxinterp.train.checkpoint import read_run_config, restore_latest
from jaxinterp.train.members import build_members
from jaxinterp.train.state import SAEState, abstract_state

__all__ = ["TrainedSAE", "load_trained"]


class TrainedSAE(NamedTuple):
    """One SAE of a run at its newest checkpoint, on one local device.

    Attributes:
      name: the SAE's name in the run (``sae`` unless the run was a sweep).
      config: its entry of ``cfg.json``'s ``saes`` (architecture, d_in, d_sae, k, hook_name, …).
      run_config: the whole ``cfg.json`` (train config, source-model metadata).
      architecture: its :class:`~jaxinterp.sae.Architecture`.
      step: the checkpoint's step.
      state: its params, optimizer and architecture state, and latent counters.
      tokens_seen: training tokens it has seen.
      input_scale: the factor the buffer multiplied inputs by (1.0 unless the run normalised).
    """

    name: str
    config: dict[str, Any]
    run_config: dict[str, Any]
    architecture: Architecture
    step: int
    state: SAEState
    tokens_seen: float
    input_scale: float


def load_trained(run_dir: str, name: str = "") -> TrainedSAE:
    """Restores SAE ``name`` (default: the run's only one) from the newest checkpoint of a run."""
    run_config = read_run_config(run_dir)
    saes = run_config["saes"]
    if not name:
        if len(saes) > 1:
            raise ConfigError(f"config field 'sae': run {run_dir} holds {len(saes)} SAEs; choose one of {', '.join(saes)}")
        name = next(iter(saes))
    if name not in saes:
        raise ConfigError(f"config field 'sae': run {run_dir} has no SAE {name!r}; it has {', '.join(saes)}")
    members = build_members(run_config["train"])
    d_in = {sae["hook_name"]: sae["d_in"] for sae in saes.values()}
    d_in.update({sae["target_hook"]: sae["d_out"] for sae in saes.values() if "target_hook" in sae})  # transcoders
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract_state(members, d_in))
    step, state, buffer_state = restore_latest(run_dir, target)
    member = next(m for m in members if m.name == name)
    return TrainedSAE(name, saes[name], run_config, member.architecture, step, state.saes[name],
                      float(state.tokens_seen), buffer_state.scales[member.hook])
