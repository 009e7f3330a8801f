"""Writing a store: one writer per shard, whole-shard writes, a done-marker after each commit.

A shard without its marker (a killed writer) is rewritten on resume, never trusted. Pointing a
new extraction at an existing store with a different manifest is an error, never an overwrite.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorstore as ts

from jaxinterp.store.manifest import kvstore, manifest_differences, read_manifest, write_manifest
from jaxinterp.store.spec import Layout, array_spec

__all__ = ["StoreExistsError", "StoreWriter", "SIDE_ARRAYS"]

# Per-token side arrays written beside every hook: name -> zarr dtype.
SIDE_ARRAYS = {"tokens": "int32", "doc": "int64", "pos": "int32"}
_DONE_PREFIX = "_progress/shard_"


class StoreExistsError(FileExistsError):
    """An existing store at the target was made with a different configuration."""


class StoreWriter:
    """Creates (or resumes) a store and commits shards.

    Args:
      url: store root (local path or kvstore URL).
      manifest: full manifest; must include ``hook_names``, ``d_in``, ``dtype``, ``n_tokens``,
        ``rows_per_chunk`` and ``rows_per_shard``.
    """

    def __init__(self, url: str, manifest: Mapping[str, Any]):
        self.url = url
        self.manifest = dict(manifest, complete=False)
        self.layout = Layout(manifest["rows_per_chunk"], manifest["rows_per_shard"])
        self.n_tokens = int(manifest["n_tokens"])
        self.n_shards = -(-self.n_tokens // self.layout.rows_per_shard)
        self._kv = kvstore(url)
        existing = read_manifest(url)
        if existing is not None:
            differing = manifest_differences(existing, self.manifest)
            if differing:
                raise StoreExistsError(
                    f"a different store already exists at {url} (manifest differs in: {', '.join(differing)}); "
                    "choose another --config.out or delete it yourself"
                )
            create = False
        else:
            if self._kv.list().result():
                raise StoreExistsError(f"{url} exists and is not an empty directory or a jaxinterp store")
            write_manifest(url, self.manifest)
            create = True
        self.arrays = {}
        for name in manifest["hook_names"]:
            self.arrays[name] = self._open(name, (self.n_tokens, manifest["d_in"]), manifest["dtype"], create)
        for name, dtype in SIDE_ARRAYS.items():
            self.arrays[name] = self._open(name, (self.n_tokens,), dtype, create)

    def _open(self, name: str, shape: tuple[int, ...], dtype: str, create: bool) -> ts.TensorStore:
        spec = array_spec(self.url, name, shape, dtype, self.layout)
        return ts.open(spec, create=create, open=not create).result()

    def shard_rows(self, shard: int) -> tuple[int, int]:
        """``[start, stop)`` token rows of ``shard``."""
        start = shard * self.layout.rows_per_shard
        return start, min(start + self.layout.rows_per_shard, self.n_tokens)

    def pending_shards(self) -> list[int]:
        """Shards without a done-marker, in order."""
        done = {bytes(k).decode() for k in self._kv.list(ts.KvStore.KeyRange(_DONE_PREFIX, _DONE_PREFIX + "~")).result()}
        return [s for s in range(self.n_shards) if f"{_DONE_PREFIX}{s:06d}" not in done]

    def write_shard(self, shard: int, data: Mapping[str, np.ndarray]) -> None:
        """Writes every array's rows of ``shard``, waits for the commit, then marks it done."""
        start, stop = self.shard_rows(shard)
        missing = set(self.arrays) - set(data)
        if missing:
            raise ValueError(f"shard {shard} is missing arrays: {sorted(missing)}")
        futures = []
        for name, array in self.arrays.items():
            values = np.asarray(data[name])
            if values.shape[0] != stop - start:
                raise ValueError(f"shard {shard} of '{name}' needs {stop - start} rows, got {values.shape[0]}")
            futures.append(array[start:stop].write(values.astype(array.dtype.numpy_dtype, copy=False)))
        for future in futures:
            future.result()
        self._kv.write(f"{_DONE_PREFIX}{shard:06d}", b"").result()

    def finish(self) -> dict[str, Any]:
        """Marks the store complete once every shard is done; returns the final manifest."""
        pending = self.pending_shards()
        if pending:
            raise RuntimeError(f"cannot finish store {self.url}: shards {pending[:5]}... are not written")
        self.manifest["complete"] = True
        write_manifest(self.url, self.manifest)
        return self.manifest
