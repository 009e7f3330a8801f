"""``manifest.json``: what a store holds and how it was made (SAELens key names where they exist)."""

from __future__ import annotations

import json
from typing import Any

import tensorstore as ts

from jaxinterp.store.spec import kvstore_spec

__all__ = ["MANIFEST", "WRITER_VERSION", "read_manifest", "write_manifest", "manifest_differences", "kvstore"]

MANIFEST = "manifest.json"
WRITER_VERSION = 1
# Keys that change while a store is written; everything else pins what the store *is*.
_PROGRESS_KEYS = ("complete",)


def kvstore(url: str) -> ts.KvStore:
    """The store's root as a TensorStore key-value store (local path or URL)."""
    return ts.KvStore.open(kvstore_spec(url)).result()


def read_manifest(url: str) -> dict[str, Any] | None:
    """The manifest at ``url``, or ``None`` when there is none."""
    value = kvstore(url).read(MANIFEST).result()
    if value.state != "value":
        return None
    return json.loads(bytes(value.value).decode())


def write_manifest(url: str, manifest: dict[str, Any]) -> None:
    """Writes ``manifest.json`` in one put (atomic per key on every TensorStore kvstore driver)."""
    kvstore(url).write(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode()).result()


def manifest_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two manifests, ignoring progress keys."""
    keys = (set(old) | set(new)) - set(_PROGRESS_KEYS)
    return sorted(k for k in keys if old.get(k) != new.get(k))
