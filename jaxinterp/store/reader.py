"""Opening a store for reading, with the manifest validated against the arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorstore as ts

from jaxinterp.store.manifest import StoreError, kvstore, manifest_location, read_manifest
from jaxinterp.store.shards import done_marker, done_shards, shard_count, shard_key, shards_missing_files
from jaxinterp.store.spec import (SIDE_ARRAYS, Layout, array_kvstore, array_shapes, kvstore_location,
                                  kvstore_spec)

__all__ = ["Store", "open_store", "StoreError"]

_NAMED_FILES = 3  # missing files named in an error; the rest are counted


class Store:
    """A finished activation store: ``manifest`` plus one TensorStore array per hook and side array."""

    def __init__(self, url: str, manifest: dict[str, Any], arrays: dict[str, ts.TensorStore]):
        self.url = url
        self.manifest = manifest
        self.arrays = arrays
        self.layout = Layout(manifest["rows_per_chunk"], manifest["rows_per_shard"])

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_tokens"])

    @property
    def hook_names(self) -> list[str]:
        return list(self.manifest["hook_names"])

    def array(self, name: str) -> ts.TensorStore:
        """The array for a hook or side array; an unknown name lists the ones the store has."""
        if name not in self.arrays:
            raise StoreError(
                f"store {self.url} has no array '{name}'; it holds hooks {', '.join(self.hook_names)} "
                f"and side arrays {', '.join(SIDE_ARRAYS)}"
            )
        return self.arrays[name]

    def shard_file(self, name: str, row: int) -> str:
        """The file (or object key) that holds ``row`` of array ``name``, for error messages."""
        shard = row // self.layout.rows_per_shard
        return kvstore_location(array_kvstore(self.url, name)) + shard_key(self.arrays[name].ndim, shard)

    def read_failed(self, name: str, start: int, stop: int, error: Exception) -> StoreError:
        """The error for a failed read of rows ``[start, stop)``, naming the shard file."""
        return StoreError(f"cannot read rows {start}:{stop} of '{name}' from {self.shard_file(name, start)}: {error}")

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of one array; a corrupted shard names its file."""
        try:
            return self.array(name)[start:stop].read().result()
        except ValueError as error:
            raise self.read_failed(name, start, stop, error) from error


def open_store(url: str) -> Store:
    """Opens a complete store and checks it against its manifest before anything is read.

    Checked: each array's shape and dtype; every shard file of every array and every done-marker
    (one key listing per array); ``context_size`` against ``n_tokens`` and two ``pos`` values.
    """
    manifest = read_manifest(url)
    if manifest is None:
        raise StoreError(f"no activation store at {url} (no manifest.json); run `jaxinterp extract` first")
    if not manifest.get("complete"):
        raise StoreError(f"store {url} is incomplete; rerun the same `jaxinterp extract` command to finish it")
    arrays = {}
    for name, (shape, dtype) in array_shapes(manifest).items():
        try:
            array = ts.open({"driver": "zarr3", "kvstore": array_kvstore(url, name)}, open=True).result()
        except ValueError as error:
            raise StoreError(f"store {url}: array '{name}' listed in the manifest cannot be opened: {error}") from error
        if tuple(array.shape) != shape or str(array.dtype.name) != dtype:
            raise StoreError(
                f"store {url}: array '{name}' is {tuple(array.shape)} {array.dtype.name}, manifest says {shape} {dtype}"
            )
        arrays[name] = array
    _check_shards_present(url, manifest, arrays)
    store = Store(url, manifest, arrays)
    _check_context_size(store)
    return store


def _check_shards_present(url: str, manifest: dict[str, Any], arrays: dict[str, ts.TensorStore]) -> None:
    """Every shard the manifest promises has its file in every array and its done-marker."""
    done = done_shards(kvstore(url))
    absent = [kvstore_location(array_kvstore(url, name)) + shard_key(arrays[name].ndim, shard)
              for name, shards in shards_missing_files(url, manifest).items() for shard in shards]
    root = kvstore_location(kvstore_spec(url))
    absent += [root + done_marker(shard) for shard in range(shard_count(manifest)) if shard not in done]
    if absent:
        more = f" and {len(absent) - _NAMED_FILES} more" if len(absent) > _NAMED_FILES else ""
        raise StoreError(
            f"store {url}: {len(absent)} shard file(s) the manifest promises are missing: "
            f"{', '.join(absent[:_NAMED_FILES])}{more}; rerun the same `jaxinterp extract` command to rewrite them"
        )


def _check_context_size(store: Store) -> None:
    """``context_size`` divides the rows and matches where ``pos`` restarts (packing writes 0..context_size-1)."""
    context_size, where = int(store.manifest["context_size"]), manifest_location(store.url)
    if store.n_tokens % context_size:
        raise StoreError(f"store manifest {where}: field 'context_size' ({context_size}) does not divide the "
                         f"{store.n_tokens} rows of array 'pos'; restore the manifest's context_size")
    rows = min(context_size + 1, store.n_tokens)
    found = store.read("pos", context_size - 1, rows).tolist()
    expected = [context_size - 1, 0][: rows - context_size + 1]
    if found != expected:
        raise StoreError(
            f"store manifest {where}: field 'context_size' ({context_size}) does not match array 'pos' "
            f"(pos[{context_size - 1}:{rows}] is {found}, expected {expected}); restore the manifest's context_size"
        )
