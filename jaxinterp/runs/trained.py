"""A trained SAE read back from a run directory (eval, export, probes, warm starts): :func:`load_trained`.

Only what using the SAE needs is restored: its params, architecture state and latent counters, the
run's token count and the buffer's input scales. The optimizer state is not restored, and no
optimizer is built: the restore target comes from the checkpoint's own metadata, the architecture
from the SAE's entry of ``cfg.json``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from jaxinterp.config import ConfigError
from jaxinterp.runs.restore import newest_intact_step, read_run_config, restore_step, saved_state
from jaxinterp.sae import Architecture, make_architecture

__all__ = ["TrainedSAE", "TrainedState", "load_trained"]


class TrainedState(NamedTuple):
    """One SAE's values at a checkpoint, without its optimizer state."""

    params: dict[str, jax.Array]
    arch_state: dict[str, jax.Array]  # non-trained architecture values, e.g. BatchTopK's threshold
    tokens_since_fired: jax.Array  # [d_sae] int32, for dead latents (counted in tokens)
    fire_count: jax.Array  # [d_sae] float32, firings over the whole run


class TrainedSAE(NamedTuple):
    """One SAE of a run at its newest intact checkpoint, on one local device.

    Attributes:
      name: the SAE's name in the run (``sae`` unless the run was a sweep).
      config: its entry of ``cfg.json``'s ``saes`` (architecture, d_in, d_sae, k, hook_name, …).
      run_config: the whole ``cfg.json`` (train config, source-model metadata).
      architecture: its :class:`~jaxinterp.sae.Architecture`.
      step: the checkpoint's step.
      state: its params, architecture state and latent counters (no optimizer state).
      tokens_seen: training tokens it has seen.
      input_scale: the factor the buffer multiplied inputs by (1.0 unless the run normalised).
      target_scale: the factor it multiplied a transcoder's target hook by (``input_scale`` for an SAE).
    """

    name: str
    config: dict[str, Any]
    run_config: dict[str, Any]
    architecture: Architecture
    step: int
    state: TrainedState
    tokens_seen: float
    input_scale: float
    target_scale: float = 1.0


def load_trained(run_dir: str, name: str = "") -> TrainedSAE:
    """Restores SAE ``name`` (default: the run's only one) from the newest intact checkpoint of a run.

    Raises:
      ConfigError: ``name`` is empty and the run holds several SAEs, or the run has no SAE ``name``.
      CheckpointError: no step of the run is intact (the message names each step and its problem).
    """
    run_config = read_run_config(run_dir)
    saes = run_config["saes"]
    if not name:
        if len(saes) > 1:
            raise ConfigError(f"config field 'sae': run {run_dir} holds {len(saes)} SAEs; choose one of {', '.join(saes)}")
        name = next(iter(saes))
    if name not in saes:
        raise ConfigError(f"config field 'sae': run {run_dir} has no SAE {name!r}; it has {', '.join(saes)}")
    step, legacy = newest_intact_step(run_dir)
    saved = saved_state(run_dir, step, legacy)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    wanted = {"tokens_seen": saved["tokens_seen"],
              "saes": {name: {field: saved["saes"][name][field] for field in TrainedState._fields}}}
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), wanted)
    state, buffer_state = restore_step(run_dir, step, target, legacy, partial=True)
    sae = saes[name]
    # A cross-layer transcoder's first layer (its layers' scales are all 1: it trains on raw activations).
    hook = (sae.get("hook_names") or [sae["hook_name"]])[0]
    target = (sae.get("target_hooks") or [sae.get("target_hook") or sae["hook_name"]])[0]
    return TrainedSAE(name, sae, run_config, make_architecture(sae), step, TrainedState(**state["saes"][name]),
                      float(state["tokens_seen"]), buffer_state.scales[hook], buffer_state.scales[target])
