"""``manifest.json``: what a store holds and how it was made (SAELens key names where they exist)."""

from __future__ import annotations

import json
from typing import Any

import tensorstore as ts

from jaxinterp.store.spec import kvstore_location, kvstore_spec

__all__ = ["MANIFEST", "WRITER_VERSION", "CorruptManifestError", "StoreError", "read_manifest", "write_manifest",
           "manifest_differences", "manifest_location", "kvstore", "MODEL_KEYS", "hook_model"]

MANIFEST = "manifest.json"
WRITER_VERSION = 1
# Keys that change while a store is written; everything else pins what the store *is*.
_PROGRESS_KEYS = ("complete",)
# Keys the reader and writer build the arrays from: positive integers, plus the hook list and dtype.
_REQUIRED_INTS = ("d_in", "n_tokens", "context_size", "rows_per_chunk", "rows_per_shard")


class StoreError(ValueError):
    """A store is missing, incomplete, or does not match its manifest."""


class CorruptManifestError(StoreError):
    """``manifest.json`` exists but is not a readable manifest (truncated, garbled, keys missing)."""


def manifest_location(url: str) -> str:
    """Where ``manifest.json`` of the store at ``url`` is, as the user would write it."""
    return kvstore_location(kvstore_spec(url)) + MANIFEST


def kvstore(url: str) -> ts.KvStore:
    """The store's root as a TensorStore key-value store (local path or URL)."""
    return ts.KvStore.open(kvstore_spec(url)).result()


def read_manifest(url: str) -> dict[str, Any] | None:
    """The manifest at ``url``, or ``None`` when there is none.

    Raises:
      CorruptManifestError: the file is not UTF-8 JSON, not an object, or lacks a key the arrays need.
    """
    value = kvstore(url).read(MANIFEST).result()
    if value.state != "value":
        return None
    try:
        manifest = json.loads(bytes(value.value).decode("utf-8"))
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise _corrupt(url, f"not valid JSON: {error}") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise _corrupt(url, problem)
    return manifest


def _manifest_problem(manifest: Any) -> str | None:
    """What makes a parsed manifest unusable, or ``None``."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    for key in _REQUIRED_INTS:
        value = manifest.get(key)
        if type(value) is not int or value < 1:  # bool is an int subclass; a flag is no size
            return f"key '{key}' is {'missing' if key not in manifest else repr(value)}, not a positive integer"
    hooks = manifest.get("hook_names")
    if not isinstance(hooks, list) or not hooks or not all(isinstance(h, str) for h in hooks):
        found = "missing" if "hook_names" not in manifest else repr(hooks)
        return f"key 'hook_names' is {found}, not a list of hook names"
    if not isinstance(manifest.get("dtype"), str):
        return "key 'dtype' is missing or not a string"
    return None


def _corrupt(url: str, problem: str) -> CorruptManifestError:
    return CorruptManifestError(
        f"store manifest {manifest_location(url)} is corrupt ({problem}); restore it, or rerun the same "
        "`jaxinterp extract` command with --config.overwrite=true to rebuild the store"
    )


def write_manifest(url: str, manifest: dict[str, Any]) -> None:
    """Writes ``manifest.json`` in one put (atomic per key on every TensorStore kvstore driver)."""
    kvstore(url).write(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode()).result()


def manifest_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two manifests, ignoring progress keys."""
    keys = (set(old) | set(new)) - set(_PROGRESS_KEYS)
    return sorted(k for k in keys if old.get(k) != new.get(k))


# The per-model keys of a store of several models (manifest "models"), as the primary model's top-level keys.
MODEL_KEYS = ("model", "model_name", "model_hash", "model_class")


def hook_model(manifest: dict[str, Any], hook: str) -> tuple[dict[str, Any], str]:
    """``(the model's manifest keys, the hook's name in that model)`` of stored hook ``hook``.

    A store of one model: its own keys and ``hook``. A store of several (``models``, each with its
    ``hook_prefix``, the first ``''``): the model whose prefix ``hook`` carries, e.g. ``m1/blocks.3.hook_resid_post``
    → the second model and ``blocks.3.hook_resid_post``.
    """
    models = manifest.get("models") or []
    for entry in sorted(models, key=lambda m: -len(m["hook_prefix"])):  # longest prefix first ('' matches all)
        if hook.startswith(entry["hook_prefix"]):
            return {key: entry.get(key) for key in MODEL_KEYS}, hook[len(entry["hook_prefix"]):]
    return {key: manifest.get(key) for key in MODEL_KEYS}, hook
