"""Directories written all at once: a temporary sibling is filled, then renamed into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax

from jaxinterp.distributed import barrier, is_primary

__all__ = ["atomic_directory"]


def atomic_directory(out: str, overwrite: bool, write: Callable[[Path], None], per_process: bool = False) -> Path:
    """Calls ``write(staging_dir)`` and renames the result to ``out``, so no reader sees half of it.

    In a multi-process job one directory is written for the whole job: every process checks
    ``out``, process 0 writes it, and all return once it is in place (barriers with timeouts).
    ``per_process=True`` writes from every process instead (per-host caches).

    Raises:
      FileExistsError: ``out`` exists and ``overwrite`` is false (nothing is touched).
    """
    target = Path(out)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass --config.overwrite=true to replace it")
    if not per_process and jax.process_count() > 1:
        barrier(f"checked:{target.absolute()}")  # nobody writes before every process has checked
        if is_primary():
            _write_atomically(target, write)
        barrier(f"written:{target.absolute()}")
        return target
    return _write_atomically(target, write)


def _write_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
