"""Which shards a store holds: each array's shard files and the writer's done-markers.

Both are found by key listings (one per array, one for the markers), never by reading data, and
through the TensorStore kvstore, so local paths and ``s3://`` / ``gs://`` stores are checked alike.
"""

from __future__ import annotations

from typing import Any

import tensorstore as ts

from jaxinterp.store.spec import array_kvstore, array_shapes

__all__ = ["DONE_PREFIX", "done_marker", "done_shards", "shard_count", "shard_key", "shards_missing_files"]

DONE_PREFIX = "_progress/shard_"


def shard_count(manifest: dict[str, Any]) -> int:
    """Shards per array: ``n_tokens`` rows cut into ``rows_per_shard`` (the last one may be short)."""
    return -(-int(manifest["n_tokens"]) // int(manifest["rows_per_shard"]))


def shard_key(ndim: int, shard: int) -> str:
    """The key of ``shard`` inside its array's kvstore (zarr3 default keys; one chunk spans ``d``)."""
    return f"c/{shard}/0" if ndim == 2 else f"c/{shard}"


def done_marker(shard: int) -> str:
    """The key, under the store root, whose presence says ``shard`` is committed in every array."""
    return f"{DONE_PREFIX}{shard:06d}"


def done_shards(root: ts.KvStore) -> set[int]:
    """Shards with a done-marker."""
    keys = root.list(ts.KvStore.KeyRange(DONE_PREFIX, DONE_PREFIX + "~")).result()
    return {int(bytes(key).decode()[len(DONE_PREFIX):]) for key in keys}


def shards_missing_files(url: str, manifest: dict[str, Any]) -> dict[str, list[int]]:
    """``{array: shards whose file is absent}`` for every array the manifest lists (only arrays missing some).

    An absent shard file reads as the fill value (zeros), so it must be caught here, not on read.
    """
    n_shards = shard_count(manifest)
    missing = {}
    for name, (shape, _) in array_shapes(manifest).items():
        kvstore = ts.KvStore.open(array_kvstore(url, name)).result()
        present = {bytes(key).decode() for key in kvstore.list(ts.KvStore.KeyRange("c/", "c0")).result()}
        absent = [shard for shard in range(n_shards) if shard_key(len(shape), shard) not in present]
        if absent:
            missing[name] = absent
    return missing
