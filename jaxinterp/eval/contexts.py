"""What an eval reads from a store: held-out rows, whole held-out contexts, and the model that made them.

The reconstruction metrics read held-out rows through the run's own buffer split (:func:`evaluation_rows`).
The model-based metrics and the top-activating examples need whole contexts (the model must see a
context from its start). A context qualifies when every one of its rows lies in a held-out chunk,
so the trained SAE never saw any of its tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from jaxinterp.buffer import ActivationBuffer
from jaxinterp.config import ConfigError
from jaxinterp.models import ModelFiles, resolve_model
from jaxinterp.store import Store

__all__ = ["Contexts", "dictionary_hooks", "evaluation_rows", "heldout_context_ids", "model_spec", "read_contexts", "source_model_files"]


class Contexts(NamedTuple):
    """``n`` contexts of ``seq`` tokens: ids [n, seq], the store row of each context's first
    token [n], and activations [n, seq, d] per hook (float32, as stored)."""

    tokens: np.ndarray
    first_row: np.ndarray
    activations: dict[str, np.ndarray]


def heldout_context_ids(store: Store, holdout_chunks: np.ndarray | None) -> np.ndarray:
    """Indices of the store's contexts that lie entirely in ``holdout_chunks`` (all when ``None``)."""
    context = int(store.manifest["context_size"])
    n_contexts = store.n_tokens // context
    if holdout_chunks is None:
        return np.arange(n_contexts)
    rows_per_chunk = store.layout.rows_per_chunk
    held = np.zeros(-(-store.n_tokens // rows_per_chunk), bool)
    held[holdout_chunks] = True
    first_chunk = np.arange(n_contexts) * context // rows_per_chunk
    last_chunk = (np.arange(n_contexts) * context + context - 1) // rows_per_chunk
    # All chunks from first to last are held out iff the count of held chunks in between is full.
    held_before = np.concatenate([[0], np.cumsum(held)])
    whole = held_before[last_chunk + 1] - held_before[first_chunk] == last_chunk - first_chunk + 1
    return np.flatnonzero(whole)


def read_contexts(store: Store, context_ids: np.ndarray, hooks: list[str]) -> Contexts:
    """Reads ``tokens`` and each hook's rows for ``context_ids`` (consecutive ids in one read each)."""
    context = int(store.manifest["context_size"])
    ids = np.asarray(context_ids, np.int64)
    runs = np.split(ids, np.flatnonzero(np.diff(ids) != 1) + 1) if len(ids) else []
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ["tokens", *hooks]}
    for run in runs:
        start, stop = int(run[0]) * context, (int(run[-1]) + 1) * context
        for name in parts:
            parts[name].append(store.read(name, start, stop))
    joined = {name: np.concatenate(chunks) if chunks else np.zeros((0,), np.float32) for name, chunks in parts.items()}
    activations = {hook: joined[hook].astype(np.float32).reshape(len(ids), context, -1) for hook in hooks}
    return Contexts(joined["tokens"].reshape(len(ids), context), ids * context, activations)


def dictionary_hooks(sae: Any, store: Store, with_target: bool = True) -> tuple[str, str]:
    """``(hook, target)`` a loaded dictionary reads and predicts in ``store`` (an SAE's target is its hook; a hook
    left unnamed is the store's only one), each checked to be there (the target only ``with_target``), and the
    store's width checked against the dictionary's ``d_in``.

    Raises:
      ConfigError: naming 'store': a hook it lacks, or another width.
    """
    hook = sae.sae.hook_name or (store.hook_names[0] if len(store.hook_names) == 1 else "")
    target = sae.sae.target_hook if sae.sae.transcode else hook
    for needed in dict.fromkeys([hook, target] if with_target else [hook]):
        if needed not in store.hook_names:
            raise ConfigError(f"config field 'store': {store.url} holds {', '.join(store.hook_names)}, "
                              f"not the SAE's hook {needed or '(unknown)'}")
    if sae.sae.d_in != store.manifest["d_in"]:
        raise ConfigError(f"config field 'store': its activations are {store.manifest['d_in']}-wide, the SAE's "
                          f"d_in is {sae.sae.d_in}")
    return hook, target


def model_spec(cfg: Mapping[str, Any], store: Store) -> str:
    """The source model to run the contexts through: ``cfg.model``, else the one the store records.

    Raises:
      ConfigError: naming 'model' when neither names one.
    """
    spec = cfg["model"] or store.manifest.get("model", "")
    if not spec:
        raise ConfigError(f"config field 'model': store {store.url} does not record which model made it; "
                          "pass --config.model (e.g. smollm2 or an HF directory)")
    return spec


def source_model_files(cfg: Mapping[str, Any], store: Store) -> tuple[str, ModelFiles]:
    """``(spec, files)`` of the model that made ``store`` (:func:`model_spec`), checked against its fingerprint.

    Raises:
      ConfigError: naming 'model' when none is named, or the named one is not the store's.
    """
    spec = model_spec(cfg, store)
    files = resolve_model(spec)
    if files.fingerprint() != store.manifest["model_hash"]:
        raise ConfigError(f"config field 'model': {files.name} is not the model that made store {store.url} "
                          f"(fingerprint {files.fingerprint()} != {store.manifest['model_hash']})")
    return spec, files


def evaluation_rows(store: Store, hooks: list[str], cfg: Mapping[str, Any], train_cfg: Mapping[str, Any],
                    own: bool, exclude_bos: bool) -> tuple[ActivationBuffer, dict[str, np.ndarray]]:
    """The buffer over ``hooks`` and up to ``cfg.eval_tokens`` of its rows: the held-out chunks of the run's own
    split when the store is the run's (``own``; ``train_cfg``'s seed, holdout fraction, mixing), else the store's
    rows from its start. ``train_cfg`` is ``{}`` for an imported SAE (the buffer's defaults)."""
    buffer = ActivationBuffer(store, hooks, cfg["batch_size"], train_cfg.get("seed", 0),
                              train_cfg["holdout_fraction"] if own else 0.0, train_cfg.get("mixing_chunks", 16),
                              exclude_bos, on_nonfinite=train_cfg.get("on_nonfinite", "error"))
    return buffer, buffer.holdout(cfg["eval_tokens"]) if own else buffer.first_rows(cfg["eval_tokens"])
