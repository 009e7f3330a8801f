"""Lazy safetensors tensors: a checkpoint known from its file headers, read slice by slice onto devices.

:func:`lazy_safetensors` maps every stored name of a (possibly sharded) safetensors checkpoint to a
:class:`TensorRef` (file, name, shape, dtype) without reading a tensor. A family module builds its nnx
model from these refs as from arrays (``w[name].T``, ``w.get(name, default)``; ``layers.param`` keeps a
ref unread, cast only in its ``dtype``), so the model's state holds refs. :func:`place` then makes each
ref a ``jax.Array`` with its sharding, every addressable device reading only its slice of the file,
cast straight to the model dtype, one shard file at a time; the whole model is never in host memory::

    graphdef, state = nnx.split(build_model(config, lazy_safetensors(directory), "bfloat16"))
    state = place(state, tree_shardings(state, MODEL_RULES, mesh))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np
from jax.sharding import Sharding

from jaxinterp.models.weights import safetensors_files

__all__ = ["TensorRef", "lazy_safetensors", "place"]

# safetensors' dtype names -> numpy (ml_dtypes for bf16 / fp8, as the safetensors numpy framework reads them)
STORED_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """A tensor of a safetensors file, not read: ``shape`` and ``dtype`` are what :meth:`read` returns.

    ``dtype`` starts as the stored dtype (:meth:`astype` changes it); ``transposed`` means the axes are
    the stored tensor's reversed (``ref.T``), so it stands for ``w[name].T`` as an array would.
    """

    path: str
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    transposed: bool = False

    @property
    def T(self) -> TensorRef:
        return dataclasses.replace(self, shape=self.shape[::-1], transposed=not self.transposed)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def astype(self, dtype: Any) -> TensorRef:
        return dataclasses.replace(self, dtype=np.dtype(dtype))

    def read(self, checkpoint: Any, index: Sequence[slice] = ()) -> np.ndarray:
        """The ``index`` slice (in this ref's axes) of the tensor from an open ``safe_open`` ``checkpoint``, as ``dtype``."""
        index = tuple(index) + (slice(None),) * (self.ndim - len(index))
        values = checkpoint.get_slice(self.name)[index[::-1] if self.transposed else index]  # a copy, not the mmap
        values = values.T if self.transposed else values
        if values.dtype != self.dtype:
            # Through float32, as the eager path casts: bf16 / f16 upcast exactly, float32 rounds once.
            values = np.asarray(values, np.float32).astype(self.dtype)
        return np.ascontiguousarray(values)


def lazy_safetensors(directory: str | Path) -> dict[str, TensorRef]:
    """``{stored name: TensorRef}`` for the safetensors checkpoint in ``directory``, from the headers only.

    Raises:
      FileNotFoundError: no ``model.safetensors`` or sharded index (as :func:`weights.load_hf_weights`).
    """
    from safetensors import safe_open

    refs = {}
    for path in safetensors_files(Path(directory)):
        with safe_open(str(path), framework="numpy") as checkpoint:
            for name in checkpoint.keys():
                tensor = checkpoint.get_slice(name)
                refs[name] = TensorRef(str(path), name, tuple(int(d) for d in tensor.get_shape()),
                                       np.dtype(STORED_DTYPES[tensor.get_dtype()]))
    return refs


def place(tree: Any, shardings: Any) -> Any:
    """``tree`` with every leaf a ``jax.Array`` on its sharding (``shardings``: the same tree of ``Sharding``s).

    A :class:`TensorRef` leaf is read per addressable device, only the slice that device holds (so with
    several processes each reads its own part), file by file; any other leaf is ``jax.device_put``.
    """
    leaves, treedef = jax.tree.flatten(tree)
    targets = jax.tree.leaves(shardings)
    placed = [None if isinstance(leaf, TensorRef) else jax.device_put(leaf, target)
              for leaf, target in zip(leaves, targets, strict=True)]
    by_file: dict[str, list[int]] = {}
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, TensorRef):
            by_file.setdefault(leaf.path, []).append(i)
    for path, indices in by_file.items():
        for i, array in zip(indices, _place_file(path, [leaves[i] for i in indices], [targets[i] for i in indices])):
            placed[i] = array
    return treedef.unflatten(placed)


def _place_file(path: str, refs: list[TensorRef], targets: list[Sharding]) -> list[jax.Array]:
    """The refs of one file placed; the file is mapped only meanwhile, so its touched pages are released after."""
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as checkpoint:
        return [_place_tensor(ref, target, checkpoint) for ref, target in zip(refs, targets)]


def _place_tensor(ref: TensorRef, target: Sharding, checkpoint: Any) -> jax.Array:
    read: dict[tuple, np.ndarray] = {}

    def shard(index: tuple[slice, ...]) -> np.ndarray:
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key not in read:  # a slice on several devices (replicated over 'data') is read once
            read[key] = ref.read(checkpoint, index)
        return read[key]

    return jax.make_array_from_callback(ref.shape, target, shard, dtype=ref.dtype)
