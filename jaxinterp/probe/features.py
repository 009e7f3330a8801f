"""Probe features: source-model activations pooled per text at extraction time, or SAE latents.

Texts are tokenised without special tokens, optionally behind a BOS, sorted by length and run in
right-padded batches. Causal attention makes every real position independent of the padding
after it, so no attention mask is needed, and pooling only ever reads real text positions:

- ``last``: the last token of the text;
- ``mean`` / ``max``: over the text's tokens, BOS and padding excluded;
- ``token``: one row per text token (BOS excluded), with ``text_index`` / ``position`` per row.

Only the pooled rows are kept, so a 30-layer sweep never holds every token's activations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

from jaxinterp.config import ConfigError

__all__ = ["POOLINGS", "Pooled", "tokenize_texts", "pool_activations"]

POOLINGS = ("last", "mean", "max", "token")
_LENGTH_MULTIPLE = 8  # padded lengths are rounded up to this, so the JAX backend compiles few shapes


class Pooled(NamedTuple):
    """Pooled rows per hook, and where each row came from.

    Attributes:
      features: ``{hook: [rows, d_model] float32}``.
      text_index: ``[rows]`` the text each row belongs to.
      position: ``[rows]`` the row's token position within its text (BOS not counted); -1 for
        mean/max pooling.
    """

    features: dict[str, np.ndarray]
    text_index: np.ndarray
    position: np.ndarray


def tokenize_texts(tokenizer, texts: Sequence[str], max_length: int, prepend_bos: bool) -> list[np.ndarray]:
    """Token ids per text (BOS first when ``prepend_bos``), truncated to ``max_length`` in all.

    Raises:
      ConfigError: for a text with no tokens (naming its row).
    """
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    prefix = [tokenizer.bos_token_id] if prepend_bos else []
    out = []
    for row, tokens in enumerate(ids):
        if not tokens:
            raise ConfigError(f"config field 'data': text at row {row} has no tokens")
        out.append(np.asarray((prefix + list(tokens))[:max_length], np.int32))
    return out


def _batches(lengths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Text indices grouped longest-first so that rows × padded length stays under ``batch_tokens``."""
    order = np.argsort(-lengths, kind="stable")
    groups, current = [], []
    for index in order:
        padded = -(-int(lengths[current[0] if current else index]) // _LENGTH_MULTIPLE) * _LENGTH_MULTIPLE
        if current and (len(current) + 1) * padded > batch_tokens:
            groups.append(np.asarray(current))
            current = []
        current.append(index)
    if current:
        groups.append(np.asarray(current))
    return groups


def pool_activations(model, token_lists: Sequence[np.ndarray], hooks: Sequence[str], pooling: str,
                     skip_first: bool, pad_id: int = 0, batch_tokens: int = 8192,
                     progress: bool = False) -> Pooled:
    """Runs the source model over tokenised texts and pools each hook's activations.

    Args:
      model: a source model from :func:`jaxinterp.models.load_source_model` (either backend).
      token_lists: token ids per text, from :func:`tokenize_texts`.
      hooks: hook names, e.g. ``["blocks.3.hook_resid_post", "blocks.6.hook_resid_post"]``.
      pooling: one of :data:`POOLINGS`.
      skip_first: the first token is a BOS that mean/max/token pooling must skip.
      pad_id: token used for right padding (never read back).
      batch_tokens: padded tokens per forward pass.
    """
    if pooling not in POOLINGS:
        raise ConfigError(f"config field 'pooling' must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    lengths = np.asarray([len(t) for t in token_lists])
    first = 1 if skip_first else 0
    if (lengths <= first).any():
        row = int(np.flatnonzero(lengths <= first)[0])
        raise ConfigError(f"config field 'data': text at row {row} has no tokens after BOS")
    counts = lengths - first if pooling == "token" else np.ones_like(lengths)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    features: dict[str, np.ndarray] = {}
    text_index = np.repeat(np.arange(len(lengths)), counts)
    if pooling == "token":
        position = np.arange(offsets[-1]) - np.repeat(offsets[:-1], counts)
    elif pooling == "last":
        position = lengths - 1 - first
    else:
        position = np.full(len(lengths), -1)
    bar = tqdm(total=int(lengths.sum()), unit="tok", unit_scale=True, desc="features", disable=not progress)
    for group in _batches(lengths, batch_tokens):
        width = -(-int(lengths[group].max()) // _LENGTH_MULTIPLE) * _LENGTH_MULTIPLE
        tokens = np.full((len(group), width), pad_id, np.int32)
        for row, index in enumerate(group):
            tokens[row, : lengths[index]] = token_lists[index]
        for hook, value in model.run(tokens, hooks).items():
            value = np.asarray(value, np.float32)
            out = features.setdefault(hook, np.empty((offsets[-1], value.shape[-1]), np.float32))
            for row, index in enumerate(group):
                span = value[row, first: lengths[index]]
                if pooling == "token":
                    out[offsets[index]: offsets[index + 1]] = span
                elif pooling == "last":
                    out[index] = span[-1]
                elif pooling == "mean":
                    out[index] = span.mean(0)
                else:
                    out[index] = span.max(0)
        bar.update(int(lengths[group].sum()))
    bar.close()
    return Pooled(features, text_index, position)
