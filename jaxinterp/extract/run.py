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


# A store of several models on one token stream (model diffing): model i ≥ 1's hooks are named "m<i>/<hook>".
MODEL_SEPARATOR = ","


def model_specs(spec: str) -> list[str]:
    """The models of the config field ``model``: one, or several comma-separated (the first is the primary)."""
    specs = [part.strip() for part in spec.split(MODEL_SEPARATOR) if part.strip()]
    if not specs:
        raise ConfigError("config field 'model': name a model ('smollm2', a .gguf file or an HF model directory)")
    if len(set(specs)) != len(specs):
        raise ConfigError(f"config field 'model': {spec!r} lists a model twice")
    return specs


def hook_prefix(model_index: int) -> str:
    """How model ``model_index``'s hooks are named in a store of several models (``''`` for the first)."""
    return f"m{model_index}/" if model_index else ""


class SourceModel(NamedTuple):
    """One model of an extraction: where its files are, its parsed hooks and its stored hook-name prefix."""

    spec: str
    files: Any
    config: Any
    backend: str
    hooks: list[HookPoint]
    prefix: str


def _same_token_stream(first: SourceModel, other: SourceModel, documents: list[str], cfg: Mapping[str, Any],
                       packed: Packed) -> None:
    """Refuses a model whose tokenizer turns the corpus into another token stream than the first's."""
    tokenizer = load_tokenizer(other.files)
    theirs = tokenize_corpus(tokenizer, documents, cfg)
    if theirs.tokens.shape != packed.tokens.shape or not np.array_equal(theirs.tokens, packed.tokens):
        flat_a, flat_b = packed.tokens.reshape(-1), theirs.tokens.reshape(-1)
        n = min(len(flat_a), len(flat_b))
        where = int(np.flatnonzero(flat_a[:n] != flat_b[:n])[0]) if np.any(flat_a[:n] != flat_b[:n]) else n
        raise ConfigError(f"config field 'model': the tokenizers of {first.files.name} and {other.files.name} "
                          f"differ (the corpus tokenizes differently from token {where} on); a store of several "
                          "models holds one token stream, so their tokenizers must be the same")


def plan_extraction(cfg: Mapping[str, Any]) -> tuple[list[SourceModel], Packed, dict[str, Any]]:
    """Resolves the model(s) and hooks, tokenises the corpus, and builds the store manifest (no forward yet).

    Hook names are checked against each model's depth, and the backend against each model (one that would
    not compute it exactly is refused), before the corpus is read and any weights are loaded. Several
    models (``model='a,b'``) run on one token stream: each further model's tokenizer must tokenize the
    corpus identically, and its hooks are stored as ``m<i>/<hook>``.
    """
    sources = []
    for index, spec in enumerate(model_specs(cfg["model"])):
        files = resolve_model(spec)
        model_config = load_hf_config(files)
        hooks = parse_hooks(cfg["hooks"], layer_count(model_config), model_config)
        backend = choose_backend(model_config, cfg["backend"])  # a model no backend computes exactly stops here
        sources.append(SourceModel(spec, files, model_config, backend, hooks, hook_prefix(index)))
    first = sources[0]
    tokenizer = load_tokenizer(first.files)
    check_max_tokens(cfg["max_tokens"], cfg["context_size"])  # before the corpus is read and tokenised
    documents = load_documents(cfg["data"], cfg["text_field"])
    packed = tokenize_corpus(tokenizer, documents, cfg)
    for other in sources[1:]:
        _same_token_stream(first, other, documents, cfg, packed)
    d_in = _store_width([(source.prefix + h.name, source.config, h.kind) for source in sources
                         for h in source.hooks])
    layout = plan_layout(d_in, _ITEMSIZE[cfg["dtype"]], cfg["context_size"], cfg["chunk_mib"], cfg["shard_mib"])
    manifest = {
        **_model_fields(first),  # the primary model: what eval's spliced CE and the model checks read
        "hook_names": [source.prefix + h.name for source in sources for h in source.hooks],
        "d_in": d_in,
        "dtype": cfg["dtype"],
        "model_dtype": cfg["model_dtype"],
        "context_size": cfg["context_size"],
        "prepend_bos": cfg["prepend_bos"],
        "bos_token_id": tokenizer.bos_token_id,
        "separator_token_id": tokenizer.eos_token_id,
        "tokenizer": first.files.name,  # the tokenizer shipped with the model files
        "dataset_path": cfg["data"],
        "dataset_hash": corpus_hash(documents),
        "n_documents": len(documents),
        "n_tokens": int(packed.tokens.size),
        "rows_per_chunk": layout.rows_per_chunk,
        "rows_per_shard": layout.rows_per_shard,
        "writer_version": WRITER_VERSION,
    }
    if len(sources) > 1:
        manifest["models"] = [{**_model_fields(source), "hook_prefix": source.prefix} for source in sources]
    return sources, packed, manifest


def _model_fields(source: SourceModel) -> dict[str, Any]:
    architectures = getattr(source.config, "architectures", None)
    spec = source.spec
    return {
        "model": str(Path(spec).resolve()) if Path(spec).exists() else spec,  # for eval
        "model_name": source.files.name,
        "model_hash": source.files.fingerprint(),
        "model_class": architectures[0] if architectures else source.config.model_type,
        "backend": source.backend,
    }


def _store_width(hooks: list[tuple[str, Any, str]]) -> int:
    """The one activation width (the manifest's ``d_in``) of a store of ``hooks`` (stored name, HF config, kind);
    hooks of different widths (``attn.hook_z`` is n_heads * d_head wide, ``mlp.hook_post`` d_mlp, or two models
    of different d_model) are refused: extract them to separate stores."""
    widths = {name: hook_width(model_config, kind) for name, model_config, kind in hooks}
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
        to reuse across extractions, or a list of them for several models; loaded on demand when ``None``.
    """
    sources, packed, manifest = plan_extraction(cfg)
    index, count = _process_share(cfg)
    writer = StoreWriter(cfg["out"], manifest, overwrite=cfg["overwrite"], process_index=index, process_count=count)
    pending = writer.pending_shards()
    written, began = 0, time.perf_counter()
    if pending:
        models = model if isinstance(model, (list, tuple)) else [model] if model is not None else \
            [load_source_model(source.spec, backend=source.backend, dtype=cfg["model_dtype"]) for source in sources]
        began = time.perf_counter()  # throughput counts the forward passes and writes, not the model load
        bar = tqdm(total=sum(np.subtract(*writer.shard_rows(s)[::-1]) for s in pending), unit="tok",
                   unit_scale=True, desc="extract", disable=not progress)
        in_flight = None
        for shard in pending:
            data = _forward_shard(list(zip(models, sources)), packed, writer, shard, cfg["batch_size"], bar)
            if in_flight is not None:  # at most one shard being written while the next one runs
                in_flight.result()
            in_flight = writer.write_shard(shard, data)
            written += len(data["tokens"])
        bar.close()
    return ExtractResult(writer.finish(), written, time.perf_counter() - began)


def _forward_shard(models: list[tuple[Any, SourceModel]], packed: Packed, writer: StoreWriter, shard: int,
                   batch_size: int, bar) -> dict[str, np.ndarray]:
    """Runs the contexts of one shard through every model and returns its rows for every array, in store dtypes."""
    start, stop = writer.shard_rows(shard)
    context_size = packed.tokens.shape[1]
    contexts = packed.tokens[start // context_size: stop // context_size]
    names = [source.prefix + h.name for _, source in models for h in source.hooks]
    data = {name: np.empty((stop - start, writer.arrays[name].shape[1]), writer.arrays[name].dtype.numpy_dtype)
            for name in names}
    for first in range(0, len(contexts), batch_size):
        batch = contexts[first: first + batch_size]
        rows = slice(first * context_size, (first + len(batch)) * context_size)
        for model, source in models:
            for name, value in model.run(batch, source.hooks).items():
                flat = value.reshape(batch.size, -1)
                _check_finite(source.prefix + name, flat, start + rows.start)
                data[source.prefix + name][rows] = flat
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
