"""A dictionary's latent activations over a store, written in delphi's cache layout (Paulo et al. 2024).

EleutherAI's delphi (``eai-delphi`` 0.1.3, ``delphi.latents.cache.LatentCache.save_splits`` and
``save_config``; read by ``delphi.latents.LatentDataset``) keeps, per module, the latent range split in
``n_splits`` parts, one file per part::

    <out>/<module>/<start>_<end>.safetensors     (end inclusive)
        locations    [N, 3]  (context, position, latent − start), uint16 when every context index and
                             latent offset is < 2¹⁶, else uint32
        activations  [N]     float16, the non-zero activations (|a| > 1e-5, delphi's cut)
        tokens       [contexts, context_size]  int64, the token ids of every cached context
    <out>/<module>/config.json   delphi's CacheConfig fields plus model_name

Entries are in (context, position) order, then by latent. Memory stays bounded by one batch of contexts:
each batch's entries are appended to per-part spill files, and each part's safetensors file is then written
by streaming those spills behind a header whose sizes are known by then (the safetensors format is an
8-byte header length, a JSON header, the raw bytes). Per-latent firing counts go to
``<out>/<module>/firing_counts.npy`` (int64 [d_sae]).
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from safetensors.numpy import load_file
from tqdm.auto import tqdm

from jaxinterp.atomic import atomic_directory, check_replaceable
from jaxinterp.config import ConfigError
from jaxinterp.distributed import barrier, is_primary
from jaxinterp.sae import dense_latents
from jaxinterp.store import Store
from jaxinterp.store.paths import location, on_object_store

__all__ = ["ACTIVE_ABOVE", "LatentCacheEntries", "latent_cache", "read_latent_cache", "split_ranges"]

# delphi's cut for "non-zero" (torch.nonzero(latents.abs() > 1e-5)).
ACTIVE_ABOVE = 1e-5
_DTYPES = {np.dtype(np.uint16): "U16", np.dtype(np.uint32): "U32", np.dtype(np.float16): "F16",
           np.dtype(np.int64): "I64"}


def split_ranges(d_sae: int, n_splits: int) -> list[tuple[int, int]]:
    """delphi's ``(start, end)`` latent ranges, end inclusive (``linspace(0, d_sae, n_splits + 1)`` boundaries)."""
    if not 1 <= n_splits <= d_sae:
        raise ConfigError(f"config field 'n_splits' must be in 1..{d_sae} (the dictionary's latents), got {n_splits}")
    bounds = np.linspace(0, d_sae, n_splits + 1).astype(np.int64)
    return [(int(start), int(end) - 1) for start, end in zip(bounds[:-1], bounds[1:])]


def _batch_entries(latents: np.ndarray, first_context: int, context_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(locations [N, 3] int64 (context, position, latent), activations [N] float32)`` of ``latents``
    ``[rows, d_sae]`` (rows: whole contexts from ``first_context`` on)."""
    rows, latent = np.nonzero(np.abs(latents) > ACTIVE_ABOVE)
    locations = np.stack([first_context + rows // context_size, rows % context_size, latent], axis=1)
    return locations.astype(np.int64), latents[rows, latent].astype(np.float32)


def _write_streamed(path: Path, tensors: list[tuple[str, np.dtype, tuple[int, ...], Iterable[np.ndarray]]]) -> None:
    """A safetensors file whose tensors' bytes come from iterables of arrays (concatenated in order)."""
    header, offset = {}, 0
    for name, dtype, shape, _ in tensors:
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": _DTYPES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # safetensors pads the header to 8 bytes
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for name, dtype, _, parts in tensors:
            written = 0
            for part in parts:
                data = np.ascontiguousarray(part, dtype=dtype)
                handle.write(data.tobytes())
                written += data.nbytes
            want = header[name]["data_offsets"][1] - header[name]["data_offsets"][0]
            if written != want:
                raise AssertionError(f"{path}: tensor {name} got {written} bytes, its header says {want}")


def latent_cache(encode: Any, d_sae: int, store: Store, hook: str, out: str, module: str, n_tokens: int = 0,
                 n_splits: int = 5, batch_contexts: int = 32, model_name: str = "", overwrite: bool = False,
                 progress: bool = False, devices: Sequence[jax.Device] | None = None,
                 identity: Mapping[str, Any] | None = None) -> Path:
    """Writes the latents of ``encode`` (raw activations ``[rows, d_in]`` → sparse or dense latents) over the
    first whole contexts of ``store``'s ``hook`` to ``<out>/<module>/`` in delphi's layout; returns ``out``
    (other modules' directories there are left as they are).

    Sharding: batch ``b`` of contexts is encoded by process ``b mod process_count``, its rows split over that
    process's devices (``devices``: default every local device; the dictionary is replicated). A row's latents
    do not depend on how the rows are split, so 1 device, 8 devices and 2 processes write the same bytes. With
    several processes ``out`` must be a filesystem path all of them see: each spills its batches' entries
    there, then process 0 writes the files.

    Args:
      n_tokens: tokens to cache, whole contexts (0 = the whole store).
      n_splits: delphi's ``n_splits`` (latent ranges, one file each).
      batch_contexts: contexts encoded per batch: what bounds the memory.
      identity: more ``config.json`` entries saying what the cache was made from (e.g. which dictionary).

    Raises:
      ConfigError: naming the field: an unknown hook, ``n_tokens`` under one context, or an object-store
        ``out`` with several processes.
      FileExistsError: ``<out>/<module>`` exists and ``overwrite`` is false.
    """
    if hook not in store.hook_names:
        raise ConfigError(f"config field 'hook': {store.url} has no hook {hook!r}; it has {', '.join(store.hook_names)}")
    context_size = store.manifest["context_size"]
    contexts = (n_tokens or store.n_tokens) // context_size
    if contexts < 1:
        raise ConfigError(f"config field 'n_tokens': {n_tokens} is less than one context ({context_size} tokens)")
    contexts = min(contexts, store.n_tokens // context_size)
    ranges = split_ranges(d_sae, n_splits)
    cache_config = {"dataset_repo": store.manifest.get("dataset_path", ""), "dataset_split": "", "dataset_name": "",
                    "dataset_column": "text", "batch_size": batch_contexts, "cache_ctx_len": context_size,
                    "n_tokens": contexts * context_size, "n_splits": n_splits, "model_name": model_name,
                    "jaxinterp_store": store.url, "jaxinterp_hook": hook, **(identity or {})}
    files = ("config.json", "firing_counts.npy", *(f"{start}_{end}.safetensors" for start, end in ranges))
    target = location(out, "out") / module
    if target.exists() and not overwrite and any(True for _ in target.iterdir()):
        raise FileExistsError(f"{target} exists; pass --config.overwrite=true to replace it")  # before any encoding
    check_replaceable(target, "latent_cache", files)
    firsts = list(range(0, contexts, batch_contexts))
    if jax.process_count() == 1:  # beside <out> (its filesystem, not <out> itself: delphi reads every entry there)
        beside = None if on_object_store(target) else Path(target).absolute().parent.parent
        if beside is not None:
            beside.mkdir(parents=True, exist_ok=True)
        spill_root = Path(tempfile.mkdtemp(prefix=f".{Path(str(out)).name}-{module}.spill-", dir=beside))
    else:
        if on_object_store(target):
            raise ConfigError("config field 'out': a multi-process latent cache needs a filesystem path every process "
                              f"sees, not {out}")
        spill_root = Path(target).absolute().parent.parent / f".{Path(out).name}-{module}.spill"
        if is_primary():
            shutil.rmtree(spill_root, ignore_errors=True)  # a killed run's spills: its name is this cache's own
            spill_root.mkdir(parents=True)
        barrier(f"spill:{spill_root}")
    try:
        mine = firsts[jax.process_index()::jax.process_count()]
        _encode_batches(encode, d_sae, store, hook, contexts, batch_contexts, ranges, mine, spill_root,
                        devices or jax.local_devices(), progress and is_primary())
        barrier(f"spilled:{spill_root}")

        def write(module_dir: Path) -> None:
            _write_module(module_dir, spill_root, store, contexts, context_size, batch_contexts, ranges, firsts, d_sae)
            (module_dir / "config.json").write_text(json.dumps(cache_config, indent=4))

        # The module directory is the atomic unit (its marker file sits beside delphi's files, which delphi
        # ignores): delphi lists every entry of <out> as a module, so <out> holds module directories only.
        atomic_directory(str(target), overwrite, write, "latent_cache", files)
    finally:
        if is_primary():
            shutil.rmtree(spill_root, ignore_errors=True)
    return Path(out) if not on_object_store(target) else target.parent


def _encode_batches(encode: Any, d_sae: int, store: Store, hook: str, contexts: int, batch_contexts: int,
                    ranges: list[tuple[int, int]], firsts: Sequence[int], spill: Path, devices: Sequence[jax.Device],
                    progress: bool) -> None:
    """Encodes the batches starting at contexts ``firsts``, rows over ``devices``; spills each batch's entries
    per latent range (``<range>_<first>_loc.npy`` / ``_act.npy``) and its firing counts (``fired_<first>.npy``)."""
    context_size = store.manifest["context_size"]
    starts = np.array([start for start, _ in ranges])
    rows_sharding = NamedSharding(Mesh(np.array(devices), ("data",)), P("data"))
    jitted = jax.jit(lambda x: dense_latents(encode(x), d_sae))
    bar = tqdm(total=len(firsts) * batch_contexts * context_size, unit="tok", unit_scale=True, desc="cache",
               disable=not progress)
    for first in firsts:
        last = min(first + batch_contexts, contexts)
        x = np.asarray(store.read(hook, first * context_size, last * context_size), np.float32)
        pad = -len(x) % len(devices)  # zero rows so the batch splits evenly; their latents are dropped
        x_rows = jax.device_put(np.concatenate([x, np.zeros((pad, x.shape[1]), np.float32)]), rows_sharding)
        latents = np.asarray(jitted(x_rows))[:len(x)]
        locations, activations = _batch_entries(latents, first, context_size)
        too_large = np.abs(activations) > np.finfo(np.float16).max
        if too_large.any():  # delphi's float16 would store inf
            where = locations[np.argmax(too_large)]
            raise ValueError(f"latent {where[2]} has activation {activations[too_large][0]:.6g} at context "
                             f"{where[0]}, position {where[1]}: beyond float16, which delphi's cache stores")
        np.save(spill / f"fired_{first}.npy", np.bincount(locations[:, 2], minlength=d_sae))
        part = np.searchsorted(starts, locations[:, 2], side="right") - 1
        for index in np.unique(part):  # one spill pair per (part, batch): read back in batch order
            mask = part == index
            np.save(spill / f"{index}_{first}_loc.npy", locations[mask])
            np.save(spill / f"{index}_{first}_act.npy", activations[mask].astype(np.float16))
        bar.update((last - first) * context_size)
    bar.close()


def _write_module(module_dir: Path, spill: Path, store: Store, contexts: int, context_size: int, batch_contexts: int,
                  ranges: list[tuple[int, int]], firsts: Sequence[int], d_sae: int) -> None:
    """delphi's ``<start>_<end>.safetensors`` files and ``firing_counts.npy``, streamed from the spills in batch
    order (so in (context, position, latent) order), one spill file in memory at a time."""
    fired = np.zeros(d_sae, np.int64)
    for first in firsts:
        fired += np.load(spill / f"fired_{first}.npy")
    np.save(module_dir / "firing_counts.npy", fired)

    def spilled(index: int, first: int, kind: str) -> Path:
        return spill / f"{index}_{first}_{kind}.npy"

    for index, (start, end) in enumerate(ranges):
        count = sum(np.load(spilled(index, first, "act"), mmap_mode="r").shape[0] for first in firsts
                    if spilled(index, first, "act").exists())
        # delphi's uint16 test (context index and latent offset < 2¹⁶), and positions that fit too
        small = contexts < 2**16 and end - start < 2**16 and context_size <= 2**16
        loc_dtype = np.dtype(np.uint16 if small else np.uint32)

        def located(index=index, start=start):
            for first in firsts:
                if spilled(index, first, "loc").exists():
                    yield np.load(spilled(index, first, "loc")) - np.array([0, 0, start])

        def activated(index=index):
            for first in firsts:
                if spilled(index, first, "act").exists():
                    yield np.load(spilled(index, first, "act"))

        def tokens():
            for first in firsts:
                last = min(first + batch_contexts, contexts)
                yield store.read("tokens", first * context_size, last * context_size).astype(np.int64)

        _write_streamed(module_dir / f"{start}_{end}.safetensors", [
            ("locations", loc_dtype, (count, 3), located()),
            ("activations", np.dtype(np.float16), (count,), activated()),
            ("tokens", np.dtype(np.int64), (contexts, context_size), tokens())])


class LatentCacheEntries(NamedTuple):
    """A delphi cache module read back whole: ``locations [N, 3]`` int64 (context, position, latent) in
    (context, position, latent) order, ``activations [N]`` float32, ``tokens [contexts, context_size]``."""

    locations: np.ndarray
    activations: np.ndarray
    tokens: np.ndarray
    config: dict[str, Any]


def read_latent_cache(module_dir: str) -> LatentCacheEntries:
    """Every entry of a delphi cache module directory (``<out>/<module>``), latent ids absolute."""
    root = Path(module_dir)
    files = sorted(root.glob("*.safetensors"), key=lambda p: int(p.stem.split("_")[0]))
    if not files:
        raise FileNotFoundError(f"{root}: no <start>_<end>.safetensors files (not a delphi cache module)")
    locations, activations, tokens = [], [], None
    for path in files:
        data = load_file(str(path))
        where = data["locations"].astype(np.int64)
        where[:, 2] += int(path.stem.split("_")[0])
        locations.append(where)
        activations.append(data["activations"].astype(np.float32))
        tokens = data["tokens"] if tokens is None else tokens
    where, values = np.concatenate(locations), np.concatenate(activations)
    order = np.lexsort((where[:, 2], where[:, 1], where[:, 0]))
    return LatentCacheEntries(where[order], values[order], tokens,
                              json.loads((root / "config.json").read_text()))
