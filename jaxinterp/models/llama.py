"""The Llama family in JAX (Llama, Mistral, Qwen2, SmolLM): RMSNorm, rotary embeddings (default, linear
or llama3 RoPE), GQA, SwiGLU, sliding-window attention on the layers the model type slides.

:class:`LlamaConfig` is what the math needs, read from the HF config by :func:`config_from_hf` (the
attributes it does not handle are refused before, by :mod:`jaxinterp.models.support`); the model
is built from HF-named weights. Qwen2 has q/k/v biases; Llama's ``attention_bias`` / ``mlp_bias``
add q/k/v/o and MLP biases; Mistral has none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxinterp.models.layers import (Hook, Linear, RMSNorm, grouped_attention, no_hook, param, pre_mlp, rope_inv_freq,
                                     rope_tables)

__all__ = ["LlamaConfig", "config_from_hf", "Llama", "LlamaBlock", "MODEL_TYPES", "build"]

MODEL_TYPES = ("llama", "mistral", "qwen2")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """The shape-free part of a Llama-family model: shapes come from the weights."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    rms_norm_eps: float
    inv_freq: np.ndarray  # rotary inverse frequencies [head_dim // 2], float32
    windows: tuple[int | None, ...]  # per layer: the sliding window (keys, the query's own included) or None
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: per-head RMSNorm of q and k (``self_attn.q_norm`` / ``k_norm``) before RoPE


def head_dim(cfg: Any) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def rope_parameters(cfg: Any) -> dict:
    return getattr(cfg, "rope_parameters", None) or {"rope_type": "default",
                                                      "rope_theta": getattr(cfg, "rope_theta", 10000.0)}


def _biases(cfg: Any) -> tuple[bool, bool, bool]:
    """(q/k/v, o_proj, MLP) biases, as each model type's transformers modeling code decides them."""
    if cfg.model_type == "qwen2":
        return True, False, False
    if cfg.model_type == "llama":
        attention = bool(getattr(cfg, "attention_bias", False))
        return attention, attention, bool(getattr(cfg, "mlp_bias", False))
    return False, False, False  # mistral: no biases, whatever the config says


def windows(cfg: Any) -> tuple[int | None, ...]:
    """Each layer's sliding window, as the model type's transformers mask decides it.

    Mistral slides every layer when ``sliding_window`` is set; Qwen2 (and Qwen3) slide the layers
    ``layer_types`` names ``sliding_attention`` (from ``use_sliding_window`` and ``max_window_layers``
    unless given); Llama never slides.
    """
    n = cfg.num_hidden_layers
    if cfg.model_type == "llama":
        return (None,) * n
    if cfg.model_type == "mistral":
        return (getattr(cfg, "sliding_window", None),) * n
    return layer_type_windows(cfg)


def layer_type_windows(cfg: Any) -> tuple[int | None, ...]:
    """``sliding_window`` for the layers ``layer_types`` names ``sliding_attention``, None for the others."""
    types = getattr(cfg, "layer_types", None) or ("full_attention",) * cfg.num_hidden_layers
    return tuple(cfg.sliding_window if kind == "sliding_attention" else None for kind in types)


def config_from_hf(cfg: Any) -> LlamaConfig:
    """The :class:`LlamaConfig` of a llama / mistral / qwen2 HF config (already checked by support.py)."""
    qkv_bias, o_bias, mlp_bias = _biases(cfg)
    return LlamaConfig(n_layers=cfg.num_hidden_layers, n_heads=cfg.num_attention_heads,
                       n_kv_heads=cfg.num_key_value_heads, rms_norm_eps=cfg.rms_norm_eps,
                       inv_freq=rope_inv_freq(rope_parameters(cfg), head_dim(cfg)), windows=windows(cfg),
                       qkv_bias=qkv_bias, o_bias=o_bias, mlp_bias=mlp_bias)


class LlamaBlock(nnx.Module):
    """One decoder layer; ``attention`` and ``mlp`` include their pre-norms."""

    def __init__(self, w: Mapping[str, np.ndarray], layer: int, cfg: LlamaConfig, dtype: jnp.dtype):
        prefix = f"model.layers.{layer}."
        lin = lambda name, bias=False: Linear(w[f"{prefix}{name}.weight"].T,
                                             w.get(f"{prefix}{name}.bias") if bias else None, dtype)
        self.q_proj, self.k_proj, self.v_proj = (lin(f"self_attn.{n}_proj", cfg.qkv_bias) for n in "qkv")
        self.o_proj = lin("self_attn.o_proj", cfg.o_bias)
        self.gate_proj, self.up_proj, self.down_proj = (lin(f"mlp.{n}_proj", cfg.mlp_bias)
                                                        for n in ("gate", "up", "down"))
        norm = lambda name: RMSNorm(w[f"{prefix}self_attn.{name}.weight"], cfg.rms_norm_eps, dtype)
        self.q_norm, self.k_norm = (norm("q_norm"), norm("k_norm")) if cfg.qk_norm else (None, None)
        self.input_layernorm = RMSNorm(w[f"{prefix}input_layernorm.weight"], cfg.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(w[f"{prefix}post_attention_layernorm.weight"], cfg.rms_norm_eps, dtype)
        self.n_heads, self.n_kv_heads, self.window = cfg.n_heads, cfg.n_kv_heads, cfg.windows[layer]

    def attention(self, x: jax.Array, rope: tuple[jax.Array, jax.Array], hook: Hook = no_hook,
                  cache: Any = None) -> jax.Array:
        cos, sin = rope
        out = grouped_attention(self, self.input_layernorm(x), cos, sin, self.window, cache=cache)
        return self.o_proj(hook("attn.hook_z", out))

    def mlp(self, x: jax.Array, rope=None, hook: Hook = no_hook) -> jax.Array:
        h = pre_mlp(self.post_attention_layernorm, x, hook)
        return self.down_proj(hook("mlp.hook_post", jax.nn.silu(self.gate_proj(h)) * self.up_proj(h)))


class Llama(nnx.Module):
    """Llama-family causal LM."""

    def __init__(self, w: Mapping[str, np.ndarray], cfg: LlamaConfig, dtype: jnp.dtype):
        self.embed_tokens = param(w["model.embed_tokens.weight"], dtype)
        self.layers = nnx.List([LlamaBlock(w, i, cfg, dtype) for i in range(cfg.n_layers)])
        self.norm = RMSNorm(w["model.norm.weight"], cfg.rms_norm_eps, dtype)
        # tied checkpoints store the embedding only; transformers (5.x) keeps a stored lm_head even when tied
        head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
        self.lm_head = Linear(head.T, None, dtype)
        self.inv_freq = cfg.inv_freq

    def embed(self, tokens: jax.Array) -> jax.Array:
        return jnp.take(self.embed_tokens[...], tokens, axis=0)

    def add_positions(self, x: jax.Array) -> jax.Array:
        return x  # positions enter through the rotary embedding

    def rope(self, seq: int, dtype: jnp.dtype, positions: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        return rope_tables(self.inv_freq, seq, dtype, positions)

    def unembed(self, x: jax.Array) -> jax.Array:
        return self.lm_head(self.norm(x))


def build(cfg: Any, weights: Mapping[str, np.ndarray], dtype: jnp.dtype) -> Llama:
    """The model of a llama / mistral / qwen2 HF config and its HF-named weights."""
    return Llama(weights, config_from_hf(cfg), dtype)
