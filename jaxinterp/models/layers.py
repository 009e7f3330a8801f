"""Building blocks the JAX source-model families compose: linear maps, norms, rotary tables, attention.

Small functions and leaf modules, each computed the way transformers computes it (norms in float32,
softmax in float32, rotary angles in float32). A family module (:mod:`jaxinterp.models.llama`,
:mod:`jaxinterp.models.gpt2`) builds its blocks from these; nothing here knows a model type.

Every parameter is made by :func:`param`: from a numpy array it is a device array in the model dtype; from a
:class:`~jaxinterp.models.checkpoint.TensorRef` it stays an unread ref in the model dtype, so a model built
from :func:`~jaxinterp.models.checkpoint.lazy_safetensors` allocates nothing until
:func:`~jaxinterp.models.checkpoint.place` reads each device's slice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxinterp.models.checkpoint import TensorRef
from jaxinterp.models.support import ROPE_TYPES

__all__ = ["ACTIVATIONS", "Hook", "no_hook", "pre_mlp", "Weight", "param", "Linear", "RMSNorm", "GemmaRMSNorm",
           "LayerNorm", "ROPE_TYPES", "attend", "causal_mask", "rope_inv_freq", "rope_tables", "rotate", "softcap",
           "grouped_attention"]

# transformers' ACT2FN names -> the same function in JAX (the tanh approximation for gelu_new and gelu_pytorch_tanh)
ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


# hook(kind, activation) -> activation: what a block calls at each of its sub-block hook points
# ("attn.hook_z", "ln2.hook_normalized", "mlp.hook_in", "mlp.hook_post"); the identity when nothing is hooked
Hook = Callable[[str, jax.Array], jax.Array]


def no_hook(kind: str, x: jax.Array) -> jax.Array:
    return x


def pre_mlp(norm, x: jax.Array, hook: Hook) -> jax.Array:
    """The pre-MLP ``norm`` of ``x`` through the ``ln2.hook_normalized`` (before the weight) and
    ``mlp.hook_in`` (after it) hook points."""
    return hook("mlp.hook_in", norm.scale(hook("ln2.hook_normalized", norm.normalize(x)), x.dtype))


# A parameter's source: an array, or a checkpoint tensor not read yet
Weight = np.ndarray | TensorRef


def param(value: Weight, dtype: jnp.dtype) -> nnx.Param:
    """The parameter ``value`` in ``dtype``: a device array, or for a ``TensorRef`` the ref itself (read when placed)."""
    if isinstance(value, TensorRef):
        return nnx.Param(value.astype(dtype))
    return nnx.Param(jnp.asarray(value, dtype))


class Linear(nnx.Module):
    """``x @ kernel + bias`` with ``kernel`` [in, out]."""

    def __init__(self, kernel: Weight, bias: Weight | None, dtype: jnp.dtype):
        self.kernel = param(kernel, dtype)
        self.bias = param(bias, dtype) if bias is not None else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x @ self.kernel[...]
        return y + self.bias[...] if self.bias is not None else y


def rms_normalize(x: jax.Array, eps: float) -> jax.Array:
    """``x * rsqrt(mean(x²) + eps)`` over the last axis, in float32 as transformers computes it."""
    x32 = x.astype(jnp.float32)
    return x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)


class RMSNorm(nnx.Module):
    """Llama RMSNorm over the last axis, computed in float32 like transformers."""

    def __init__(self, weight: Weight, eps: float, dtype: jnp.dtype):
        self.weight, self.eps = param(weight, dtype), eps

    def normalize(self, x: jax.Array) -> jax.Array:
        """``x * rsqrt(mean(x²) + eps)`` in float32: what the norm computes before its weight."""
        return rms_normalize(x, self.eps)

    def scale(self, normed: jax.Array, dtype: jnp.dtype) -> jax.Array:
        """The weight applied to ``normed`` (cast to the input ``dtype`` first, as transformers)."""
        return self.weight[...] * normed.astype(dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.scale(self.normalize(x), x.dtype)


class GemmaRMSNorm(nnx.Module):
    """Gemma's RMSNorm: ``normed(x) * (1 + weight)``, both factors in float32, then cast back (transformers'
    ``Gemma2RMSNorm`` / ``Gemma3RMSNorm``, which multiply before casting, unlike Llama's)."""

    def __init__(self, weight: Weight, eps: float, dtype: jnp.dtype):
        self.weight, self.eps = param(weight, dtype), eps

    def normalize(self, x: jax.Array) -> jax.Array:
        """``x * rsqrt(mean(x²) + eps)`` in float32, before the ``(1 + weight)`` multiply."""
        return rms_normalize(x, self.eps)

    def scale(self, normed: jax.Array, dtype: jnp.dtype) -> jax.Array:
        return (normed.astype(jnp.float32) * (1.0 + self.weight[...].astype(jnp.float32))).astype(dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.scale(self.normalize(x), x.dtype)


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
    """``cap * tanh(x / cap)`` (Gemma-2's attention-logit and final-logit soft-capping); ``x`` when ``cap`` is None."""
    return x if cap is None else jnp.tanh(x / cap) * cap


class LayerNorm(nnx.Module):
    """GPT-2 LayerNorm, computed in float32."""

    def __init__(self, weight: Weight, bias: Weight, eps: float, dtype: jnp.dtype):
        self.weight, self.bias, self.eps = param(weight, dtype), param(bias, dtype), eps

    def normalize(self, x: jax.Array) -> jax.Array:
        """``(x - mean) * rsqrt(var + eps)`` in float32: what the norm computes before its weight and bias."""
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        return (x32 - mean) * jax.lax.rsqrt(var + self.eps)

    def scale(self, normed: jax.Array, dtype: jnp.dtype) -> jax.Array:
        return normed.astype(dtype) * self.weight[...] + self.bias[...]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.scale(self.normalize(x), x.dtype)


def causal_mask(seq: int, window: int | None = None) -> jax.Array:
    """[seq, seq] bool, True where query q may attend key k: ``k <= q``, and with a sliding ``window``
    also ``k > q - window`` (the last ``window`` keys, the query's own included, as transformers'
    ``sliding_window_overlay``)."""
    q, k = jnp.arange(seq)[:, None], jnp.arange(seq)[None, :]
    return (k <= q) & (k > q - window) if window is not None else k <= q


def attend(q: jax.Array, k: jax.Array, v: jax.Array, window: int | None = None, scale: float | None = None,
           logit_cap: float | None = None, mask: jax.Array | None = None) -> jax.Array:
    """Causal softmax attention over [batch, seq, heads, head_dim]; kv heads repeated for GQA.

    Scores are scaled by 1/sqrt(head_dim) (or multiplied by ``scale``: Gemma's
    ``query_pre_attn_scalar ** -0.5``), soft-capped by ``logit_cap`` before the mask (Gemma-2) and
    softmaxed in float32; ``window`` restricts each query to the last ``window`` keys (:func:`causal_mask`).
    ``mask`` (bool, broadcast to [batch, heads, q, k]) replaces that causal mask: a KV cache's keys are not the
    queries' own sequence (:func:`jaxinterp.models.kv_cache.cache_mask`, which applies ``window`` itself).
    """
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    scores = softcap(scores / math.sqrt(q.shape[-1]) if scale is None else scores * scale, logit_cap)
    mask = causal_mask(q.shape[1], window) if mask is None else mask
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def rope_inv_freq(rope: dict, head_dim: int) -> np.ndarray:
    """The rotary inverse frequencies [head_dim // 2] (float32) of an HF ``rope_parameters`` dict.

    ``rope_type`` default, ``linear`` (every frequency divided by ``factor``) or ``llama3`` (Llama
    3.1's rescaling: wavelengths beyond ``original_max_position_embeddings / low_freq_factor``
    divided by ``factor``, those below ``... / high_freq_factor`` kept, a smooth blend between), in
    the float32 operations of transformers' ``modeling_rope_utils``. Both leave the attention
    scaling at 1. Other types (dynamic, yarn, longrope, ...) are refused by support.py first.
    """
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise NotImplementedError(f"rope_type {rope_type!r} (implemented: {', '.join(ROPE_TYPES)})")
    inv_freq = 1.0 / (rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    if rope_type == "linear":
        return (inv_freq / np.float32(rope["factor"])).astype(np.float32)
    if rope_type == "llama3":
        factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old_context = rope["original_max_position_embeddings"]
        wavelen = np.float32(2 * math.pi) / inv_freq
        scaled = np.where(wavelen > old_context / low, inv_freq / np.float32(factor), inv_freq)
        smooth = (np.float32(old_context) / wavelen - np.float32(low)) / np.float32(high - low)
        smoothed = (1 - smooth) * scaled / np.float32(factor) + smooth * scaled
        medium = ~(wavelen < old_context / high) & ~(wavelen > old_context / low)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    return inv_freq.astype(np.float32)


def rope_tables(inv_freq: np.ndarray, seq: int, dtype: jnp.dtype,
                positions: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """``(cos, sin)`` [1, seq, 1, head_dim] for positions 0..seq-1, the angles computed in float32.

    With ``positions`` [batch, seq] (int: each row's own, as a KV cache's left-padded rows have) the
    tables are [batch, seq, 1, head_dim], each angle the same float32 product as for that position.
    """
    if positions is not None:
        freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
        angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
        return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)
    freqs = jnp.arange(seq, dtype=jnp.float32)[:, None] * jnp.asarray(inv_freq)[None, :]
    angles = jnp.concatenate([freqs, freqs], axis=-1)[None, :, None, :]
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotary embedding on [batch, seq, heads, head_dim], half-split pairs (transformers' rotate_half).

    A table narrower than ``head_dim`` (GPT-NeoX's partial rotary) rotates the first ``cos.shape[-1]``
    dimensions of each head and passes the rest through, as transformers' ``apply_rotary_pos_emb`` does.
    """
    if cos.shape[-1] < x.shape[-1]:
        dim = cos.shape[-1]
        return jnp.concatenate([rotate(x[..., :dim], cos, sin), x[..., dim:]], axis=-1)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def grouped_attention(block: Any, h: jax.Array, cos: jax.Array, sin: jax.Array, window: int | None = None,
                      scale: float | None = None, logit_cap: float | None = None, cache: Any = None) -> jax.Array:
    """Rotary GQA self-attention of the normed input ``h`` [b, s, d] → per-head outputs [b, s, heads * head_dim].

    The Llama-style steps before the output projection: q/k/v projections (``block.q_proj``,
    ``k_proj``, ``v_proj``) split into ``block.n_heads`` query and ``block.n_kv_heads`` key/value
    heads, the per-head q/k norms when ``block.q_norm`` is not None (``block.k_norm`` with it),
    rotary embedding of q and k by ``cos`` / ``sin``, and :func:`attend` (``window``, ``scale``,
    ``logit_cap``). What a block adds after (the ``attn.hook_z`` hook, ``o_proj``, a post-norm) is
    its own. With ``cache`` (a :class:`jaxinterp.models.kv_cache.LayerCache`) the rotated keys and values are
    appended to it and the queries attend everything it holds instead.
    """
    b, s, _ = h.shape
    q = block.q_proj(h).reshape(b, s, block.n_heads, -1)
    k = block.k_proj(h).reshape(b, s, block.n_kv_heads, -1)
    v = block.v_proj(h).reshape(b, s, block.n_kv_heads, -1)
    if block.q_norm is not None:
        q, k = block.q_norm(q), block.k_norm(k)
    if cache is not None:
        return cache.attend(rotate(q, cos, sin), rotate(k, cos, sin), v, window, scale, logit_cap).reshape(b, s, -1)
    out = attend(rotate(q, cos, sin), rotate(k, cos, sin), v, window, scale, logit_cap)
    return out.reshape(b, s, -1)
