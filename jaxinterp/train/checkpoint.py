"""Run directories: orbax checkpoints of the train state plus a self-describing ``cfg.json``.

Layout of ``<run>/``: ``cfg.json`` (train config, d_in, source-model metadata from the store),
``checkpoints/<step>/`` (orbax), ``metrics.jsonl``, ``tensorboard/``, ``eval.json``. A run directory is
a local path or a URL (:func:`jaxinterp.store.paths.location`); orbax writes checkpoints straight to
``gs://`` / ``s3://``, marking each finished step with a commit file (object stores cannot rename).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from jaxinterp.buffer import BufferState
from jaxinterp.config import flatten
from jaxinterp.faults import read_json
from jaxinterp.store.paths import location, on_object_store
from jaxinterp.train.orbax_s3 import enable_s3_checkpoints

__all__ = [
    "RUN_CONFIG",
    "RunExistsError",
    "checkpoint_manager",
    "read_run_config",
    "restore_latest",
    "save_checkpoint",
    "write_run_config",
]

RUN_CONFIG = "cfg.json"
# Changing these does not change what a run *is*, so a rerun with new values resumes it (the mesh
# included: a run restores onto however many devices the rerun has).
# Fields a resumed run may change: schedules of logging, the device and process layout (streams is
# checked against the checkpoint by the loop), and where the run directory now lives (moved or copied).
_RESUMABLE_KEYS = ("steps", "log_every", "checkpoint_every", "eval_tokens", "mesh.data", "mesh.model", "out", "streams",
                   "distributed.coordinator", "distributed.num_processes", "distributed.process_id",
                   "distributed.timeout_s")


class RunExistsError(FileExistsError):
    """The run directory holds a different run."""


def checkpoint_manager(run_dir: str, keep: int = 2, async_save: bool = False) -> ocp.CheckpointManager:
    """An orbax manager over ``<run_dir>/checkpoints`` keeping the last ``keep`` steps.

    With ``async_save`` a save returns once the arrays are copied off the devices and the files are
    written in the background (call ``wait_until_finished`` before exiting).
    """
    run = location(run_dir)
    atomicity = None
    if on_object_store(run):
        if str(run).startswith("s3://"):
            enable_s3_checkpoints()
        # No rename on object stores: a step is complete once its commit_success.txt is written.
        atomicity = ocp.options.AtomicityOptions(mode=ocp.options.AtomicityMode.COMMIT_FILE)
    else:
        run = Path(run).absolute()  # orbax wants absolute local paths
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
                                           atomicity_options=atomicity)
    return ocp.CheckpointManager(run / "checkpoints", options=options)


def read_run_config(run_dir: str) -> dict[str, Any]:
    """The ``cfg.json`` of a run directory."""
    path = location(run_dir) / RUN_CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a jaxinterp run directory (no {RUN_CONFIG})")
    return read_json(path, "run config")


def write_run_config(run_dir: str, run_config: dict[str, Any]) -> None:
    """Writes ``cfg.json``, or checks that an existing one describes the same run.

    Raises:
      RunExistsError: when ``run_dir`` holds a run with a different configuration (the message
        names the differing fields, e.g. ``d_in`` when the store's width changed).
    """
    path = location(run_dir, "out") / RUN_CONFIG
    if path.exists():
        old, new = flatten(read_json(path, "run config")), flatten(run_config)
        differing = sorted(k for k in set(old) | set(new)
                           if old.get(k) != new.get(k) and k.removeprefix("train.") not in _RESUMABLE_KEYS)
        if differing:
            detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differing[:6])
            raise RunExistsError(f"{run_dir} already holds a different run ({detail}); choose another --config.out")
    elif path.parent.exists() and any(path.parent.iterdir()):
        raise RunExistsError(f"{run_dir} exists and is not a jaxinterp run directory; choose another --config.out")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run_config, indent=2, sort_keys=True))


def save_checkpoint(manager: ocp.CheckpointManager, step: int, state: Any, buffer_state: BufferState) -> None:
    """Saves the train state (sharded arrays) and the buffer state (JSON) as one orbax step."""
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               buffer=ocp.args.JsonSave(buffer_state.to_json())))


def restore_latest(run_dir: str, target: Any) -> tuple[int, Any, BufferState]:
    """Restores the newest step of ``run_dir`` into the structure/shardings of ``target``."""
    manager = checkpoint_manager(run_dir)
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"run {run_dir} has no checkpoint yet")
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                             buffer=ocp.args.JsonRestore()))
    return step, restored["state"], BufferState.from_json(restored["buffer"])
