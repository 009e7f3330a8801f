"""Checksums of checkpoint steps: a sha256 per file, written once orbax has finalized the step.

orbax-checkpoint 0.12 and TensorStore keep no checksum of the data they write, so a flipped byte
restores as different weights. Every step a train job saves therefore gets ``jaxinterp_digest.json``
in its directory::

    {"format": 1, "step": 60, "files": {"state/ocdbt.process_0/d/…": {"bytes": 92768, "sha256": "…"}, …}}

written by process 0 after orbax has finalized the step on every process (its files are complete
and committed), with one atomic write (a rename locally, one object PUT on ``gs://`` / ``s3://``).
A step is intact when its files are exactly the listed ones with those sizes and hashes.

Steps also carry ``{"jaxinterp_digest": 1}`` in orbax's own step metadata, written with the step:
a step with that marker and no digest was cut short before it was verified (incomplete); a step
with neither was written by a jaxinterp from before digests (legacy) and is trusted with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from etils import epath

from jaxinterp.store.paths import on_object_store, relative_files

__all__ = ["DIGEST", "DIGEST_MARKER", "StepCheck", "check_step", "warn", "write_digest"]

DIGEST = "jaxinterp_digest.json"
# Stored in each step's orbax custom metadata, so a missing digest tells "cut short" from "legacy".
DIGEST_MARKER = {"jaxinterp_digest": 1}
_FORMAT = 1
_ORBAX_METADATA = "_CHECKPOINT_METADATA"
_READ_BUFFER = 16 * 2**20
_HASHING_THREADS = 8  # object-store reads are latency-bound; hashlib releases the GIL on large buffers


class StepCheck(NamedTuple):
    """What :func:`check_step` found: ``problem`` is empty for a usable step (intact or legacy);
    ``damaged`` says the step was verified once and has changed since (not merely cut short)."""

    problem: str
    legacy: bool = False
    damaged: bool = False


def warn(message: str) -> None:
    """One warning line on stderr (the CLI's errors are one line too)."""
    print(f"jaxinterp: warning: {message}", file=sys.stderr, flush=True)


def _sha256(path: epath.Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as reader:
        while block := reader.read(_READ_BUFFER):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def _hash_files(step_dir: epath.Path) -> dict[str, dict[str, int | str]]:
    """``{relative path: {"bytes", "sha256"}}`` of every file of a step but its digest."""
    names = ["/".join(parts) for parts in relative_files(step_dir)]
    names = [name for name in names if name != DIGEST and not name.startswith(f"{DIGEST}.")]
    with ThreadPoolExecutor(_HASHING_THREADS) as pool:
        hashes = list(pool.map(lambda name: _sha256(step_dir / name), names))
    return {name: {"bytes": size, "sha256": sha} for name, (size, sha) in zip(names, hashes)}


def write_digest(step_dir: epath.Path, step: int) -> None:
    """Writes the digest of a finalized step (call on one process, after every process finished writing)."""
    text = json.dumps({"format": _FORMAT, "step": step, "files": _hash_files(step_dir)}, indent=1, sort_keys=True)
    target = step_dir / DIGEST
    if on_object_store(step_dir):
        target.write_text(text)  # one PUT: readers see all of it or nothing
        return
    staging = Path(f"{target}.tmp")
    staging.write_text(text)
    os.replace(staging, target)  # a reader never sees half a digest


def _has_marker(step_dir: epath.Path) -> bool | None:
    """Whether orbax's metadata of the step carries :data:`DIGEST_MARKER` (``None``: unreadable)."""
    try:
        metadata = json.loads((step_dir / _ORBAX_METADATA).read_text())
    except (FileNotFoundError, ValueError):
        return None
    custom = metadata.get("custom_metadata") or {}
    return all(custom.get(key) == value for key, value in DIGEST_MARKER.items())


def check_step(step_dir: epath.Path) -> StepCheck:
    """Checks a finalized step against its digest (reads every file of it once).

    Only a missing, changed, extra or truncated file counts as damage; other read errors (network,
    permissions) propagate, so a passing outage never makes a good step look corrupt.
    """
    digest_path = step_dir / DIGEST
    if not digest_path.exists():
        marker = _has_marker(step_dir)
        if marker is False:
            return StepCheck("", legacy=True)
        if marker is None:
            return StepCheck(f"no {DIGEST} and no readable {_ORBAX_METADATA}")
        return StepCheck(f"no {DIGEST} (the job stopped before the step was verified)")
    try:
        listed = json.loads(digest_path.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return StepCheck(f"{DIGEST} is unreadable", damaged=True)
    try:
        found = _hash_files(step_dir)
    except FileNotFoundError as error:  # a file vanished while being read
        return StepCheck(f"a file vanished while it was checked ({error})", damaged=True)
    missing = sorted(set(listed) - set(found))
    extra = sorted(set(found) - set(listed))
    changed = sorted(name for name in set(listed) & set(found) if listed[name] != found[name])
    for names, what in ((missing, "missing"), (changed, "changed since it was written"), (extra, "not in the digest")):
        if names:
            more = f" and {len(names) - 1} more" if len(names) > 1 else ""
            return StepCheck(f"{names[0]}{more}: {what} (per {DIGEST})", damaged=True)
    return StepCheck("")
