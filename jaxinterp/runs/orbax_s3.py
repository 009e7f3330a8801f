"""orbax checkpoints on ``s3://``: orbax-checkpoint 0.12 builds TensorStore specs for local files and ``gs://`` only.

orbax builds every TensorStore kvstore spec of a checkpoint (array writes and reads, the OCDBT
merge of the processes' parts) with one function, ``tensorstore_utils.build_kvstore_tspec``, and
has no option to change it: an ``s3://`` directory is turned into a relative local path and
refused. :func:`enable_s3_checkpoints` wraps that function once per process: for an ``s3://``
directory it asks orbax for the spec of the same bucket and path on GCS (orbax's object-store
layout: OCDBT without file locks, read coalescing) and puts TensorStore's ``s3`` driver where the
``gcs`` driver was, with the endpoint and region :func:`jaxinterp.store.spec.kvstore_spec` reads
from the environment (TensorStore itself reads only the credentials there, so S3-compatible
servers need it). Files orbax writes itself (metadata, commit markers) go through epath/s3fs.
The ``orbax-checkpoint<0.13`` pin in pyproject.toml keeps the wrapped function where it is.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from orbax.checkpoint._src.serialization import tensorstore_utils

from jaxinterp.store.spec import kvstore_spec

__all__ = ["enable_s3_checkpoints"]

_GCS_DRIVERS = ("gcs", "gcs_grpc")  # orbax picks one from TENSORSTORE_GCS_BACKEND


def _with_s3_driver(spec: Any, s3: dict[str, Any]) -> Any:
    """``spec`` with every GCS kvstore replaced by the S3 one (same path)."""
    if isinstance(spec, dict):
        if spec.get("driver") in _GCS_DRIVERS:
            return {**s3, "path": spec.get("path", "")}
        return {key: _with_s3_driver(value, s3) for key, value in spec.items()}
    if isinstance(spec, list):
        return [_with_s3_driver(value, s3) for value in spec]
    return spec


def enable_s3_checkpoints() -> None:
    """Lets orbax write and read checkpoints under ``s3://`` URLs in this process (idempotent)."""
    original = tensorstore_utils.build_kvstore_tspec
    if getattr(original, "handles_s3", False):
        return

    @functools.wraps(original)
    def build_kvstore_tspec(directory, name=None, **options):
        url = os.fspath(directory)
        if not url.startswith("s3://"):
            return original(directory, name, **options)
        s3 = {key: value for key, value in kvstore_spec(url).items() if key != "path"}
        return _with_s3_driver(original("gs://" + url[len("s3://"):], name, **options), s3)

    build_kvstore_tspec.handles_s3 = True
    tensorstore_utils.build_kvstore_tspec = build_kvstore_tspec
