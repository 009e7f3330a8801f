"""A key/value cache for the JAX source models: fixed-size arrays per layer, left-padded rows, one pass per call.

Per layer the cache holds keys and values [batch, max_len, kv_heads, head_dim] for slots 0..max_len-1.
Row r's real tokens start at slot ``start[r]`` (the left padding before it is never attended), so slot j
holds the token at position ``j - start[r]``. A call (:func:`cached_forward`) writes its tokens at slots
``length .. length + seq - 1``, the same slots in every row, and each query attends its row's keys from
``start[r]`` up to its own slot (and within the layer's sliding window), rotated at the row's own
positions: exactly the keys and positions of the uncached forward of that row's tokens alone, so only
float rounding (reductions over a longer, zero-weighted key axis) separates the two.

The families' attentions reach the cache through ``grouped_attention(..., cache=)``; the Llama family
(Llama, Mistral, Qwen2, SmolLM), Qwen3 and Gemma-2/3 use it. GPT-2 (learned positions) and GPT-NeoX
(its own attention) are refused by :func:`check_cached`, in one line.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxinterp.models.layers import attend
from jaxinterp.models.support import UnsupportedModelError
from jaxinterp.models.transformer import Edit, hooked_forward

__all__ = ["CACHED_MODEL_TYPES", "KVCache", "LayerCache", "cache_mask", "cached_forward", "check_cached",
           "empty_cache", "prefixed_last_logits"]

# the model types whose attention goes through grouped_attention, and so through the cache
CACHED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text")


class KVCache(NamedTuple):
    """Every layer's keys and values (a pytree, so it crosses ``jit`` and ``lax.while_loop``)."""

    keys: tuple[jax.Array, ...]  # per layer [batch, max_len, kv_heads, head_dim]
    values: tuple[jax.Array, ...]
    start: jax.Array  # [batch] int32: each row's first real slot (left padding before it)
    length: jax.Array  # int32 scalar: the slots written so far, where the next call's tokens go


def check_cached(model_type: str) -> None:
    """Raises ``UnsupportedModelError`` (one line) for a model type whose JAX attention has no KV cache."""
    if model_type not in CACHED_MODEL_TYPES:
        raise UnsupportedModelError(f"generation with the JAX backend's KV cache does not cover model type "
                                    f"{model_type!r} (it covers {', '.join(CACHED_MODEL_TYPES)}); load the model "
                                    "with backend='torch' to generate with transformers' cache")


def empty_cache(model: nnx.Module, batch: int, max_len: int, start: jax.Array) -> KVCache:
    """A zero cache of ``max_len`` slots for ``batch`` rows whose real tokens begin at slots ``start`` [batch]."""
    keys = []
    for block in model.layers:
        width = block.k_proj.kernel.shape[1]  # kv_heads * head_dim, from the weights as the families read it
        keys.append(jnp.zeros((batch, max_len, block.n_kv_heads, width // block.n_kv_heads),
                              block.k_proj.kernel.dtype))
    return KVCache(tuple(keys), tuple(keys), jnp.asarray(start, jnp.int32), jnp.asarray(0, jnp.int32))


def cache_mask(start: jax.Array, offset: jax.Array, seq: int, max_len: int, window: int | None) -> jax.Array:
    """[batch, 1, seq, max_len] bool: query ``i`` (slot ``offset + i``) may attend slot ``k`` of its row when
    ``start <= k <= offset + i`` and, with a sliding ``window``, ``k > offset + i - window`` (slot gaps are
    position gaps within a row, so this is :func:`~jaxinterp.models.layers.causal_mask`'s window)."""
    q = offset + jnp.arange(seq)[:, None]
    k = jnp.arange(max_len)[None, :]
    allowed = (k <= q) & (k > q - window) if window is not None else k <= q
    return allowed[None, None] & (k >= start[:, None, None, None])


class LayerCache:
    """One layer's cache during one traced call: the arrays in, and once the attention has run, the arrays out.

    A carrier, not state: :func:`cached_forward` makes one per layer for each trace and reads it back at once.
    """

    def __init__(self, keys: jax.Array, values: jax.Array, start: jax.Array, offset: jax.Array):
        self.keys, self.values, self.start, self.offset = keys, values, start, offset

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, window: int | None, scale: float | None,
               logit_cap: float | None) -> jax.Array:
        """Writes ``k``/``v`` [b, seq, kv_heads, head_dim] at this call's slots, then attends the whole cache."""
        self.keys = jax.lax.dynamic_update_slice_in_dim(self.keys, k.astype(self.keys.dtype), self.offset, axis=1)
        self.values = jax.lax.dynamic_update_slice_in_dim(self.values, v.astype(self.values.dtype), self.offset,
                                                          axis=1)
        mask = cache_mask(self.start, self.offset, q.shape[1], self.keys.shape[1], window)
        return attend(q, self.keys, self.values, scale=scale, logit_cap=logit_cap, mask=mask)


def cached_forward(model: nnx.Module, tokens: jax.Array, cache: KVCache,
                   edit: Edit | None = None) -> tuple[jax.Array, KVCache]:
    """``tokens`` [batch, seq] appended to ``cache``: returns (float32 logits of each row's last token
    [batch, vocab], the cache with them written). ``edit`` sees every hook point, as in ``hooked_forward``.

    The prefill is one call with the left-padded prompts (``cache.start`` their padding), each decode step a
    call with one token per row. Only the last position is unembedded: generation reads nothing else.
    """
    seq = tokens.shape[1]
    positions = jnp.maximum(cache.length + jnp.arange(seq)[None, :] - cache.start[:, None], 0)
    layers = [LayerCache(k, v, cache.start, cache.length) for k, v in zip(cache.keys, cache.values)]
    last = f"blocks.{len(model.layers) - 1}.hook_resid_post"
    _, captured = hooked_forward(model, tokens, frozenset({last}), edit=edit, positions=positions, kv=layers)
    logits = model.unembed(captured[last][:, -1:])[:, 0].astype(jnp.float32)
    return logits, KVCache(tuple(layer.keys for layer in layers), tuple(layer.values for layer in layers),
                           cache.start, cache.length + seq)



def prefixed_last_logits(model: nnx.Module, prefix: jax.Array, start: jax.Array, suffixes: jax.Array,
                         last: jax.Array) -> jax.Array:
    """Next-token logits [batch, vocab] float32 of ``prefix + suffixes[b]`` at suffix position ``last[b]``, the
    shared ``prefix`` [1, P] (left-padded: its real tokens from slot ``start``) run once and its keys and values
    shared by every row: many prompts that differ only at their end (a scorer's, one explanation and many
    examples) cost one prefix plus their suffixes. ``suffixes`` [batch, S] are right-padded; causal attention
    leaves position ``last[b]`` as it is unpadded."""
    batch, seq = suffixes.shape
    _, cache = cached_forward(model, prefix, empty_cache(model, 1, prefix.shape[1] + seq, start[None]))
    shared = [LayerCache(jnp.broadcast_to(k, (batch, *k.shape[1:])), jnp.broadcast_to(v, (batch, *v.shape[1:])),
                         jnp.broadcast_to(cache.start, (batch,)), cache.length)
              for k, v in zip(cache.keys, cache.values)]
    positions = cache.length + jnp.arange(seq)[None, :] - start
    final = f"blocks.{len(model.layers) - 1}.hook_resid_post"
    _, captured = hooked_forward(model, suffixes, frozenset({final}), positions=positions, kv=shared)
    rows = captured[final][jnp.arange(batch), last]
    return model.unembed(rows[:, None])[:, 0].astype(jnp.float32)
