"""Directories written all at once: a temporary sibling is filled, then renamed into place.

Object stores (``gs://``, ``s3://``) cannot rename: there the directory is filled locally and then
uploaded, its top-level JSON files (``cfg.json``, ``eval.json``, ``results.json``) last, so a reader
never finds a descriptor without the files it describes.

Every such directory carries a marker, ``.jaxinterp-output.json`` (``{"kind": ...}``). Replacing an
existing directory (``overwrite``) is allowed only for an earlier output of the same kind: one with
that marker, or, for outputs written before markers existed, one holding nothing but the names that
kind writes. Anything else (a run directory, a store, a user's own files) is refused, whatever
``overwrite`` says: the replace step deletes the old tree.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path

import jax
from etils import epath

from jaxinterp.distributed import barrier, is_primary
from jaxinterp.store.paths import location, on_object_store, upload_tree

__all__ = ["OUTPUT_MARKER", "ForeignDirectoryError", "atomic_directory", "check_replaceable"]

OUTPUT_MARKER = ".jaxinterp-output.json"


class ForeignDirectoryError(FileExistsError):
    """The target holds something other than an earlier output of the same kind."""


def check_replaceable(target: Path | epath.Path, kind: str, files: Collection[str]) -> None:
    """Raises unless ``target`` is absent, empty, or an earlier output of ``kind``.

    Args:
      target: the directory about to be replaced.
      kind: the writer's kind (``eval``, ``saelens``, ...), as its marker records it.
      files: the top-level names this kind writes; a directory without a marker that holds only
        these is an output from before markers existed.

    Raises:
      ForeignDirectoryError: ``target`` is a file, or a directory that this kind did not write.
    """
    if not target.exists():
        return
    if not target.is_dir():
        raise ForeignDirectoryError(f"{target} is a file, not a {kind} output directory; choose another --config.out")
    marker = target / OUTPUT_MARKER
    if marker.exists():
        try:
            found = json.loads(marker.read_text()).get("kind")
        except (ValueError, AttributeError):
            found = None
        if found == kind:
            return
        raise ForeignDirectoryError(f"{target} holds a jaxinterp {found or 'unreadable'} output, not a {kind} "
                                    f"output; refusing to replace it; choose another --config.out")
    names = {child.name for child in target.iterdir()}
    foreign = sorted(names - set(files))
    if foreign:
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise ForeignDirectoryError(f"{target} is not a {kind} output (it holds {shown}); refusing to replace it; "
                                    f"choose another --config.out")


def atomic_directory(out: str, overwrite: bool, write: Callable[[Path], None], kind: str, files: Collection[str],
                     per_process: bool = False) -> Path | epath.Path:
    """Calls ``write(staging_dir)`` and renames the result to ``out``, so no reader sees half of it.

    ``out`` is a local path or a ``file://``, ``gs://`` or ``s3://`` URL; ``write`` always fills a
    local directory. An existing ``out`` is replaced only with ``overwrite`` and only when it is an
    earlier output of ``kind`` (:func:`check_replaceable`; ``files`` are the top-level names ``write``
    produces). In a multi-process job one directory is written for the whole job: every process
    checks ``out``, process 0 writes it, and all return once it is in place (barriers with
    timeouts). ``per_process=True`` writes from every process instead (per-host caches).

    Raises:
      FileExistsError: ``out`` exists and ``overwrite`` is false (nothing is touched).
      ForeignDirectoryError: ``out`` exists and is not an output of ``kind`` (nothing is touched).
    """
    target = location(out, "out")
    if not on_object_store(target):
        target = Path(target)
    if target.exists() and not overwrite and not _is_empty_directory(target):
        raise FileExistsError(f"{target} exists; pass --config.overwrite=true to replace it")
    check_replaceable(target, kind, files)

    def write_marked(directory: Path) -> None:
        write(directory)
        (directory / OUTPUT_MARKER).write_text(json.dumps({"kind": kind}) + "\n")

    if not per_process and jax.process_count() > 1:
        name = target if on_object_store(target) else target.absolute()
        barrier(f"checked:{name}")  # nobody writes before every process has checked
        if is_primary():
            _write_atomically(target, write_marked)
        barrier(f"written:{name}")
        return target
    return _write_atomically(target, write_marked)


def _is_empty_directory(path: Path | epath.Path) -> bool:
    return path.is_dir() and not any(True for _ in path.iterdir())


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
