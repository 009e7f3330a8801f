"""Directories written all at once: a temporary sibling is filled, then renamed into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_directory"]


def atomic_directory(out: str, overwrite: bool, write: Callable[[Path], None]) -> Path:
    """Calls ``write(staging_dir)`` and renames the result to ``out``, so no reader sees half of it.

    Raises:
      FileExistsError: ``out`` exists and ``overwrite`` is false (nothing is touched).
    """
    target = Path(out)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass --config.overwrite=true to replace it")
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
