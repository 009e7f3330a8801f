"""Packing tokenised documents into fixed-length contexts, with document id and position per token.

Documents are concatenated, each followed by the separator (EOS); the stream is cut into contexts
of ``context_size`` tokens, each starting with BOS when ``prepend_bos`` (then the BOS token takes
the document id of the token after it). A final partial context is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from jaxinterp.config import ConfigError

__all__ = ["Packed", "check_max_tokens", "pack_documents"]


class Packed(NamedTuple):
    """Token-major arrays of shape ``[n_contexts, context_size]``."""

    tokens: np.ndarray  # int32
    doc: np.ndarray  # int64, index of the source document
    pos: np.ndarray  # int32, position within the context


def pack_documents(
    token_ids: Sequence[Sequence[int]],
    context_size: int,
    *,
    bos_id: int | None,
    separator_id: int | None,
    prepend_bos: bool = True,
    max_tokens: int = 0,
    corpus: str = "the corpus",
) -> Packed:
    """Packs documents into contexts.

    Args:
      token_ids: one token list per document (no special tokens added).
      context_size: tokens per context, BOS included.
      bos_id: BOS token, required when ``prepend_bos``.
      separator_id: token appended after each document (``None`` for none).
      prepend_bos: start every context with BOS.
      max_tokens: keep at most this many tokens (whole contexts); 0 keeps all.
      corpus: what the documents came from, named when they do not fill one context.

    Raises:
      ConfigError: naming ``prepend_bos``, ``context_size``, ``max_tokens`` or (too few tokens) ``data``.
    """
    if prepend_bos and bos_id is None:
        raise ConfigError("config field 'prepend_bos': set, but the tokenizer has no BOS token; set it to false")
    body = context_size - (1 if prepend_bos else 0)
    if body < 1:
        raise ConfigError(f"config field 'context_size' must leave room for tokens, got {context_size}")
    check_max_tokens(max_tokens, context_size)
    pieces, docs = [], []
    for index, ids in enumerate(token_ids):
        ids = list(ids) + ([separator_id] if separator_id is not None else [])
        pieces.append(np.asarray(ids, dtype=np.int32))
        docs.append(np.full(len(ids), index, dtype=np.int64))
    stream = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    stream_doc = np.concatenate(docs) if docs else np.zeros(0, np.int64)
    n_contexts = len(stream) // body
    if max_tokens:
        n_contexts = min(n_contexts, max_tokens // context_size)
    if n_contexts == 0:
        raise ConfigError(
            f"config field 'data': corpus too small: {corpus} has {len(stream)} tokens (separators included), but one "
            f"context of context_size={context_size} needs {body}; use a larger corpus or a smaller context_size"
        )
    tokens = stream[: n_contexts * body].reshape(n_contexts, body)
    doc = stream_doc[: n_contexts * body].reshape(n_contexts, body)
    if prepend_bos:
        tokens = np.concatenate([np.full((n_contexts, 1), bos_id, np.int32), tokens], axis=1)
        doc = np.concatenate([doc[:, :1], doc], axis=1)
    pos = np.broadcast_to(np.arange(context_size, dtype=np.int32), tokens.shape).copy()
    return Packed(tokens, doc, pos)


def check_max_tokens(max_tokens: int, context_size: int) -> None:
    """``max_tokens`` keeps whole contexts, so a nonzero value below one context would keep none."""
    if 0 < max_tokens < context_size:
        raise ConfigError(
            f"config field 'max_tokens': {max_tokens} is below one context of context_size={context_size}; "
            f"raise it to at least {context_size}, or 0 for the whole corpus"
        )
