"""Where run directories and outputs live: a local path or a URL (``file://``, ``gs://``, ``s3://``).

Every place that takes a run directory or an output takes any of these and handles it as an
:class:`etils.epath.Path` (what orbax uses): local paths through ``os``, ``gs://`` and ``s3://``
through fsspec (``gcsfs`` / ``s3fs``, the ``cloud`` extra). ``s3fs`` reads the endpoint of an
S3-compatible server from ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` like the AWS SDKs.

Object stores have no rename and no append, so whole trees are uploaded from (and read through)
local copies: :func:`upload_tree`, :func:`download_tree`, :func:`local_copy`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from etils import epath

from jaxinterp.config import ConfigError

__all__ = ["PATH_OR_URL", "SCHEMES", "copy_file", "download_tree", "is_path_or_url", "local_copy", "location",
           "on_object_store", "relative_files", "upload_tree"]

SCHEMES = ("file", "gs", "s3")
# The fsspec implementation epath needs for each object-store scheme.
_FILESYSTEM_PACKAGES = {"gs": "gcsfs", "s3": "s3fs"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_COPY_BUFFER = 16 * 2**20


def _scheme(value: str) -> str | None:
    match = _SCHEME.match(value)
    return match.group(1).lower() if match else None


def is_path_or_url(value: str) -> bool:
    """Whether ``value`` is a plain path or a URL of a scheme jaxinterp reads and writes (empty counts)."""
    return _scheme(value) in (None, *SCHEMES)


# A schema check (see jaxinterp.config.Field.check) for fields naming a run directory or an output.
PATH_OR_URL = (is_path_or_url, "a local path or a file://, gs:// or s3:// URL")


def location(value: str | os.PathLike, field: str = "") -> epath.Path:
    """``value`` as an :class:`epath.Path`: a local path (``file://`` URLs included) as given, ``gs://`` and
    ``s3://`` URLs as URLs.

    Args:
      value: a path or URL.
      field: the config field it came from, named in errors.

    Raises:
      ConfigError: a URL scheme other than ``file``, ``gs`` or ``s3``, or a ``file://`` URL of another host.
      ImportError: ``gs://`` without ``gcsfs`` or ``s3://`` without ``s3fs`` installed.
    """
    text = os.fspath(value)
    scheme = _scheme(text)
    where = f"config field '{field}'" if field else f"{text!r}"
    if scheme is None:
        return epath.Path(text)
    if scheme == "file":
        host, _, rest = text[len("file://"):].partition("/")
        if host not in ("", "localhost"):
            raise ConfigError(f"{where}: {text} names host {host!r}; a file:// URL must be file:///absolute/path")
        return epath.Path("/" + rest)
    if scheme not in SCHEMES:
        raise ConfigError(f"{where}: {text} has the unsupported scheme {scheme}://; use a local path or a "
                          f"file://, gs:// or s3:// URL")
    package = _FILESYSTEM_PACKAGES[scheme]
    if importlib.util.find_spec(package) is None:
        raise ImportError(f"{where}: {text} needs the {package} package for {scheme}:// URLs; "
                          f"pip install 'jaxinterp[cloud]'")
    return epath.Path(text)


def on_object_store(path: epath.Path) -> bool:
    """Whether ``path`` lies on an object store (``gs://``, ``s3://``): no atomic rename, no append."""
    return os.fspath(path).startswith(("gs://", "s3://"))


def copy_file(source: epath.Path | Path, target: epath.Path | Path) -> None:
    """Streams one file between any two locations (local, ``gs://``, ``s3://``)."""
    with source.open("rb") as reader, target.open("wb") as writer:
        shutil.copyfileobj(reader, writer, _COPY_BUFFER)


def relative_files(root: epath.Path | Path) -> Iterator[tuple[str, ...]]:
    """Relative parts of every file under ``root`` (epath's own walk does not work on s3fs)."""
    for child in sorted(root.iterdir(), key=lambda p: p.name):
        if child.is_dir():
            yield from ((child.name, *parts) for parts in relative_files(child))
        else:
            yield (child.name,)


def upload_tree(source: Path, target: epath.Path) -> None:
    """Copies the files of local directory ``source`` under ``target``, the top-level ``*.json`` last.

    Those are the files readers open first (``cfg.json``, ``eval.json``, ``results.json``), so a reader
    that finds one finds every file it describes, even while an upload is under way or after it broke.
    """
    files = sorted(relative_files(source), key=lambda parts: (len(parts) == 1 and parts[0].endswith(".json"), parts))
    for parts in files:
        destination = target.joinpath(*parts)
        if not on_object_store(destination):
            destination.parent.mkdir(parents=True, exist_ok=True)  # object stores have no directories
        copy_file(source.joinpath(*parts), destination)


def download_tree(source: epath.Path, target: Path) -> None:
    """Copies the file or directory tree ``source`` to local ``target``."""
    if not source.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        copy_file(source, target)
        return
    for parts in relative_files(source):
        target.joinpath(*parts).parent.mkdir(parents=True, exist_ok=True)
        copy_file(source.joinpath(*parts), target.joinpath(*parts))


@contextmanager
def local_copy(path: epath.Path) -> Iterator[Path]:
    """``path`` itself when it is local; else a temporary local copy of it (same name), removed on exit.

    Raises:
      FileNotFoundError: ``path`` does not exist.
    """
    if not on_object_store(path):
        yield Path(path)
        return
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    with tempfile.TemporaryDirectory(prefix="jaxinterp-") as staging:
        copy = Path(staging) / path.name
        download_tree(path, copy)
        yield copy
