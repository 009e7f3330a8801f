"""Faults outside the code, as one line each: corrupt files, and the machine's state (disk full,
read-only or unwritable paths).

A JSON file jaxinterp reads back (run ``cfg.json``, checkpoint metadata) that does not parse is a
:class:`CorruptFileError` naming the file (:func:`read_json`). Machine-state failures reach the CLI
as an ``OSError`` or, from TensorStore (stores, orbax checkpoints), as a ``ValueError`` whose text
carries ``[os_error_code='N']``; either may be the cause or context of another exception raised
while cleaning up. :func:`machine_error` finds them in the chain.
"""

from __future__ import annotations

import errno
import json
import os
import re
from typing import Any

from etils import epath

__all__ = ["CorruptFileError", "machine_error", "read_json", "require_free_space"]


class CorruptFileError(ValueError):
    """A file jaxinterp wrote and reads back does not parse (truncated, edited, overwritten)."""


def read_json(path: epath.Path | os.PathLike, what: str) -> Any:
    """The parsed JSON file at ``path`` (local or URL); ``what`` says what it is, for the error.

    Raises:
      CorruptFileError: the file is not valid UTF-8 JSON (the message names it and the position).
    """
    text = epath.Path(path).read_bytes()
    try:
        return json.loads(text.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise CorruptFileError(f"{what} {path} is corrupt: not UTF-8 text (byte {error.start})") from error
    except json.JSONDecodeError as error:
        raise CorruptFileError(f"{what} {path} is corrupt: {error.msg} at line {error.lineno} column {error.colno}; "
                               "restore it or remove the directory and rerun") from error

_TENSORSTORE_OS_ERROR = re.compile(r"os_error_code='(\d+)'")
_QUOTED_PATH = re.compile(r'"((?:/|[a-z0-9]+://)[^"]+)"')
# What the user can do about each; any other OS error is still named, with its path.
_ADVICE = {
    errno.ENOSPC: "free space there and rerun the same command (an interrupted run resumes from its last checkpoint)",
    errno.EDQUOT: "free space there and rerun the same command (an interrupted run resumes from its last checkpoint)",
    errno.EROFS: "choose a writable --config.out",
    errno.EACCES: "no permission; fix the permissions or choose another path",
    errno.EPERM: "not permitted; fix the permissions or choose another path",
}


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _describe(reason: str, code: int, path: str | None) -> str:
    where = f" at {path}" if path else ""
    advice = _ADVICE.get(code)
    return f"{reason[:1].lower()}{reason[1:]}{where}" + (f"; {advice}" if advice else "")


def machine_error(error: BaseException) -> str | None:
    """The one-line description of the machine-state failure behind ``error``, or ``None``.

    ``error`` itself counts when it is an ``OSError`` with an errno or a TensorStore error carrying
    an OS error code. Its cause/context chain counts only for the codes of :data:`_ADVICE` (disk
    full, read-only, permissions), so a bug raised while handling, say, a missing file keeps its
    traceback. Names the file involved when the error does.
    """
    found = [failure for depth, failure in enumerate(map(_os_error, _chain(error)))
             if failure is not None and (depth == 0 or failure[0] in _ADVICE)]
    if not found:
        return None
    code, _, reason = found[0]
    path = next((path for other, path, _ in found if other == code and path), None)  # a later link may name the file
    return _describe(reason, code, path)


def require_free_space(directory: os.PathLike | str, needed_bytes: int, what: str) -> None:
    """Raises ``OSError(ENOSPC)`` before writing ``what`` of ``needed_bytes`` into a local directory
    that has less free space: a write that fills the disk half-way fails in background threads
    (orbax, TensorStore) with pages of tracebacks and leaves partial files."""
    try:
        stats = os.statvfs(directory)
    except OSError:
        return  # not a local directory (or not yet created): the write itself will tell
    free = stats.f_bavail * stats.f_frsize
    if free < needed_bytes:
        raise OSError(errno.ENOSPC, f"No space left on device for {what} ({needed_bytes / 2**20:.1f} MiB needed, "
                                    f"{free / 2**20:.1f} MiB free)", os.fspath(directory))


def _os_error(error: BaseException) -> tuple[int, str | None, str] | None:
    """(errno, path, reason) of an OS-level failure, from an ``OSError`` or a TensorStore error's text."""
    if isinstance(error, OSError) and error.errno is not None:
        path = None if error.filename is None else os.fspath(error.filename)
        return error.errno, path, error.strerror or os.strerror(error.errno)
    if isinstance(error, ValueError):
        text = str(error)
        code = _TENSORSTORE_OS_ERROR.search(text)
        if code:
            paths = _QUOTED_PATH.findall(text)
            return int(code.group(1)), paths[-1] if paths else None, os.strerror(int(code.group(1)))
    return None
