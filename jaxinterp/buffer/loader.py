"""Shuffled activation batches from a store, as global ``jax.Array``s sharded over 'data'.

Two-level shuffle (design.md §4): a seeded per-epoch permutation of inner chunks, read
``mixing_chunks`` at a time (one ``ts.Batch``), then a seeded permutation of the rows of that
group. The batch sequence is a pure function of ``(seed, step)``, so a resumed run replays it
exactly. A held-out set of chunks, fixed by the seed, is never used for training.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import NamedTuple

import jax
import numpy as np
import tensorstore as ts

from jaxinterp.config import ConfigError
from jaxinterp.store import Store, StoreError

__all__ = ["ChunkSplit", "split_chunks", "ActivationBuffer"]


class ChunkSplit(NamedTuple):
    """Inner-chunk indices used for training and for evaluation."""

    train: np.ndarray
    holdout: np.ndarray


def split_chunks(n_chunks: int, holdout_fraction: float, seed: int) -> ChunkSplit:
    """Seeded split of chunk indices; at least one chunk is held out when the fraction is > 0."""
    order = np.random.default_rng([seed, 0x401D]).permutation(n_chunks)
    n_holdout = min(n_chunks - 1, max(1 if holdout_fraction > 0 else 0, round(n_chunks * holdout_fraction)))
    return ChunkSplit(np.sort(order[n_holdout:]), np.sort(order[:n_holdout]))


class ActivationBuffer:
    """Batches of one hook's activations, shuffled, prefetched in a background thread.

    Args:
      store: an opened store.
      hook: the hook array to read.
      batch_size: global tokens per batch.
      seed: shuffling and split seed.
      holdout_fraction: fraction of chunks held out.
      mixing_chunks: chunks read and shuffled together.
      exclude_bos: drop BOS tokens (position 0 of a context that starts with BOS).
      sharding: a ``NamedSharding`` for batches; ``None`` yields numpy arrays.
    """

    def __init__(self, store: Store, hook: str, batch_size: int, seed: int, holdout_fraction: float,
                 mixing_chunks: int, exclude_bos: bool, sharding: jax.sharding.NamedSharding | None = None,
                 prefetch: int = 4):
        self.store, self.hook, self.batch_size, self.seed = store, hook, batch_size, seed
        self.array = store.array(hook)
        self.rows_per_chunk = store.layout.rows_per_chunk
        n_chunks = -(-store.n_tokens // self.rows_per_chunk)
        self.split = split_chunks(n_chunks, holdout_fraction, seed)
        self.mixing_chunks, self.sharding, self.prefetch = mixing_chunks, sharding, prefetch
        self.drop_bos = exclude_bos and bool(store.manifest.get("prepend_bos"))
        if self.sharding is not None and batch_size % self.sharding.mesh.shape["data"]:
            raise ConfigError(f"config field 'batch_size' ({batch_size}) must divide over {self.sharding.mesh.shape['data']} data replicas")

    def _read_chunks(self, chunks: np.ndarray) -> np.ndarray:
        """Reads whole inner chunks at once and drops excluded tokens."""
        spans = [(c * self.rows_per_chunk, min((c + 1) * self.rows_per_chunk, self.store.n_tokens)) for c in chunks]
        pos_array = self.store.array("pos")
        with ts.Batch() as batch:
            futures = [(self.array[a:b].read(batch=batch), pos_array[a:b].read(batch=batch)) for a, b in spans]
        parts = []
        for (a, _), (rows_future, pos_future) in zip(spans, futures):
            try:
                rows, pos = rows_future.result(), pos_future.result()
            except ValueError as error:
                raise StoreError(f"cannot read chunk at row {a} of '{self.hook}' ({self.store.shard_file(self.hook, a)}): {error}") from error
            parts.append(rows[pos != 0] if self.drop_bos else rows)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _numpy_batches(self) -> Iterator[np.ndarray]:
        carry = np.zeros((0, self.array.shape[1]), np.float32)
        epoch = 0
        while True:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.split.train)
            for group_index, first in enumerate(range(0, len(order), self.mixing_chunks)):
                rows = self._read_chunks(order[first: first + self.mixing_chunks])
                rows = rows[np.random.default_rng([self.seed, epoch, group_index]).permutation(len(rows))]
                carry = np.concatenate([carry, rows])
                n_full = len(carry) // self.batch_size
                for i in range(n_full):
                    yield carry[i * self.batch_size: (i + 1) * self.batch_size]
                carry = carry[n_full * self.batch_size:]
            epoch += 1

    def first_batch(self) -> np.ndarray:
        """The first training batch as numpy, for data-dependent initialisation."""
        return next(self._numpy_batches())

    def batches(self, start_step: int = 0) -> Iterator[jax.Array | np.ndarray]:
        """Infinite batch iterator starting at batch ``start_step`` (replayed, so resume is exact)."""
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce():
            try:
                for index, batch in enumerate(self._numpy_batches()):
                    if index >= start_step and not _put(batch):
                        return
            except BaseException as error:  # surfaced in the consumer
                _put(error)

        def _put(item) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        thread = threading.Thread(target=produce, daemon=True, name="jaxinterp-buffer")
        thread.start()
        try:
            while True:
                item = out.get()
                if isinstance(item, BaseException):
                    raise item
                yield self._to_device(item)
        finally:
            stop.set()

    def _to_device(self, batch: np.ndarray):
        if self.sharding is None:
            return batch
        return jax.make_array_from_process_local_data(self.sharding, batch)

    def _rows_of(self, chunks: np.ndarray, max_tokens: int) -> np.ndarray:
        rows, total = [], 0
        for first in range(0, len(chunks), self.mixing_chunks):
            rows.append(self._read_chunks(chunks[first: first + self.mixing_chunks]))
            total += len(rows[-1])
            if total >= max_tokens:
                break
        return np.concatenate(rows)[:max_tokens]

    def holdout(self, max_tokens: int) -> np.ndarray:
        """Up to ``max_tokens`` held-out rows, in store order."""
        if not len(self.split.holdout):
            raise ConfigError("no holdout chunks: set config field 'holdout_fraction' > 0")
        return self._rows_of(self.split.holdout, max_tokens)

    def first_rows(self, max_tokens: int) -> np.ndarray:
        """Up to ``max_tokens`` rows from the start of the store (all chunks, training ones too)."""
        n_chunks = len(self.split.train) + len(self.split.holdout)
        return self._rows_of(np.arange(n_chunks), max_tokens)
