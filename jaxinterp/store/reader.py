"""Opening a store for reading, with the manifest validated against the arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorstore as ts

from jaxinterp.store.manifest import read_manifest
from jaxinterp.store.spec import SIDE_ARRAYS, Layout, array_kvstore, array_shapes, kvstore_location

__all__ = ["Store", "open_store", "StoreError"]


class StoreError(ValueError):
    """A store is missing, incomplete, or does not match its manifest."""


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
        suffix = f"/{shard}/0" if self.arrays[name].ndim == 2 else f"/{shard}"
        return kvstore_location(array_kvstore(self.url, name)) + "c" + suffix

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
    """Opens a complete store and checks each array's shape and dtype against the manifest."""
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
    return Store(url, manifest, arrays)
