"""Shuffled activation batches from a store, as global ``jax.Array``s sharded over 'data'.

Two-level shuffle (design.md §4): a seeded per-epoch permutation of inner chunks, read
``mixing_chunks`` at a time (one ``ts.Batch`` for every hook), then a seeded permutation of the
rows of that group. Epochs are concatenated into one stream and batch ``b`` is rows
``[b·B, (b+1)·B)`` of it, so the whole position is the step number: resuming at step ``s`` seeks
straight to the group holding row ``s·B`` (no replay). Several hooks are read with the same
rows, so one draw feeds SAEs on every hook, or a transcoder. A seeded set of chunks is held out.

Each batch is the concatenation of ``streams`` equal parts, part ``s`` coming from stream ``s``:
its own share ``order[s::streams]`` of every epoch's chunks, grouped and shuffled as above. A
process reads only the streams whose rows land on its devices (disjoint chunk sets), so the
sequence of global batches depends on ``streams`` alone, not on how many processes read it.

With ``massive_norms`` set (``massive_tokens`` in the train config), training rows whose norm at a
hook exceeds that hook's threshold (massive activations, Sun et al. 2024) are either shrunk
(``massive_mode="shrink"``: the row's vector at that hook is rescaled to the threshold norm, its
direction kept, in place) or removed from the stream after the shuffle (``"drop"``: the stream is
exactly the unfiltered one without those rows; kept-row counts then depend on the data, and a
resume replays the stream to its step instead of seeking). Holdout rows are never changed:
evaluation sees every token as it is.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import jax
import numpy as np
import tensorstore as ts

from jaxinterp.config import ConfigError
from jaxinterp.store import Store

__all__ = ["ActivationBuffer", "BufferState", "ChunkSplit", "NonFiniteRowsError", "split_chunks"]

Batch = dict[str, np.ndarray]
MASSIVE_MODES = ("shrink", "drop")


def shrink_rows(values: np.ndarray, max_norm: float) -> int:
    """Rescales, in place, the rows of ``values`` whose norm exceeds ``max_norm`` to that norm (their
    direction kept); returns how many. NaN rows are left alone (the non-finite check owns them)."""
    norms = np.sqrt(np.einsum("ij,ij->i", values, values))
    limit = np.float32(max_norm)
    big = np.flatnonzero(norms > limit)
    values[big] *= (limit / norms[big])[:, None]
    return len(big)


def aligned_empty(shape: tuple[int, int]) -> np.ndarray:
    """An uninitialised float32 array on a 64-byte boundary: XLA:CPU then adopts it without a copy."""
    n_bytes = shape[0] * shape[1] * 4
    raw = np.empty(n_bytes + 64, np.uint8)
    offset = -raw.ctypes.data % 64
    return raw[offset: offset + n_bytes].view(np.float32).reshape(shape)


class NonFiniteRowsError(FloatingPointError):
    """NaN/Inf activations in the store; the message names hook, rows and shard file."""


class ChunkSplit(NamedTuple):
    """Inner-chunk indices used for training and for evaluation."""

    train: np.ndarray
    holdout: np.ndarray


class BufferState(NamedTuple):
    """What a run checkpoints to resume the exact batch sequence (JSON-friendly)."""

    seed: int
    step: int
    scales: dict[str, float]  # per-hook input scale (1.0 when not normalising)
    streams: int = 1  # the batch's parts (see the module docstring)
    massive_norms: dict[str, float] | None = None  # per-hook raw-norm threshold of excluded rows; None = keep all

    def to_json(self) -> dict:
        return self._asdict()

    @classmethod
    def from_json(cls, data: dict) -> BufferState:
        massive = data.get("massive_norms")
        return cls(int(data["seed"]), int(data["step"]), {k: float(v) for k, v in data["scales"].items()},
                   int(data.get("streams", 1)), None if massive is None else {k: float(v) for k, v in massive.items()})


def split_chunks(n_chunks: int, holdout_fraction: float, seed: int) -> ChunkSplit:
    """Seeded split of chunk indices; at least one chunk is held out when the fraction is > 0."""
    order = np.random.default_rng([seed, 0x401D]).permutation(n_chunks)
    n_holdout = min(n_chunks - 1, max(1 if holdout_fraction > 0 else 0, round(n_chunks * holdout_fraction)))
    return ChunkSplit(np.sort(order[n_holdout:]), np.sort(order[:n_holdout]))


class ActivationBuffer:
    """Row-aligned batches of one or more hooks, shuffled, prefetched in a background thread.

    Args:
      store: an opened store.
      hooks: hook arrays to read together (same rows for each).
      batch_size: global tokens per batch.
      seed: shuffling and split seed.
      holdout_fraction: fraction of chunks held out.
      mixing_chunks: chunks read and shuffled together.
      exclude_bos: drop BOS tokens (``pos == 0`` when the store prepends BOS; pads are never written).
      on_nonfinite: ``"error"`` (name hook, rows and shard file) or ``"skip"`` (drop and count rows).
      scales: per-hook factors applied to every row (see :meth:`estimate_scales`); default 1.
      massive_norms: per-hook raw-norm thresholds (see :meth:`estimate_massive_norms`) of training
        rows; ``None`` keeps every row as it is.
      massive_mode: what happens to a training row above a threshold: ``"shrink"`` rescales its
        vector at that hook to the threshold norm; ``"drop"`` leaves the row out at every hook.
      sharding: a ``NamedSharding`` for batches; ``None`` yields numpy arrays.
      streams: parts each batch is made of, each read from its own share of the chunks; -1 = one
        per process. Fix it (to a multiple of every process count you may use) to get the same
        batches on 1 process and on N, and to resume onto another process count.
    """

    def __init__(self, store: Store, hooks: Sequence[str], batch_size: int, seed: int, holdout_fraction: float,
                 mixing_chunks: int, exclude_bos: bool, on_nonfinite: str = "error",
                 scales: dict[str, float] | None = None, sharding: jax.sharding.NamedSharding | None = None,
                 prefetch: int = 4, streams: int = -1, massive_norms: dict[str, float] | None = None,
                 massive_mode: str = "drop"):
        self.store, self.hooks, self.seed = store, list(hooks), seed
        self.arrays = {hook: store.array(hook) for hook in self.hooks}
        self.rows_per_chunk = store.layout.rows_per_chunk
        self.split = split_chunks(-(-store.n_tokens // self.rows_per_chunk), holdout_fraction, seed)
        self.mixing_chunks, self.sharding, self.prefetch = mixing_chunks, sharding, prefetch
        self.drop_bos = exclude_bos and bool(store.manifest.get("prepend_bos"))
        self.on_nonfinite = on_nonfinite
        self.scales = {hook: 1.0 for hook in self.hooks} | dict(scales or {})
        if massive_mode not in MASSIVE_MODES:
            raise ValueError(f"massive_mode {massive_mode!r}: expected one of {', '.join(MASSIVE_MODES)}")
        self.massive_norms, self.massive_mode = massive_norms, massive_mode
        self.skipped_rows = 0
        self.massive_rows = 0  # massive training rows left out, or shrunk (per hook); counts the read-ahead too
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        self.streams = self.process_count if streams == -1 else streams
        if self.streams % self.process_count:
            raise ConfigError(f"config field 'streams' ({self.streams}) must be a multiple of the process count "
                              f"({self.process_count})")
        if batch_size % self.streams:
            raise ConfigError(f"config field 'batch_size' ({batch_size}) must divide over {self.streams} streams")
        self.stream_batch = batch_size // self.streams  # rows each stream adds to every batch
        self.batch_size = batch_size // self.process_count  # rows this process contributes
        per_process = self.streams // self.process_count
        self.local_streams = range(self.process_index * per_process, (self.process_index + 1) * per_process)
        if sharding is not None and batch_size % sharding.mesh.shape["data"]:
            raise ConfigError(f"config field 'batch_size' ({batch_size}) must divide over {sharding.mesh.shape['data']} data replicas")

    # -- reading ---------------------------------------------------------------------------------

    def _span(self, chunk: int) -> tuple[int, int]:
        return chunk * self.rows_per_chunk, min((chunk + 1) * self.rows_per_chunk, self.store.n_tokens)

    def _kept_rows(self, chunk: int) -> int:
        """Rows of ``chunk`` that survive the BOS filter, computed from the layout alone."""
        start, stop = self._span(chunk)
        if not self.drop_bos:
            return stop - start
        context = int(self.store.manifest["context_size"])
        return (stop - start) - (-(-stop // context) - (-(-start // context)))

    def _start_read(self, chunks: Sequence[int]) -> list[tuple[tuple[int, int], dict[str, ts.Future]]]:
        """Issues one ``ts.Batch`` read of whole inner chunks for ``pos`` and every hook."""
        spans = [self._span(c) for c in chunks]
        with ts.Batch() as batch:
            return [((a, b), {name: self.store.array(name)[a:b].read(batch=batch) for name in ["pos", *self.hooks]})
                    for a, b in spans]

    def _finish_read(self, pending: list[tuple[tuple[int, int], dict[str, ts.Future]]], scaled: bool = True,
                     order_seed: Sequence[int] | None = None, apply_massive: bool = True) -> Batch:
        """Waits for a read; drops excluded and bad rows, shuffles the survivors with ``order_seed``
        (if given) and scales. Each chunk's kept rows are scattered straight to their shuffled
        places in one aligned array per hook (one pass over the data). Massive rows (when
        ``massive_norms`` is set and ``apply_massive``) are removed after the shuffle, or shrunk
        (``massive_mode="shrink"``)."""
        chunks, keep, massive = [], [], []
        for (start, stop), futures in pending:
            rows = {}
            for name, future in futures.items():
                try:
                    rows[name] = future.result()
                except ValueError as error:
                    raise self.store.read_failed(name, start, stop, error) from error
            kept = rows["pos"] != 0 if self.drop_bos else np.ones(len(rows["pos"]), bool)
            keep.append(kept & self._finite_rows(rows, start))
            if apply_massive and self.massive_norms is not None and self.massive_mode == "drop":
                massive.append(self._massive_rows(rows))
            chunks.append(rows)
        keep = np.concatenate(keep)
        n_kept = int(keep.sum())
        order = np.arange(n_kept)
        if order_seed is not None:  # kept row i goes to place[i]: the inverse of the drawn permutation
            order[np.random.default_rng(order_seed).permutation(n_kept)] = np.arange(n_kept)
        if massive:  # close the gaps massive rows leave in the shuffled order; they go past the end
            massive = np.concatenate(massive)[keep]
            at_place = np.zeros(n_kept, bool)
            at_place[order[massive]] = True
            order = order - np.cumsum(at_place)[order]
            order[massive] = n_kept - 1 - np.arange(int(massive.sum()))
            self.massive_rows += int(massive.sum())
            n_kept -= int(massive.sum())
        place = np.empty(len(keep), np.int64)  # dropped rows land past n_kept, then are sliced off
        place[keep], place[~keep] = order, np.arange(len(order), len(keep))
        out = {}
        for hook in self.hooks:
            values = aligned_empty((len(keep), self.arrays[hook].shape[1]))
            first = 0
            for rows in chunks:
                values[place[first: first + len(rows[hook])]] = rows[hook]
                first += len(rows[hook])
            values = values[:n_kept]
            if apply_massive and self.massive_norms is not None and self.massive_mode == "shrink":
                self.massive_rows += shrink_rows(values, self.massive_norms[hook])
            scale = self.scales[hook] if scaled else 1.0
            out[hook] = values if scale == 1.0 else np.multiply(values, np.float32(scale), out=values)
        return out

    def _massive_rows(self, rows: Batch) -> np.ndarray:
        """Rows whose norm exceeds their hook's threshold at any hook (NaN rows are not massive)."""
        massive = np.zeros(len(rows["pos"]), bool)
        for hook in self.hooks:
            values = rows[hook].astype(np.float32, copy=False)
            massive |= np.einsum("ij,ij->i", values, values) > np.float32(self.massive_norms[hook]) ** 2
        return massive

    def _finite_rows(self, rows: Batch, start: int) -> np.ndarray:
        finite = np.ones(len(rows["pos"]), bool)
        for hook in self.hooks:
            # A row sum is non-finite whenever an entry is (cheap); only those rows get the exact check.
            values = rows[hook]
            sums = values @ np.ones(values.shape[1], values.dtype) if values.dtype == np.float32 else values.sum(1, np.float32)
            suspect = np.flatnonzero(~np.isfinite(sums))
            hook_finite = np.ones(len(rows["pos"]), bool)
            hook_finite[suspect] = np.isfinite(rows[hook][suspect].astype(np.float32)).all(axis=1)
            if not hook_finite.all() and self.on_nonfinite == "error":
                bad = np.flatnonzero(~hook_finite) + start
                raise NonFiniteRowsError(
                    f"non-finite activations in '{hook}' at rows {bad[0]}..{bad[-1]} ({len(bad)} rows) of "
                    f"{self.store.shard_file(hook, start)}; set --config.on_nonfinite=skip to drop them"
                )
            finite &= hook_finite
        self.skipped_rows += int((~finite).sum())
        return finite

    def position(self, step: int) -> BufferState:
        """What a checkpoint at ``step`` saves to resume this exact batch sequence."""
        return BufferState(self.seed, step, dict(self.scales), self.streams, self.massive_norms)

    # -- the stream --------------------------------------------------------------------------------

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s seeded order of the training chunks (every stream's and process's)."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.split.train)

    def _epoch_groups(self, epoch: int, stream: int) -> list[np.ndarray]:
        mine = self._epoch_order(epoch)[stream:: self.streams]  # disjoint share per stream
        return [mine[i: i + self.mixing_chunks] for i in range(0, len(mine), self.mixing_chunks)]

    def epoch_rows(self, stream: int | None = None) -> int:
        """Training rows ``stream`` (default: all of this process's streams) reads per epoch."""
        streams = self.local_streams if stream is None else [stream]
        return sum(self._kept_rows(c) for s in streams for group in self._epoch_groups(0, s) for c in group)

    def _check_stream_rows(self, stream: int) -> int:
        """``stream``'s training rows per epoch (before any data-dependent filter); refuses fewer than a batch."""
        epoch_rows = self.epoch_rows(stream)
        if epoch_rows < self.stream_batch:
            raise ConfigError(f"config field 'batch_size': stream {stream} of {self.streams} holds only {epoch_rows} "
                              f"training rows per epoch, fewer than its {self.stream_batch} rows of a batch")
        return epoch_rows

    def _seek(self, step: int, stream: int) -> tuple[int, int, int]:
        """(epoch, group, row offset in that group) of ``stream``'s first row of batch ``step``."""
        epoch_rows = self._check_stream_rows(stream)
        epoch, position = divmod(step * self.stream_batch, epoch_rows)
        sizes = [sum(self._kept_rows(c) for c in group) for group in self._epoch_groups(epoch, stream)]
        group = int(np.searchsorted(np.cumsum(sizes), position, side="right"))
        return epoch, group, position - int(np.sum(sizes[:group]))

    def _groups_from(self, epoch0: int, group0: int, stream: int) -> Iterator[tuple[int, int, Batch]]:
        """Shuffled rows of each group from (epoch0, group0) on; the next group's read is in flight
        while the current one is filtered and shuffled."""
        def schedule():
            for epoch in itertools.count(epoch0):
                for index, chunks in enumerate(self._epoch_groups(epoch, stream)):
                    if epoch > epoch0 or index >= group0:
                        yield epoch, index, chunks

        upcoming = schedule()
        epoch, index, chunks = next(upcoming)
        pending = self._start_read(chunks)
        for next_epoch, next_index, next_chunks in upcoming:
            next_pending = self._start_read(next_chunks)
            yield epoch, index, self._finish_read(pending, order_seed=[self.seed, epoch, stream, index])
            epoch, index, pending = next_epoch, next_index, next_pending

    def _stream(self, stream: int, epoch0: int, group0: int, offset: int) -> Iterator[Batch]:
        carry: Batch = {hook: np.zeros((0, self.arrays[hook].shape[1]), np.float32) for hook in self.hooks}
        size = self.stream_batch
        for epoch, index, rows in self._groups_from(epoch0, group0, stream):
            if (epoch, index) == (epoch0, group0):
                rows = {hook: values[offset:] for hook, values in rows.items()}
            available = len(rows[self.hooks[0]])
            first = size - len(carry[self.hooks[0]])  # rows of this group that complete the carried batch
            if available < first:
                carry = {hook: np.concatenate([carry[hook], rows[hook]]) for hook in self.hooks}
                continue
            yield {hook: np.concatenate([carry[hook], rows[hook][:first]], out=aligned_empty((size, rows[hook].shape[1])))
                   for hook in self.hooks}
            n_full = (available - first) // size
            for i in range(n_full):  # views into the group's rows: no further copies
                yield {hook: rows[hook][first + i * size: first + (i + 1) * size] for hook in self.hooks}
            carry = {hook: rows[hook][first + n_full * size:] for hook in self.hooks}

    def _stream_from(self, stream: int, start_step: int) -> Iterator[Batch]:
        if self.on_nonfinite == "skip" or (self.massive_norms is not None and self.massive_mode == "drop"):
            # data-dependent counts: replay
            self._check_stream_rows(stream)  # a stream without rows would otherwise wait forever
            return itertools.islice(self._stream(stream, 0, 0, 0), start_step, None)
        return self._stream(stream, *self._seek(start_step, stream))

    def _numpy_batches(self, start_step: int = 0, streams: Sequence[int] | None = None) -> Iterator[Batch]:
        """This process's rows of each batch (its streams' parts, concatenated) from ``start_step``."""
        parts = [self._stream_from(stream, start_step) for stream in (self.local_streams if streams is None else streams)]
        if len(parts) == 1:
            return parts[0]
        return ({hook: np.concatenate([part[hook] for part in batch],
                                      out=aligned_empty((sum(len(part[hook]) for part in batch), batch[0][hook].shape[1])))
                 for hook in self.hooks} for batch in zip(*parts))

    def first_batch(self) -> Batch:
        """The first global training batch as numpy (the same on every process), for data-dependent init."""
        return next(self._numpy_batches(streams=range(self.streams)))

    def batches(self, start_step: int = 0) -> Iterator[Batch]:
        """Infinite iterator of ``{hook: batch}`` starting at batch ``start_step``."""
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce():
            try:
                for batch in self._numpy_batches(start_step):
                    if not put(batch):
                        return
            except BaseException as error:  # surfaced in the consumer
                put(error)

        producer = threading.Thread(target=produce, daemon=True, name="jaxinterp-buffer")
        producer.start()
        try:
            while True:
                item = out.get()
                if isinstance(item, BaseException):
                    raise item
                yield {hook: self._to_device(values) for hook, values in item.items()}
        finally:
            stop.set()
            producer.join(timeout=30)  # let an in-flight TensorStore read finish before teardown

    def _to_device(self, batch: np.ndarray):
        if self.sharding is None:
            return batch
        return jax.make_array_from_process_local_data(self.sharding, batch)

    # -- normalisation and evaluation rows --------------------------------------------------------

    def estimate_scales(self, n_tokens: int) -> dict[str, float]:
        """Per-hook ``√d / mean‖x‖`` over training rows, so inputs have mean norm √d (Conerly et al.
        2024); over the rows as training sees them (massive rows shrunk or left out, when
        :attr:`massive_norms` is set)."""
        # The same rows on every process, whatever the streams: the first chunks of epoch 0's order.
        rows = self._rows_of(self._epoch_order(0), n_tokens, scaled=False)
        return {hook: float(np.sqrt(values.shape[1]) / np.mean(np.linalg.norm(values, axis=1)))
                for hook, values in rows.items()}

    def estimate_massive_norms(self, n_tokens: int, ratio: float) -> dict[str, float]:
        """Per-hook ``ratio`` × the median row norm over the rows :meth:`estimate_scales` reads (raw
        units): the thresholds above which training rows count as massive (:attr:`massive_norms`)."""
        rows = self._rows_of(self._epoch_order(0), n_tokens, scaled=False, apply_massive=False)
        return {hook: float(ratio * np.median(np.linalg.norm(values, axis=1))) for hook, values in rows.items()}

    def _rows_of(self, chunks: np.ndarray, max_tokens: int, scaled: bool = True, apply_massive: bool = True) -> Batch:
        parts, total = [], 0
        for first in range(0, len(chunks), self.mixing_chunks):
            group = chunks[first: first + self.mixing_chunks]
            parts.append(self._finish_read(self._start_read(group), scaled, apply_massive=apply_massive))
            total += len(parts[-1][self.hooks[0]])
            if total >= max_tokens:
                break
        if not parts:
            raise ConfigError("no rows to read: the store split is empty")
        return {hook: np.concatenate([p[hook] for p in parts])[:max_tokens] for hook in self.hooks}

    def holdout(self, max_tokens: int) -> Batch:
        """Up to ``max_tokens`` held-out rows per hook, in store order."""
        if not len(self.split.holdout):
            raise ConfigError("no holdout chunks: set config field 'holdout_fraction' > 0")
        return self._rows_of(self.split.holdout, max_tokens, apply_massive=False)

    def first_rows(self, max_tokens: int) -> Batch:
        """Up to ``max_tokens`` rows per hook from the start of the store (all chunks)."""
        return self._rows_of(np.arange(len(self.split.train) + len(self.split.holdout)), max_tokens, apply_massive=False)
