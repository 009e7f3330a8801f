"""GPT-NeoX / Pythia in JAX, as transformers' ``modeling_gpt_neox``.

LayerNorms with biases; a fused per-head QKV projection (``attention.query_key_value``: its output
is [heads, 3 * head_size], each head's q, k and v side by side); rotary embeddings on the first
``rotary_ndims = int(head_size * partial_rotary_factor)`` dimensions of each head only (``rotary_pct``
in older configs); a GELU MLP (``hidden_act``) with biases; q/k/v and output biases with
``attention_bias``; an untied ``embed_out`` (``lm_head`` in transformers 5) unless
``tie_word_embeddings``. With ``use_parallel_residual`` (Pythia) a layer adds
``attn(input_layernorm(x)) + mlp(post_attention_layernorm(x))`` to ``x``, both read from the layer
input; without it the MLP reads ``x + attn``. ``hook_attn_out`` / ``hook_mlp_out`` are the
attention and MLP outputs, what the residual stream adds either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxinterp.models.layers import (ACTIVATIONS, Hook, LayerNorm, Linear, attend, no_hook, param, pre_mlp,
                                     rope_inv_freq, rope_tables, rotate)

__all__ = ["GPTNeoX", "GPTNeoXBlock", "MODEL_TYPES", "build", "rotary_ndims"]

MODEL_TYPES = ("gpt_neox",)


def rotary_ndims(cfg: Any) -> int:
    """How many dimensions of each head the rotary embedding turns (transformers' ``rotary_ndims``)."""
    factor = (getattr(cfg, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0)
    return int(cfg.hidden_size // cfg.num_attention_heads * factor)


class GPTNeoXBlock(nnx.Module):
    """One GPT-NeoX layer; ``attention`` and ``mlp`` include their pre-norms."""

    def __init__(self, w: Mapping[str, np.ndarray], layer: int, cfg: Any, dtype: jnp.dtype):
        prefix = f"gpt_neox.layers.{layer}."
        lin = lambda name, bias: Linear(w[f"{prefix}{name}.weight"].T, w[f"{prefix}{name}.bias"] if bias else None,
                                        dtype)
        norm = lambda name: LayerNorm(w[f"{prefix}{name}.weight"], w[f"{prefix}{name}.bias"], cfg.layer_norm_eps, dtype)
        bias = bool(getattr(cfg, "attention_bias", True))
        self.input_layernorm, self.post_attention_layernorm = norm("input_layernorm"), norm("post_attention_layernorm")
        self.query_key_value, self.dense = lin("attention.query_key_value", bias), lin("attention.dense", bias)
        self.dense_h_to_4h, self.dense_4h_to_h = lin("mlp.dense_h_to_4h", True), lin("mlp.dense_4h_to_h", True)
        self.n_heads, self.activation = cfg.num_attention_heads, cfg.hidden_act
        self.parallel_residual = bool(cfg.use_parallel_residual)  # read by transformer.hooked_forward

    def attention(self, x: jax.Array, rope: tuple[jax.Array, jax.Array], hook: Hook = no_hook) -> jax.Array:
        b, s, d = x.shape
        qkv = self.query_key_value(self.input_layernorm(x)).reshape(b, s, self.n_heads, -1)
        q, k, v = jnp.split(qkv, 3, axis=-1)  # per head: [q | k | v], as transformers' view + chunk
        cos, sin = rope
        return self.dense(hook("attn.hook_z", attend(rotate(q, cos, sin), rotate(k, cos, sin), v).reshape(b, s, d)))

    def mlp(self, x: jax.Array, rope=None, hook: Hook = no_hook) -> jax.Array:
        h = pre_mlp(self.post_attention_layernorm, x, hook)
        return self.dense_4h_to_h(hook("mlp.hook_post", ACTIVATIONS[self.activation](self.dense_h_to_4h(h))))


class GPTNeoX(nnx.Module):
    """GPT-NeoX causal LM."""

    def __init__(self, w: Mapping[str, np.ndarray], cfg: Any, dtype: jnp.dtype):
        self.embed_in = param(w["gpt_neox.embed_in.weight"], dtype)
        self.layers = nnx.List([GPTNeoXBlock(w, i, cfg, dtype) for i in range(cfg.num_hidden_layers)])
        self.final_layer_norm = LayerNorm(w["gpt_neox.final_layer_norm.weight"], w["gpt_neox.final_layer_norm.bias"],
                                          cfg.layer_norm_eps, dtype)
        # Pythia checkpoints store embed_out, transformers 5 names it lm_head; tied ones store the embedding only
        head = w.get("embed_out.weight", w.get("lm_head.weight"))
        self.lm_head = Linear((head if head is not None else w["gpt_neox.embed_in.weight"]).T, None, dtype)
        self.inv_freq = rope_inv_freq(cfg.rope_parameters, rotary_ndims(cfg))

    def embed(self, tokens: jax.Array) -> jax.Array:
        return jnp.take(self.embed_in[...], tokens, axis=0)

    def add_positions(self, x: jax.Array) -> jax.Array:
        return x  # positions enter through the rotary embedding

    def rope(self, seq: int, dtype: jnp.dtype) -> tuple[jax.Array, jax.Array]:
        return rope_tables(self.inv_freq, seq, dtype)  # [.., rotary_ndims]: rotate() passes the rest through

    def unembed(self, x: jax.Array) -> jax.Array:
        return self.lm_head(self.final_layer_norm(x))


def build(cfg: Any, weights: Mapping[str, np.ndarray], dtype: jnp.dtype) -> GPTNeoX:
    """The model of a gpt_neox HF config and its HF-named weights."""
    return GPTNeoX(weights, cfg, dtype)
