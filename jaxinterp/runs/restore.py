"""Reading a run directory: its ``cfg.json``, and its newest intact checkpoint step restored by orbax.

A step is used only once :func:`~jaxinterp.runs.integrity.check_step` finds it intact (or legacy:
written before digests), so a damaged or half-written step falls back to the one before it, and a
run with no usable step is one :class:`CheckpointError` naming each step and what is wrong with it.
Restores take the whole saved tree or, with ``partial``, only the leaves the target names (no
other leaf is restored: evaluation and export never restore the optimizer state).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import orbax.checkpoint as ocp
from etils import epath

from jaxinterp.buffer import BufferState
from jaxinterp.faults import read_json
from jaxinterp.runs.integrity import check_step, warn
from jaxinterp.runs.orbax_s3 import enable_s3_checkpoints
from jaxinterp.store.paths import location, on_object_store

__all__ = [
    "RUN_CONFIG",
    "CheckpointError",
    "Restorable",
    "checkpoint_manager",
    "finalized_steps",
    "newest_intact_step",
    "newest_restorable",
    "read_run_config",
    "restore_latest",
    "restore_step",
    "saved_state",
]

RUN_CONFIG = "cfg.json"
_COMMIT_FILE = "commit_success.txt"  # orbax's mark of a finished step where there is no rename


class CheckpointError(FileNotFoundError):
    """A run directory has no intact checkpoint to restore."""


def checkpoint_manager(run_dir: str, async_save: bool = False,
                       item_handlers: dict[str, ocp.CheckpointHandler] | None = None) -> ocp.CheckpointManager:
    """An orbax manager over ``<run_dir>/checkpoints`` that deletes nothing (the train job rotates steps).

    With ``async_save`` a save returns once the arrays are copied off the devices and the files are
    written in the background (call ``wait_until_finished`` before exiting). ``item_handlers``
    registers a handler per item, which reading an item's metadata needs.
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
    return ocp.CheckpointManager(run / "checkpoints", options=options, item_handlers=item_handlers)


def read_run_config(run_dir: str) -> dict[str, Any]:
    """The ``cfg.json`` of a run directory."""
    path = location(run_dir) / RUN_CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a jaxinterp run directory (no {RUN_CONFIG})")
    return read_json(path, "run config")


class Restorable(NamedTuple):
    """The newest step to restore (``None``: none) and the newer steps skipped, with why."""

    step: int | None
    legacy: bool
    skipped: list[tuple[epath.Path, str]]
    damaged: bool = False  # some skipped step was verified once and has changed since


def finalized_steps(directory: epath.Path) -> list[int]:
    """The steps orbax has finalized under ``directory`` (a run's ``checkpoints/``), listed directly:
    creating an orbax manager is a collective, and a train job's process 0 lists them alone."""
    object_store = on_object_store(directory)
    steps = []
    for child in directory.iterdir():
        # Unfinished steps are '<step>.orbax-checkpoint-tmp…' locally, or lack their commit file on object stores.
        if child.name.isdigit() and child.is_dir() and (not object_store or (child / _COMMIT_FILE).exists()):
            steps.append(int(child.name))
    return sorted(steps)


def newest_restorable(run_dir: str) -> Restorable:
    """The newest intact (or legacy, see :mod:`~jaxinterp.runs.integrity`) finalized step of a run."""
    directory = location(run_dir) / "checkpoints"
    if not directory.exists():
        return Restorable(None, False, [])
    skipped, damaged = [], False
    for step in reversed(finalized_steps(directory)):
        check = check_step(directory / str(step))
        if not check.problem:
            if check.legacy:
                warn(f"{directory / str(step)} was written without a digest (by an older jaxinterp); "
                     f"restoring it unchecked")
            return Restorable(step, check.legacy, skipped, damaged)
        skipped.append((directory / str(step), check.problem))
        damaged = damaged or check.damaged
    return Restorable(None, False, skipped, damaged)


def newest_intact_step(run_dir: str) -> tuple[int, bool]:
    """``(step, legacy)`` of the newest usable step of ``run_dir``; damaged newer steps are reported on stderr.

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
    return found.step, found.legacy


@contextmanager
def _reading(manager: ocp.CheckpointManager, step: int, legacy: bool) -> Iterator[None]:
    """A legacy step (no digest) that orbax cannot read is one :class:`CheckpointError`; a verified
    step's errors propagate (its files are the ones written, so the error is not the data's)."""
    if not legacy:
        yield
        return
    try:
        yield
    except Exception as error:  # TensorStore/orbax raise ValueError, OSError, XlaRuntimeError…
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{manager.directory / str(step)} (written without a digest by an older jaxinterp) "
                              f"cannot be restored ({message}); delete it to use an older step") from error


def saved_state(run_dir: str, step: int, legacy: bool = False) -> Any:
    """The saved train state's tree of step ``step`` as orbax array metadata (shape, dtype), read
    without any array data: nested dicts keyed by the state's field names."""
    manager = checkpoint_manager(run_dir, item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                                         "buffer": ocp.JsonCheckpointHandler()})
    with _reading(manager, step, legacy):
        metadata = manager.item_metadata(step)["state"]
    return metadata.tree if hasattr(metadata, "tree") else metadata


def restore_step(run_dir: str, step: int, target: Any, legacy: bool = False,
                 partial: bool = False) -> tuple[Any, BufferState]:
    """Restores one step of ``run_dir`` into the structure/shardings of ``target``.

    With ``partial``, ``target`` is a subtree of the saved state as nested dicts (see
    :func:`saved_state`), and only its leaves are read.
    """
    if partial:
        manager = checkpoint_manager(run_dir, item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                                             "buffer": ocp.JsonCheckpointHandler()})
        state = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                       partial_restore=True)
    else:
        manager = checkpoint_manager(run_dir)
        state = ocp.args.StandardRestore(target)
    with _reading(manager, step, legacy):
        restored = manager.restore(step, args=ocp.args.Composite(state=state, buffer=ocp.args.JsonRestore()))
    return restored["state"], BufferState.from_json(restored["buffer"])


def restore_latest(run_dir: str, target: Any, partial: bool = False) -> tuple[int, Any, BufferState]:
    """Restores the newest intact step of ``run_dir`` (see :func:`restore_step`); damaged newer steps
    are reported on stderr.

    Raises:
      CheckpointError: no step is intact (the message names each step and what is wrong with it).
    """
    step, legacy = newest_intact_step(run_dir)
    state, buffer_state = restore_step(run_dir, step, target, legacy, partial)
    return step, state, buffer_state
