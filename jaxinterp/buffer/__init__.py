"""The activation buffer: shuffled, prefetched, sharded batches from a store."""

from jaxinterp.buffer.loader import ActivationBuffer, BufferState, ChunkSplit, NonFiniteRowsError, split_chunks

__all__ = ["ActivationBuffer", "BufferState", "ChunkSplit", "NonFiniteRowsError", "split_chunks"]
