"""TensorStore specs for the activation store: zarr3 arrays, sharded, crc32c on every inner chunk.

Rows are tokens. A *shard* (one zarr3 chunk holding many inner chunks, ~64-512 MiB) is the unit one
writer commits; an *inner chunk* (~1-4 MiB) is the unit readers fetch. Both checksums (chunk data
and shard index) are crc32c, so a flipped byte anywhere is caught on read.
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple


__all__ = ["Layout", "SIDE_ARRAYS", "array_shapes", "plan_layout", "array_spec", "array_kvstore", "kvstore_spec",
           "kvstore_location"]

# Per-token side arrays written beside every hook: name -> zarr dtype.
SIDE_ARRAYS = {"tokens": "int32", "doc": "int64", "pos": "int32"}

class Layout(NamedTuple):
    """Rows per inner chunk (read unit) and per shard (write unit)."""

    rows_per_chunk: int
    rows_per_shard: int


def plan_layout(d: int, itemsize: int, context_size: int, chunk_mib: float, shard_mib: float) -> Layout:
    """Chooses power-of-two inner chunks near ``chunk_mib`` and shards near ``shard_mib``.

    Shards are a multiple of both the chunk and the context, so each extraction batch of whole
    contexts fills whole shards.
    """
    row_bytes = d * itemsize
    rows_per_chunk = 2 ** max(0, int(math.log2(max(1.0, chunk_mib * 2**20 / row_bytes))))
    unit = math.lcm(rows_per_chunk, context_size)
    rows_per_shard = unit * max(1, round(shard_mib * 2**20 / row_bytes / unit))
    return Layout(rows_per_chunk, rows_per_shard)


def kvstore_spec(url: str) -> dict[str, Any] | str:
    """A TensorStore kvstore for a local path or a URL (``file://``, ``gs://``, ``s3://``, ``memory://``).

    ``s3://`` takes its endpoint from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` and its region
    from ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` (the AWS SDKs' variables; TensorStore itself reads
    only the credentials from the environment), so S3-compatible servers (MinIO, moto, R2) work.
    """
    if url.startswith("s3://"):
        bucket, _, path = url[len("s3://"):].partition("/")
        spec: dict[str, Any] = {"driver": "s3", "bucket": bucket, "path": path.strip("/") + "/" if path.strip("/") else ""}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return spec | ({"endpoint": endpoint} if endpoint else {}) | ({"aws_region": region} if region else {})
    if "://" in url:
        return url if url.endswith("/") else url + "/"
    return {"driver": "file", "path": os.path.abspath(url) + "/"}


def array_kvstore(url: str, name: str) -> dict[str, Any] | str:
    """The kvstore of one array under the store root."""
    base = kvstore_spec(url)
    if isinstance(base, str):
        return base + name + "/"
    return {**base, "path": base["path"] + name + "/"}


def kvstore_location(spec: dict[str, Any] | str) -> str:
    """A kvstore spec as the path or URL a user recognises (for error messages)."""
    if isinstance(spec, str):
        return spec
    return f"s3://{spec['bucket']}/{spec['path']}" if spec["driver"] == "s3" else spec["path"]


def array_spec(url: str, name: str, shape: tuple[int, ...], dtype: str, layout: Layout) -> dict[str, Any]:
    """zarr3 spec for one array of the store (``[n_tokens, d]`` or ``[n_tokens]``)."""
    tail = list(shape[1:])
    checksummed = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]
    return {
        "driver": "zarr3",
        "kvstore": array_kvstore(url, name),
        # An all-zero shard is still written: a missing shard file must mean a lost shard, never zeros.
        "store_data_equal_to_fill_value": True,
        "metadata": {
            "shape": list(shape),
            "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [layout.rows_per_shard, *tail]}},
            "codecs": [
                {
                    "name": "sharding_indexed",
                    "configuration": {
                        "chunk_shape": [layout.rows_per_chunk, *tail],
                        "codecs": checksummed,
                        "index_codecs": checksummed,
                        "index_location": "end",
                    },
                }
            ],
        },
    }


def array_shapes(manifest: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{array name: (shape, zarr dtype)}`` for every hook and side array a manifest describes."""
    n = int(manifest["n_tokens"])
    shapes = {name: ((n, int(manifest["d_in"])), manifest["dtype"]) for name in manifest["hook_names"]}
    shapes.update({name: ((n,), dtype) for name, dtype in SIDE_ARRAYS.items()})
    return shapes
