"""The corpus of the built-in tasks: the running interpreter's standard-library ``.py`` files."""

from __future__ import annotations

import functools
import io
import math
import os
import sysconfig
import tokenize
from typing import Any

__all__ = ["stdlib_root", "stdlib_files", "read_source", "printable", "per_file_cap", "too_little"]

_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


@functools.lru_cache(maxsize=1)
def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


@functools.lru_cache(maxsize=1)
def stdlib_files() -> tuple[str, ...]:
    """Sorted paths (relative to the stdlib root, '/'-separated) of the standard library's .py files."""
    root = stdlib_root()
    found = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in _SKIP_DIRS and not d.startswith(".")]
        rel_dir = os.path.relpath(directory, root)
        for file_name in names:
            if file_name.endswith(".py"):
                rel = file_name if rel_dir == "." else os.path.join(rel_dir, file_name)
                found.append(rel.replace(os.sep, "/"))
    return tuple(sorted(found))


@functools.lru_cache(maxsize=256)
def read_source(rel: str) -> str | None:
    """The file's text with '\\n' line ends, or None if it cannot be read or decoded."""
    try:
        with open(os.path.join(stdlib_root(), rel), "rb") as handle:
            data = handle.read()
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        text = data.decode(encoding)
    except (OSError, SyntaxError, LookupError, UnicodeDecodeError):
        return None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def printable(text: str) -> bool:
    return all(line.replace("\t", " ").isprintable() for line in text.split("\n"))


def per_file_cap(per_class: int, divisor: int, most: int) -> int:
    """Examples per class taken from one file: few for small n (more files, more variety), capped."""
    return int(min(most, max(2, math.ceil(per_class / divisor))))


def too_little(name: str, n: int, found: dict[Any, int], per_class: int) -> ValueError:
    counts = ", ".join(f"{label!r}: {count}" for label, count in found.items())
    return ValueError(f"task {name!r}: the standard library under {stdlib_root()} gives too few examples for "
                      f"n={n} ({per_class} per class needed; found {counts}); ask for a smaller n")
