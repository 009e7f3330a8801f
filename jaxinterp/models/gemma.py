"""Gemma-2 and Gemma-3 (text) in JAX: the sandwich-norm decoder of transformers' ``modeling_gemma2`` /
``modeling_gemma3``.

Per layer: ``x + post_attention_layernorm(attn(input_layernorm(x)))``, then
``+ post_feedforward_layernorm(mlp(pre_feedforward_layernorm(.)))``, every norm Gemma's ``(1 + w)``
RMSNorm in float32; a GeGLU MLP (``hidden_activation``, tanh-GELU); token embeddings times
``sqrt(hidden_size)`` cast to the embedding dtype (as ``Gemma2TextScaledWordEmbedding``); attention
scores times ``query_pre_attn_scalar ** -0.5``; sliding windows on the layers ``layer_types`` names
``sliding_attention``. Gemma-2 soft-caps the attention logits (``attn_logit_softcapping``) and
both soft-cap the final logits (``final_logit_softcapping``) when set. Gemma-3 adds a per-head
``(1 + w)`` RMSNorm of q and k before RoPE and gives each layer type its own RoPE
(``rope_parameters[layer_type]``: ``rope_local_base_freq`` for sliding layers, ``rope_theta`` and
any scaling for full ones). The hooks read what the residual stream adds: ``hook_attn_out`` and
``hook_mlp_out`` are the post-norm outputs. What this does not compute is refused first
(:mod:`jaxinterp.models.support`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxinterp.models.layers import (ACTIVATIONS, GemmaRMSNorm, Hook, Linear, grouped_attention, no_hook, param,
                                     pre_mlp, rope_inv_freq, rope_tables, softcap)

__all__ = ["GemmaConfig", "config_from_hf", "Gemma", "GemmaBlock", "MODEL_TYPES", "build"]

MODEL_TYPES = ("gemma2", "gemma3_text")


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    """What the math needs beyond the shapes (which come from the weights)."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_size: int
    rms_norm_eps: float
    layer_types: tuple[str, ...]  # per layer: "full_attention" or "sliding_attention"
    windows: tuple[int | None, ...]  # per layer: the sliding window or None
    inv_freq: dict  # layer type -> rotary inverse frequencies [head_dim // 2], float32
    attn_scale: float  # query_pre_attn_scalar ** -0.5
    activation: str  # hidden_activation
    attn_softcap: float | None = None
    final_softcap: float | None = None
    bias: bool = False  # attention_bias: q/k/v/o biases
    qk_norm: bool = False  # Gemma-3


def head_dim(cfg: Any) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _layer_rope(cfg: Any, layer_type: str) -> dict:
    """The RoPE parameters of one layer type: Gemma-3 nests them per type, Gemma-2 has one for all."""
    params = getattr(cfg, "rope_parameters", None) or {"rope_type": "default", "rope_theta": 10000.0}
    return params[layer_type] if cfg.model_type == "gemma3_text" else params


def config_from_hf(cfg: Any) -> GemmaConfig:
    """The :class:`GemmaConfig` of a gemma2 / gemma3_text HF config (already checked by support.py)."""
    layer_types = tuple(cfg.layer_types)
    gemma3 = cfg.model_type == "gemma3_text"
    return GemmaConfig(
        n_layers=cfg.num_hidden_layers, n_heads=cfg.num_attention_heads, n_kv_heads=cfg.num_key_value_heads,
        hidden_size=cfg.hidden_size, rms_norm_eps=cfg.rms_norm_eps, layer_types=layer_types,
        windows=tuple(cfg.sliding_window if kind == "sliding_attention" else None for kind in layer_types),
        inv_freq={kind: rope_inv_freq(_layer_rope(cfg, kind), head_dim(cfg)) for kind in sorted(set(layer_types))},
        attn_scale=cfg.query_pre_attn_scalar ** -0.5, activation=cfg.hidden_activation,
        # transformers' gemma3 attention never passes attn_logit_softcapping on (support.py refuses it set)
        attn_softcap=None if gemma3 else cfg.attn_logit_softcapping, final_softcap=cfg.final_logit_softcapping,
        bias=bool(getattr(cfg, "attention_bias", False)), qk_norm=gemma3)


class GemmaBlock(nnx.Module):
    """One decoder layer; ``attention`` and ``mlp`` include their pre- and post-norms."""

    def __init__(self, w: Mapping[str, np.ndarray], layer: int, cfg: GemmaConfig, dtype: jnp.dtype):
        prefix = f"model.layers.{layer}."
        lin = lambda name, bias: Linear(w[f"{prefix}{name}.weight"].T, w[f"{prefix}{name}.bias"] if bias else None,
                                        dtype)
        norm = lambda name: GemmaRMSNorm(w[f"{prefix}{name}.weight"], cfg.rms_norm_eps, dtype)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (lin(f"self_attn.{n}_proj", cfg.bias) for n in "qkvo")
        self.gate_proj, self.up_proj, self.down_proj = (lin(f"mlp.{n}_proj", False) for n in ("gate", "up", "down"))
        self.q_norm, self.k_norm = (norm("self_attn.q_norm"), norm("self_attn.k_norm")) if cfg.qk_norm else (None, None)
        self.input_layernorm, self.post_attention_layernorm = norm("input_layernorm"), norm("post_attention_layernorm")
        self.pre_feedforward_layernorm = norm("pre_feedforward_layernorm")
        self.post_feedforward_layernorm = norm("post_feedforward_layernorm")
        self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.n_kv_heads
        self.layer_type, self.window = cfg.layer_types[layer], cfg.windows[layer]
        self.attn_scale, self.attn_softcap, self.activation = cfg.attn_scale, cfg.attn_softcap, cfg.activation

    def attention(self, x: jax.Array, rope: dict, hook: Hook = no_hook, cache: Any = None) -> jax.Array:
        cos, sin = rope[self.layer_type]
        out = grouped_attention(self, self.input_layernorm(x), cos, sin, self.window, self.attn_scale,
                                self.attn_softcap, cache=cache)
        return self.post_attention_layernorm(self.o_proj(hook("attn.hook_z", out)))

    def mlp(self, x: jax.Array, rope=None, hook: Hook = no_hook) -> jax.Array:
        h = pre_mlp(self.pre_feedforward_layernorm, x, hook)
        out = self.down_proj(hook("mlp.hook_post", ACTIVATIONS[self.activation](self.gate_proj(h)) * self.up_proj(h)))
        return self.post_feedforward_layernorm(out)


class Gemma(nnx.Module):
    """Gemma-2 / Gemma-3 text causal LM."""

    def __init__(self, w: Mapping[str, np.ndarray], cfg: GemmaConfig, dtype: jnp.dtype):
        self.embed_tokens = param(w["model.embed_tokens.weight"], dtype)
        self.layers = nnx.List([GemmaBlock(w, i, cfg, dtype) for i in range(cfg.n_layers)])
        self.norm = GemmaRMSNorm(w["model.norm.weight"], cfg.rms_norm_eps, dtype)
        self.lm_head = Linear(w.get("lm_head.weight", w["model.embed_tokens.weight"]).T, None, dtype)
        # static: (layer type, float32 frequencies as Python floats), exact when converted back
        self.inv_freq = tuple((kind, tuple(float(f) for f in freq)) for kind, freq in cfg.inv_freq.items())
        self.normalizer = math.sqrt(cfg.hidden_size)  # hidden_size ** 0.5, cast to the embedding dtype when applied
        self.final_softcap = cfg.final_softcap

    def embed(self, tokens: jax.Array) -> jax.Array:
        table = self.embed_tokens[...]
        return jnp.take(table, tokens, axis=0) * jnp.asarray(self.normalizer, jnp.float32).astype(table.dtype)

    def add_positions(self, x: jax.Array) -> jax.Array:
        return x  # positions enter through the rotary embedding

    def rope(self, seq: int, dtype: jnp.dtype, positions: jax.Array | None = None) -> dict:
        return {kind: rope_tables(np.asarray(freq, np.float32), seq, dtype, positions) for kind, freq in self.inv_freq}

    def unembed(self, x: jax.Array) -> jax.Array:
        return softcap(self.lm_head(self.norm(x)), self.final_softcap)


def build(cfg: Any, weights: Mapping[str, np.ndarray], dtype: jnp.dtype) -> Gemma:
    """The model of a gemma2 / gemma3_text HF config and its HF-named weights."""
    return Gemma(weights, config_from_hf(cfg), dtype)
