"""``jaxinterp extract``: corpus → tokens → source-model forward → hooked activations → store."""

from __future__ import annotations

import os
from collections.abc import Mapping
import time
from typing import Any, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from jaxinterp.extract.corpus import corpus_hash, load_documents
from jaxinterp.extract.packing import Packed, pack_documents
from jaxinterp.models import load_source_model, parse_hooks, resolve_model
from jaxinterp.store import StoreWriter, plan_layout
from jaxinterp.store.manifest import WRITER_VERSION

__all__ = ["extract", "tokenize_corpus", "ExtractResult", "NonFiniteActivationError"]

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


def _load_tokenizer_and_config(files):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoTokenizer

    kwargs = dict(gguf_file=files.gguf_file, local_files_only=True)
    return AutoTokenizer.from_pretrained(files.directory, **kwargs), AutoConfig.from_pretrained(files.directory, **kwargs)


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
    )


def extract(cfg: Mapping[str, Any], progress: bool = True) -> ExtractResult:
    """Runs an extraction described by an extract config; returns the manifest and throughput.

    Resumable: rerunning the same config continues from the shards already committed, and a
    finished store is left untouched. A store at ``cfg.out`` made with a different config is an
    error, never overwritten.
    """
    files = resolve_model(cfg["model"])
    tokenizer, model_config = _load_tokenizer_and_config(files)
    n_layers = int(getattr(model_config, "num_hidden_layers", getattr(model_config, "n_layer", 0)))
    hooks = parse_hooks(cfg["hooks"], n_layers)
    documents = load_documents(cfg["data"], cfg["text_field"])
    packed = tokenize_corpus(tokenizer, documents, cfg)
    d_in = int(model_config.hidden_size)
    layout = plan_layout(d_in, _ITEMSIZE[cfg["dtype"]], cfg["context_size"], cfg["chunk_mib"], cfg["shard_mib"])
    backend = "torch" if cfg["backend"] == "auto" else cfg["backend"]
    manifest = {
        "model_name": files.name,
        "model_hash": files.fingerprint(),
        "model_class": model_config.architectures[0] if getattr(model_config, "architectures", None) else model_config.model_type,
        "backend": backend,
        "hook_names": [h.name for h in hooks],
        "d_in": d_in,
        "dtype": cfg["dtype"],
        "context_size": cfg["context_size"],
        "prepend_bos": cfg["prepend_bos"],
        "bos_token_id": tokenizer.bos_token_id,
        "separator_token_id": tokenizer.eos_token_id,
        "tokenizer": files.name,  # tokenizer shipped with the model files
        "dataset_path": cfg["data"],
        "dataset_hash": corpus_hash(documents),
        "n_documents": len(documents),
        "n_tokens": int(packed.tokens.size),
        "rows_per_chunk": layout.rows_per_chunk,
        "rows_per_shard": layout.rows_per_shard,
        "writer_version": WRITER_VERSION,
    }
    writer = StoreWriter(cfg["out"], manifest)
    pending = writer.pending_shards()
    written, began = 0, time.perf_counter()
    if pending:
        model = load_source_model(cfg["model"], backend=cfg["backend"], dtype=cfg["dtype"])
        began = time.perf_counter()  # throughput counts the forward passes and writes, not the model load
        tokens = packed.tokens.reshape(-1)
        bar = tqdm(total=sum(np.subtract(*writer.shard_rows(s)[::-1]) for s in pending), unit="tok",
                   unit_scale=True, desc="extract", disable=not progress)
        for shard in pending:
            start, stop = writer.shard_rows(shard)
            contexts = packed.tokens[start // cfg["context_size"]: stop // cfg["context_size"]]
            pieces: dict[str, list[np.ndarray]] = {h.name: [] for h in hooks}
            for first in range(0, len(contexts), cfg["batch_size"]):
                batch = contexts[first: first + cfg["batch_size"]]
                activations = model.run(batch, hooks)
                for name, value in activations.items():
                    flat = value.reshape(-1, d_in)
                    _check_finite(name, flat, start + first * cfg["context_size"])
                    pieces[name].append(flat)
                bar.update(batch.size)
            data = {name: np.concatenate(parts) for name, parts in pieces.items()}
            data.update(tokens=tokens[start:stop], doc=packed.doc.reshape(-1)[start:stop],
                        pos=packed.pos.reshape(-1)[start:stop])
            writer.write_shard(shard, data)
            written += stop - start
        bar.close()
    return ExtractResult(writer.finish(), written, time.perf_counter() - began)


def _check_finite(name: str, rows: np.ndarray, first_row: int) -> None:
    bad = ~np.isfinite(rows).all(axis=1)
    if bad.any():
        where = np.flatnonzero(bad)
        raise NonFiniteActivationError(
            f"non-finite activations at hook '{name}', token rows {first_row + where[0]}..{first_row + where[-1]} "
            f"({bad.sum()} rows)"
        )
