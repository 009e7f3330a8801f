"""Writing a store: one writer per shard, whole-shard writes, a done-marker after each commit.

A shard without its marker (a killed writer) is rewritten on resume, never trusted; so is a marked
shard whose file is missing in any array (a lost file), on resume or on a store already complete.
Pointing a new extraction at an existing store with a different manifest is an error unless ``overwrite``.
With several processes, process ``p`` of ``n`` owns shards ``s`` with ``s % n == p``; process 0
creates the store and, once every shard is marked and its files present, marks the manifest complete.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import tensorstore as ts

from jaxinterp.store.manifest import (CorruptManifestError, kvstore, manifest_differences, read_manifest,
                                      write_manifest)
from jaxinterp.store.shards import done_marker, done_shards, shards_missing_files
from jaxinterp.store.spec import Layout, array_shapes, array_spec

__all__ = ["StoreExistsError", "StoreWriter"]

_POLL_SECONDS = 0.2


class StoreExistsError(FileExistsError):
    """An existing store at the target was made with a different configuration."""


class StoreWriter:
    """Creates (or resumes) a store and commits shards, each in the background.

    Args:
      url: store root (local path or kvstore URL).
      manifest: full manifest; must include ``hook_names``, ``d_in``, ``dtype``, ``n_tokens``,
        ``rows_per_chunk`` and ``rows_per_shard``.
      overwrite: replace an existing jaxinterp store whose manifest differs.
      process_index, process_count: this writer's share of the shards.
      timeout: seconds to wait for another process (store creation, completion) before failing.
    """

    def __init__(self, url: str, manifest: Mapping[str, Any], overwrite: bool = False,
                 process_index: int = 0, process_count: int = 1, timeout: float = 600.0):
        self.url = url
        self.manifest = dict(manifest, complete=False)
        self.layout = Layout(manifest["rows_per_chunk"], manifest["rows_per_shard"])
        self.n_tokens = int(manifest["n_tokens"])
        self.n_shards = -(-self.n_tokens // self.layout.rows_per_shard)
        self.process_index, self.process_count, self.timeout = process_index, process_count, timeout
        self._kv = kvstore(url)
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxinterp-store-writer")
        self._commits: list[Future] = []
        create = self._prepare(overwrite) if process_index == 0 else self._await_creation()
        if create:  # manifest first: a killed creator leaves a store that a rerun recognises
            write_manifest(url, self.manifest)
        self.arrays = {name: self._open(name, shape, dtype, create)
                       for name, (shape, dtype) in array_shapes(self.manifest).items()}
        if not create:
            self._unmark_lost_shards()

    def _prepare(self, overwrite: bool) -> bool:
        """Checks what is at ``url``; returns whether the arrays must be created."""
        try:
            existing = read_manifest(self.url)
        except CorruptManifestError:
            if not overwrite:
                raise
            if self._kv.read("tokens/zarr.json").result().state != "value":  # a side array: ours, not a foreign dir
                raise StoreExistsError(
                    f"{self.url} has an unreadable manifest.json and no store arrays; it is not a jaxinterp store, "
                    "so --config.overwrite=true leaves it alone: choose another --config.out"
                ) from None
            self._kv.delete_range(ts.KvStore.KeyRange()).result()
            return True
        if existing is not None:
            differing = manifest_differences(existing, self.manifest)
            if not differing:
                return False
            if not overwrite:
                raise StoreExistsError(
                    f"a different store already exists at {self.url} (manifest differs in: {', '.join(differing)}); "
                    "choose another --config.out or pass --config.overwrite=true to replace it"
                )
            self._kv.delete_range(ts.KvStore.KeyRange()).result()
        elif self._kv.list().result():
            raise StoreExistsError(f"{self.url} exists and is not an empty directory or a jaxinterp store")
        return True

    def _await_creation(self) -> bool:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                existing = read_manifest(self.url)
            except CorruptManifestError:  # process 0 may be about to replace it (overwrite)
                existing = None
            if existing is not None and not manifest_differences(existing, self.manifest):
                return False
            time.sleep(_POLL_SECONDS)
        raise TimeoutError(
            f"process {self.process_index}: process 0 did not create the store at {self.url} within "
            f"{self.timeout:.0f} s (is it running with the same config?)"
        )

    def _open(self, name: str, shape: tuple[int, ...], dtype: str, create: bool) -> ts.TensorStore:
        spec = array_spec(self.url, name, shape, dtype, self.layout)
        if create:
            return ts.open(spec, create=True, delete_existing=True).result()
        if self.process_index == 0:  # resuming: a creator killed before this array existed left none
            return ts.open(spec, create=True, open=True).result()
        deadline = time.monotonic() + self.timeout
        while True:  # another process may still be creating the arrays
            try:
                return ts.open(spec, open=True).result()
            except ValueError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(_POLL_SECONDS)

    def shard_rows(self, shard: int) -> tuple[int, int]:
        """``[start, stop)`` token rows of ``shard``."""
        start = shard * self.layout.rows_per_shard
        return start, min(start + self.layout.rows_per_shard, self.n_tokens)

    def _done(self) -> set[int]:
        return done_shards(self._kv)

    def _owned(self, shard: int) -> bool:
        return shard % self.process_count == self.process_index

    def _lost_shards(self) -> set[int]:
        """Shards with a done-marker whose file is missing in some array."""
        done = self._done()  # markers before files: a marker listed here was written after its data
        return done & {shard for shards in shards_missing_files(self.url, self.manifest).values() for shard in shards}

    def _unmark_lost_shards(self) -> None:
        """Drops this process's markers of lost shards so they are pending again (and the store not complete).

        Each process drops only its own: another's shard may be mid-rewrite, its new marker not to be lost.
        """
        lost = self._lost_shards()
        if lost and self.process_index == 0:  # no reader may take the store as complete while shards are lost
            write_manifest(self.url, self.manifest)
        for shard in sorted(s for s in lost if self._owned(s)):
            self._kv.write(done_marker(shard), None).result()  # writing None deletes the key

    def pending_shards(self) -> list[int]:
        """This process's shards without a done-marker, in order."""
        done = self._done()
        return [s for s in range(self.process_index, self.n_shards, self.process_count) if s not in done]

    def write_shard(self, shard: int, data: Mapping[str, np.ndarray]) -> Future:
        """Starts writing every array's rows of ``shard``; the returned future resolves once the data
        is committed and the done-marker written. Rows are checked before anything is written."""
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

        def commit() -> int:
            for future in futures:
                future.result()
            self._kv.write(done_marker(shard), b"").result()
            return shard

        future = self._background.submit(commit)
        self._commits.append(future)
        return future

    def _unfinished(self) -> list[int]:
        """Shards (all processes') without a marker or, once all are marked, with a file missing."""
        missing = sorted(set(range(self.n_shards)) - self._done())
        return missing or sorted(self._lost_shards())  # files listed only once every marker is there

    def finish(self) -> dict[str, Any]:
        """Waits until every shard (all processes') is done; process 0 then marks the store complete.

        Returns the final manifest.
        """
        self._background.shutdown(wait=True)
        for commit in self._commits:
            commit.result()  # a failed background write surfaces here, not as a missing shard
        deadline = time.monotonic() + self.timeout
        while unfinished := self._unfinished():
            if self.process_count == 1:
                raise RuntimeError(f"cannot finish store {self.url}: shards {unfinished[:5]} are not written")
            if time.monotonic() > deadline:
                raise TimeoutError(f"store {self.url}: other processes did not finish shards {unfinished[:5]} within "
                                   f"{self.timeout:.0f} s (are they running with the same config?)")
            time.sleep(_POLL_SECONDS)
        self.manifest["complete"] = True
        if self.process_index == 0:
            write_manifest(self.url, self.manifest)
        else:
            while not (read_manifest(self.url) or {}).get("complete"):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"store {self.url}: process 0 did not mark the store complete within {self.timeout:.0f} s")
                time.sleep(_POLL_SECONDS)
        return self.manifest
