"""``jaxinterp extract``: corpus → tokens → source-model forward → hooked activations → store."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from jaxinterp.extract.corpus import corpus_hash, load_documents
from jaxinterp.extract.packing import Packed, check_max_tokens, pack_documents
from jaxinterp.config import ConfigError
from jaxinterp.models.hooks import hook_width, layer_count
from jaxinterp.models import (HookPoint, choose_backend, load_hf_config, load_source_model, load_tokenizer,
                              parse_hooks, resolve_model)
from jaxinterp.store import StoreWriter, plan_layout
from jaxinterp.store.manifest import WRITER_VERSION

__all__ = ["extract", "plan_extraction", "tokenize_corpus", "ExtractResult", "NonFiniteActivationError"]

_ITEMSIZE = {"float32": 4, "bfloat16": 2}


class ExtractResult(NamedTuple):
    """The finished store's manifest, what this call wrote (0 tokens when it was already done), and
    the seconds spent running the model and writing (model loading excluded)."""

    manifest: dict[str, Any]
    tokens_written: int
    seconds: float

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens_written / self.seconds if self.tokens_written else None


class NonFiniteActivationError(FloatingPointError):
    """NaN/Inf in extracted activations; the message gives hook and token rows."""


def tokenize_corpus(tokenizer, documents: list[str], cfg: Mapping[str, Any]) -> Packed:
    """Tokenises documents (no special tokens) and packs them as the extract config says."""
    ids = tokenizer(documents, add_special_tokens=False)["input_ids"]
    return pack_documents(
        ids,
        cfg["context_size"],
        bos_id=tokenizer.bos_token_id,
        separator_id=tokenizer.eos_token_id,
        prepend_bos=cfg["prepend_bos"],
        max_tokens=cfg["max_tokens"],
        corpus=cfg["data"],
    )


def plan_extraction(cfg: Mapping[str, Any]) -> tuple[list[HookPoint], Packed, dict[str, Any]]:
    """Resolves model and hooks, tokenises the corpus, and builds the store manifest (no forward yet).

    Hook names are checked against the model's depth, and the backend against the model (one that would
    not compute it exactly is refused), before the corpus is read and any weights are loaded.
    """
    files = resolve_model(cfg["model"])
    tokenizer, model_config = load_tokenizer(files), load_hf_config(files)
    n_layers = layer_count(model_config)
    hooks = parse_hooks(cfg["hooks"], n_layers, model_config)
    backend = choose_backend(model_config, cfg["backend"])  # a model no backend computes exactly stops here
    check_max_tokens(cfg["max_tokens"], cfg["context_size"])  # before the corpus is read and tokenised
    documents = load_documents(cfg["data"], cfg["text_field"])
    packed = tokenize_corpus(tokenizer, documents, cfg)
    d_in = _store_width(hooks, model_config)
    layout = plan_layout(d_in, _ITEMSIZE[cfg["dtype"]], cfg["context_size"], cfg["chunk_mib"], cfg["shard_mib"])
    architectures = getattr(model_config, "architectures", None)
    manifest = {
        "model": str(Path(cfg["model"]).resolve()) if Path(cfg["model"]).exists() else cfg["model"],  # for eval
        "model_name": files.name,
        "model_hash": files.fingerprint(),
        "model_class": architectures[0] if architectures else model_config.model_type,
        "backend": backend,
        "model_dtype": cfg["model_dtype"],
        "hook_names": [h.name for h in hooks],
        "d_in": d_in,
        "dtype": cfg["dtype"],
        "context_size": cfg["context_size"],
        "prepend_bos": cfg["prepend_bos"],
        "bos_token_id": tokenizer.bos_token_id,
        "separator_token_id": tokenizer.eos_token_id,
        "tokenizer": files.name,  # the tokenizer shipped with the model files
        "dataset_path": cfg["data"],
        "dataset_hash": corpus_hash(documents),
        "n_documents": len(documents),
        "n_tokens": int(packed.tokens.size),
        "rows_per_chunk": layout.rows_per_chunk,
        "rows_per_shard": layout.rows_per_shard,
        "writer_version": WRITER_VERSION,
    }
    return hooks, packed, manifest


def _store_width(hooks: list[HookPoint], model_config: Any) -> int:
    """The one activation width (the manifest's ``d_in``) of a store of ``hooks``; hooks of different widths
    (``attn.hook_z`` is n_heads * d_head wide, ``mlp.hook_post`` d_mlp) are refused: extract them to separate stores."""
    widths = {h.name: hook_width(model_config, h.kind) for h in hooks}
    if len(set(widths.values())) > 1:
        listed = ", ".join(f"{name} ({width})" for name, width in widths.items())
        raise ConfigError(f"config field 'hooks': a store holds activations of one width, these differ: {listed}; "
                          f"extract hooks of different widths to separate stores")
    return next(iter(widths.values()))


def _process_share(cfg: Mapping[str, Any]) -> tuple[int, int]:
    """(index, count) from the config, or from ``jax.distributed`` when the config says -1."""
    if cfg["process_count"] == -1:
        import jax

        return jax.process_index(), jax.process_count()
    if not 0 <= cfg["process_index"] < cfg["process_count"]:
        raise ConfigError(
            f"config field 'process_index' must be in [0, process_count={cfg['process_count']}), got {cfg['process_index']}"
        )
    return cfg["process_index"], cfg["process_count"]


def extract(cfg: Mapping[str, Any], progress: bool = True, model=None) -> ExtractResult:
    """Runs an extraction described by an extract config; returns the manifest and throughput.

    Resumable: rerunning the same config continues from the shards already committed, and a
    finished store is left untouched. A store at ``cfg.out`` made with a different config is an
    error unless ``cfg.overwrite``. With several processes each writes only its own shards.

    Args:
      cfg: an extract config (``configs/extract.py`` fields).
      progress: show a progress bar with tokens/s.
      model: an already loaded source model for ``cfg.model`` (e.g. ``load_source_model(...)``),
        to reuse across extractions; loaded on demand when ``None``.
    """
    hooks, packed, manifest = plan_extraction(cfg)
    index, count = _process_share(cfg)
    writer = StoreWriter(cfg["out"], manifest, overwrite=cfg["overwrite"], process_index=index, process_count=count)
    pending = writer.pending_shards()
    written, began = 0, time.perf_counter()
    if pending:
        model = model or load_source_model(cfg["model"], backend=manifest["backend"], dtype=cfg["model_dtype"])
        began = time.perf_counter()  # throughput counts the forward passes and writes, not the model load
        bar = tqdm(total=sum(np.subtract(*writer.shard_rows(s)[::-1]) for s in pending), unit="tok",
                   unit_scale=True, desc="extract", disable=not progress)
        in_flight = None
        for shard in pending:
            data = _forward_shard(model, hooks, packed, writer, shard, cfg["batch_size"], bar)
            if in_flight is not None:  # at most one shard being written while the next one runs
                in_flight.result()
            in_flight = writer.write_shard(shard, data)
            written += len(data["tokens"])
        bar.close()
    return ExtractResult(writer.finish(), written, time.perf_counter() - began)


def _forward_shard(model, hooks: list[HookPoint], packed: Packed, writer: StoreWriter, shard: int,
                   batch_size: int, bar) -> dict[str, np.ndarray]:
    """Runs the contexts of one shard and returns its rows for every array, in store dtypes."""
    start, stop = writer.shard_rows(shard)
    context_size = packed.tokens.shape[1]
    contexts = packed.tokens[start // context_size: stop // context_size]
    data = {h.name: np.empty((stop - start, writer.arrays[h.name].shape[1]), writer.arrays[h.name].dtype.numpy_dtype)
            for h in hooks}
    for first in range(0, len(contexts), batch_size):
        batch = contexts[first: first + batch_size]
        rows = slice(first * context_size, (first + len(batch)) * context_size)
        for name, value in model.run(batch, hooks).items():
            flat = value.reshape(batch.size, -1)
            _check_finite(name, flat, start + rows.start)
            data[name][rows] = flat
        bar.update(batch.size)
    data.update(tokens=packed.tokens.reshape(-1)[start:stop], doc=packed.doc.reshape(-1)[start:stop],
                pos=packed.pos.reshape(-1)[start:stop])
    return data


def _check_finite(name: str, rows: np.ndarray, first_row: int) -> None:
    bad = ~np.isfinite(rows).all(axis=1)
    if bad.any():
        where = np.flatnonzero(bad)
        raise NonFiniteActivationError(
            f"non-finite activations at hook '{name}', token rows {first_row + where[0]}..{first_row + where[-1]} "
            f"({bad.sum()} rows)"
        )
