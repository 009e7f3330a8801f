"""Run directories: orbax checkpoints of the train state plus a self-describing ``cfg.json``.

Layout of ``<run>/``: ``cfg.json`` (train config, d_in, source-model metadata from the store),
``checkpoints/<step>/`` (orbax, plus ``jaxinterp_digest.json``: :mod:`jaxinterp.train.integrity`),
``metrics.jsonl``, ``tensorboard/``, ``eval.json``, and ``.lock`` while a train job writes it
(:mod:`jaxinterp.train.run_lock`). A run directory is a local path or a URL
(:func:`jaxinterp.store.paths.location`); orbax writes checkpoints straight to ``gs://`` /
``s3://``, marking each finished step with a commit file (object stores cannot rename).

Restores take the newest *intact* step (its digest matches), so a damaged or half-written step
falls back to the one before it; rotation deletes old steps only once a newer one is verified.
Only a run with a checkpoint is a run: a directory whose attempts never finished a step is reused.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxinterp.buffer import BufferState
from jaxinterp.config import flatten
from jaxinterp.distributed import is_primary
from jaxinterp.faults import read_json, require_free_space
from jaxinterp.store.paths import location, on_object_store
from jaxinterp.train.integrity import DIGEST, DIGEST_MARKER, check_step, warn, write_digest
from jaxinterp.train.orbax_s3 import enable_s3_checkpoints
from jaxinterp.train.run_lock import LOCK

__all__ = [
    "RUN_CONFIG",
    "CheckpointError",
    "CheckpointWriter",
    "Restorable",
    "RunExistsError",
    "checkpoint_manager",
    "newest_restorable",
    "prepare_run_dir",
    "read_run_config",
    "restore_latest",
    "restore_step",
    "save_checkpoint",
    "write_run_config",
]

RUN_CONFIG = "cfg.json"
# Changing these does not change what a run *is*, so a rerun with new values resumes it (the mesh
# included: a run restores onto however many devices the rerun has).
# Fields a resumed run may change: schedules of logging, metrics-only thresholds, the device and
# process layout (streams is checked against the checkpoint by the loop), and where the run
# directory now lives (moved or copied).
_RESUMABLE_KEYS = ("steps", "log_every", "checkpoint_every", "eval_tokens", "massive_ratio", "mesh.data", "mesh.model",
                   "out", "streams", "allow_other_model", "distributed.coordinator", "distributed.num_processes",
                   "distributed.process_id", "distributed.timeout_s")
# What a train attempt leaves besides cfg.json; stale once no checkpoint of it survives.
_ATTEMPT_FILES = ("metrics.jsonl", "tensorboard", "eval.json", "checkpoints")
KEEP = 2  # verified steps kept; older ones are deleted once a newer one is verified
_COMMIT_FILE = "commit_success.txt"  # orbax's mark of a finished step where there is no rename
_SPACE_SLACK = 1.1  # a step's files over its arrays' bytes (OCDBT indices, metadata), with room to spare


class RunExistsError(FileExistsError):
    """The run directory holds a different run."""


class CheckpointError(FileNotFoundError):
    """A run directory has no intact checkpoint to restore."""


def checkpoint_manager(run_dir: str, async_save: bool = False) -> ocp.CheckpointManager:
    """An orbax manager over ``<run_dir>/checkpoints`` that deletes nothing (:class:`CheckpointWriter` rotates).

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
    # max_to_keep=None: orbax would delete the previous step as soon as a new one is committed, before
    # anything has checked the new one.
    options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True, enable_async_checkpointing=async_save,
                                           atomicity_options=atomicity)
    return ocp.CheckpointManager(run / "checkpoints", options=options)


def read_run_config(run_dir: str) -> dict[str, Any]:
    """The ``cfg.json`` of a run directory."""
    path = location(run_dir) / RUN_CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a jaxinterp run directory (no {RUN_CONFIG})")
    return read_json(path, "run config")


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


class Restorable(NamedTuple):
    """The newest step to restore (``None``: none) and the newer steps skipped, with why."""

    step: int | None
    legacy: bool
    skipped: list[tuple[epath.Path, str]]
    damaged: bool = False  # some skipped step was verified once and has changed since


def _finalized_steps(directory: epath.Path) -> list[int]:
    """The steps orbax has finalized under ``directory``, listed directly: creating an orbax manager
    is a collective, and :func:`prepare_run_dir` runs on process 0 alone."""
    object_store = on_object_store(directory)
    steps = []
    for child in directory.iterdir():
        # Unfinished steps are '<step>.orbax-checkpoint-tmp…' locally, or lack their commit file on object stores.
        if child.name.isdigit() and child.is_dir() and (not object_store or (child / _COMMIT_FILE).exists()):
            steps.append(int(child.name))
    return sorted(steps)


def newest_restorable(run_dir: str) -> Restorable:
    """The newest intact (or legacy, see :mod:`~jaxinterp.train.integrity`) finalized step of a run."""
    directory = location(run_dir) / "checkpoints"
    if not directory.exists():
        return Restorable(None, False, [])
    skipped, damaged = [], False
    for step in reversed(_finalized_steps(directory)):
        check = check_step(directory / str(step))
        if not check.problem:
            if check.legacy:
                warn(f"{directory / str(step)} was written without a digest (by an older jaxinterp); "
                     f"restoring it unchecked")
            return Restorable(step, check.legacy, skipped, damaged)
        skipped.append((directory / str(step), check.problem))
        damaged = damaged or check.damaged
    return Restorable(None, False, skipped, damaged)


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


def restore_step(run_dir: str, step: int, target: Any, legacy: bool = False) -> tuple[Any, BufferState]:
    """Restores one step of ``run_dir`` into the structure/shardings of ``target``."""
    manager = checkpoint_manager(run_dir)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(target), buffer=ocp.args.JsonRestore())
    if not legacy:
        restored = manager.restore(step, args=args)
    else:
        try:
            restored = manager.restore(step, args=args)
        except Exception as error:  # TensorStore/orbax raise ValueError, OSError, XlaRuntimeError…
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise CheckpointError(f"{manager.directory / str(step)} (written without a digest by an older jaxinterp) "
                                  f"cannot be restored ({message}); delete it to use an older step") from error
    return restored["state"], BufferState.from_json(restored["buffer"])


def restore_latest(run_dir: str, target: Any) -> tuple[int, Any, BufferState]:
    """Restores the newest intact step of ``run_dir``; damaged newer steps are reported on stderr.

    Raises:
      CheckpointError: no step is intact (the message names each step and what is wrong with it).
    """
    found = newest_restorable(run_dir)
    if found.step is None:
        if not found.skipped:
            raise CheckpointError(f"run {run_dir} has no checkpoint yet")
        detail = "; ".join(f"{path}: {problem}" for path, problem in found.skipped)
        raise CheckpointError(f"run {run_dir} has no intact checkpoint ({detail}); retrain it")
    for path, problem in found.skipped:
        warn(f"{path}: {problem}; using step {found.step} instead")
    state, buffer_state = restore_step(run_dir, found.step, target, found.legacy)
    return found.step, state, buffer_state
