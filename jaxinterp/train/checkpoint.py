"""Writing run directories: a self-describing ``cfg.json`` and orbax checkpoints of the train state.

The layout, and everything that reads it back (the newest intact step, trained SAEs), is
:mod:`jaxinterp.runs`; this module is the train job's side: ``cfg.json`` written or checked,
checkpoints saved with a digest (:mod:`jaxinterp.runs.integrity`) and rotated, and the damaged steps
or failed attempts a resume cannot use removed. orbax writes checkpoints straight to ``gs://`` /
``s3://``, marking each finished step with a commit file (object stores cannot rename).

Rotation deletes old steps only once a newer one is verified. Only a run with a checkpoint is a run:
a directory whose attempts never finished a step is reused; the lock is :mod:`jaxinterp.train.run_lock`.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxinterp.buffer import BufferState
from jaxinterp.config import flatten
from jaxinterp.distributed import is_primary
from jaxinterp.faults import read_json, require_free_space
from jaxinterp.runs.integrity import DIGEST, DIGEST_MARKER, warn, write_digest
from jaxinterp.runs.restore import RUN_CONFIG, CheckpointError, checkpoint_manager, newest_restorable
from jaxinterp.store.paths import location
from jaxinterp.train.run_lock import LOCK

__all__ = ["CheckpointWriter", "RunExistsError", "prepare_run_dir", "save_checkpoint", "write_run_config"]

# Changing these does not change what a run *is*, so a rerun with new values resumes it (the mesh
# included: a run restores onto however many devices the rerun has).
# Fields a resumed run may change: schedules of logging, metrics-only thresholds, the device and
# process layout (streams is checked against the checkpoint by the loop), and where the run
# directory now lives (moved or copied).
_RESUMABLE_KEYS = ("steps", "log_every", "checkpoint_every", "eval_tokens", "massive_ratio", "mesh.data", "mesh.model",
                   "out", "streams", "allow_other_model", "distributed.coordinator", "distributed.num_processes",
                   "distributed.process_id", "distributed.timeout_s", "wandb.project", "wandb.entity", "wandb.name",
                   "wandb.tags", "wandb.mode")
# What a train attempt leaves besides cfg.json; stale once no checkpoint of it survives.
_ATTEMPT_FILES = ("metrics.jsonl", "tensorboard", "eval.json", "checkpoints", "wandb.json")
KEEP = 2  # verified steps kept; older ones are deleted once a newer one is verified
_SPACE_SLACK = 1.1  # a step's files over its arrays' bytes (OCDBT indices, metadata), with room to spare


class RunExistsError(FileExistsError):
    """The run directory holds a different run."""


def write_run_config(run_dir: str, run_config: dict[str, Any], has_checkpoint: bool = True) -> None:
    """Writes ``cfg.json``, or checks that an existing one describes the same run.

    A ``cfg.json`` whose run never got a (restorable) checkpoint is replaced: that attempt failed
    before it trained anything, so the corrected rerun takes the directory over.

    Raises:
      RunExistsError: when ``run_dir`` holds a run with a checkpoint and a different configuration
        (the message names the differing fields, e.g. ``d_in`` when the store's width changed).
    """
    path = location(run_dir, "out") / RUN_CONFIG
    if path.exists():
        existing = read_json(path, "run config")
        if not (isinstance(existing, dict) and "saes" in existing and "train" in existing):
            # e.g. a SAELens or npz export, whose cfg.json the takeover below would replace
            raise RunExistsError(f"{run_dir} holds a {RUN_CONFIG} that is not a jaxinterp run's; choose another "
                                 f"--config.out")
        old, new = flatten(existing), flatten(run_config)
        differing = sorted(k for k in set(old) | set(new)
                           if old.get(k) != new.get(k) and k.removeprefix("train.") not in _RESUMABLE_KEYS)
        if differing and has_checkpoint:
            detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differing[:6])
            raise RunExistsError(f"{run_dir} already holds a different run ({detail}); choose another --config.out")
    elif path.parent.exists() and any(p.name != LOCK for p in path.parent.iterdir()):
        raise RunExistsError(f"{run_dir} exists and is not a jaxinterp run directory; choose another --config.out")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run_config, indent=2, sort_keys=True))


def save_checkpoint(manager: ocp.CheckpointManager, step: int, state: Any, buffer_state: BufferState) -> None:
    """Saves the train state (sharded arrays) and the buffer state (JSON) as one orbax step."""
    # force: orbax's own policy would skip a step silently; the marker says a digest will follow.
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               buffer=ocp.args.JsonSave(buffer_state.to_json())),
                 force=True, custom_metadata=dict(DIGEST_MARKER))


def _remove_step(step_dir: epath.Path) -> None:
    (step_dir / DIGEST).unlink(missing_ok=True)  # first: a half-deleted step must not look verified
    if step_dir.exists():
        step_dir.rmtree()


class CheckpointWriter:
    """A train job's checkpoints: async orbax saves, a digest per finalized step, and rotation.

    Process 0 writes the digest of a step once orbax has finished it on every process (polled each
    step, and at the next save and on close at the latest), then deletes all but the newest
    :data:`KEEP` verified steps. Every process makes the same calls.
    """

    def __init__(self, run_dir: epath.Path):
        self.manager = checkpoint_manager(str(run_dir), async_save=True)
        self.pending: int | None = None

    def save(self, step: int, state: Any, buffer_state: BufferState) -> None:
        self.finish()
        self._require_space(step, state)
        save_checkpoint(self.manager, step, state, buffer_state)
        self.pending = step

    def _require_space(self, step: int, state: Any) -> None:
        """Refuses a save the disk cannot hold before it starts: orbax's background writes would fail
        half-way with pages of tracebacks. Every process checks its share; all agree, so none is left
        waiting for the others inside orbax."""
        directory = self.manager.directory
        needed = _SPACE_SLACK * sum(shard.data.nbytes for leaf in jax.tree.leaves(state)
                                    for shard in leaf.addressable_shards if shard.replica_id == 0) + 2**20
        short = None
        try:
            require_free_space(directory, int(needed), f"checkpoint step {step}")
        except OSError as error:
            short = error
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            if np.any(multihost_utils.process_allgather(np.asarray([short is not None]))) and short is None:
                raise OSError(errno.ENOSPC, f"No space left on device for checkpoint step {step} on another "
                                            "process's disk", os.fspath(directory))
        if short is not None:
            raise short

    def poll(self) -> None:
        """Verifies the step in flight if orbax has finished it (cheap otherwise)."""
        if self.pending is not None and is_primary() and not self.manager.is_saving_in_progress():
            self.finish()

    def finish(self) -> None:
        """Waits for the save in flight (raising its error), then digests it and rotates."""
        self.manager.wait_until_finished()
        step, self.pending = self.pending, None
        if step is None or not is_primary():
            return
        self.manager.reload()
        steps = self.manager.all_steps()
        if step not in steps:
            warn(f"{self.manager.directory / str(step)}: orbax did not finalize this step; it is not used")
            return
        write_digest(self.manager.directory / str(step), step)
        verified = [s for s in steps if (self.manager.directory / str(s) / DIGEST).exists()]
        for old in steps:
            if old < step and old not in verified[-KEEP:]:
                _remove_step(self.manager.directory / str(old))

    def close(self) -> None:
        self.finish()


def prepare_run_dir(run_dir: str, run_config: dict[str, Any]) -> tuple[int | None, bool]:
    """Process 0 of a train job: picks the step to resume from (``None``: start afresh) and whether
    it is a legacy step, writes or checks ``cfg.json``, and removes what no restore can use (damaged
    steps, the files of an attempt that never finished a step).

    Call it holding the run's lock. Each skipped step is reported on one stderr line.
    """
    found = newest_restorable(run_dir)
    if found.step is None and found.damaged:
        # A run that had verified checkpoints is not a failed first attempt: refuse rather than start
        # afresh over its history.
        detail = "; ".join(f"{path}: {problem}" for path, problem in found.skipped)
        raise CheckpointError(f"run {run_dir} has no intact checkpoint ({detail}); restore the damaged files, or "
                              f"remove {location(run_dir) / 'checkpoints'} to train it afresh")
    write_run_config(run_dir, run_config, has_checkpoint=found.step is not None)
    fallback = f"resuming from step {found.step}" if found.step is not None else "no intact step; starting afresh"
    for step_dir, problem in found.skipped:
        warn(f"{step_dir}: {problem}; {fallback} (deleting it)")
        _remove_step(step_dir)
    if found.step is None:
        run = location(run_dir)
        for name in _ATTEMPT_FILES:  # what an attempt that never finished a step left behind
            path = run / name
            if path.is_dir():
                path.rmtree()
            elif path.exists():
                path.unlink()
    return found.step, found.legacy
