"""The activation buffer: shuffled, prefetched, sharded batches from a store."""

from jaxinterp.buffer.loader import ActivationBuffer, ChunkSplit, split_chunks

__all__ = ["ActivationBuffer", "ChunkSplit", "split_chunks"]
