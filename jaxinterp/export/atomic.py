"""Directories written all at once: a temporary sibling is filled, then renamed into place.

Object stores (``gs://``, ``s3://``) cannot rename: there the directory is filled locally and then
uploaded, its top-level JSON files (``cfg.json``, ``eval.json``, ``results.json``) last, so a reader
never finds a descriptor without the files it describes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
from etils import epath

from jaxinterp.distributed import barrier, is_primary
from jaxinterp.store.paths import location, on_object_store, upload_tree

__all__ = ["atomic_directory"]


def atomic_directory(out: str, overwrite: bool, write: Callable[[Path], None],
                     per_process: bool = False) -> Path | epath.Path:
    """Calls ``write(staging_dir)`` and renames the result to ``out``, so no reader sees half of it.

    ``out`` is a local path or a ``file://``, ``gs://`` or ``s3://`` URL; ``write`` always fills a
    local directory. In a multi-process job one directory is written for the whole job: every
    process checks ``out``, process 0 writes it, and all return once it is in place (barriers with
    timeouts). ``per_process=True`` writes from every process instead (per-host caches).

    Raises:
      FileExistsError: ``out`` exists and ``overwrite`` is false (nothing is touched).
    """
    target = location(out, "out")
    if not on_object_store(target):
        target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass --config.overwrite=true to replace it")
    if not per_process and jax.process_count() > 1:
        name = target if on_object_store(target) else target.absolute()
        barrier(f"checked:{name}")  # nobody writes before every process has checked
        if is_primary():
            _write_atomically(target, write)
        barrier(f"written:{name}")
        return target
    return _write_atomically(target, write)


def _write_atomically(target: Path | epath.Path, write: Callable[[Path], None]) -> Path | epath.Path:
    if on_object_store(target):
        return _upload(target, write)
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


def _upload(target: epath.Path, write: Callable[[Path], None]) -> epath.Path:
    """Fills a local temporary directory, then replaces ``target`` with its files."""
    with tempfile.TemporaryDirectory(prefix=f"jaxinterp-{target.name}-") as staging:
        write(Path(staging))
        if target.exists():  # overwrite: the old output goes first, so no stale file survives
            target.rmtree()
        upload_tree(Path(staging), target)
    return target
