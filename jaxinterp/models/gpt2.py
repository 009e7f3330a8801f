"""GPT-2 in JAX: learned positions, LayerNorm, fused QKV (HF ``Conv1D`` weights are already [in, out]),
tanh-GELU MLP. ``hook_embed`` is the token embedding; positions are added after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxinterp.models.layers import Hook, LayerNorm, Linear, attend, no_hook, param, pre_mlp

__all__ = ["GPT2", "GPT2Block", "MODEL_TYPES", "build"]

MODEL_TYPES = ("gpt2",)


class GPT2Block(nnx.Module):
    """One GPT-2 block; ``attention`` and ``mlp`` include their pre-norms."""

    def __init__(self, w: Mapping[str, np.ndarray], prefix: str, cfg: Any, dtype: jnp.dtype):
        lin = lambda name: Linear(w[f"{prefix}{name}.weight"], w[f"{prefix}{name}.bias"], dtype)  # Conv1D: [in, out]
        norm = lambda name: LayerNorm(w[f"{prefix}{name}.weight"], w[f"{prefix}{name}.bias"], cfg.layer_norm_epsilon, dtype)
        self.ln_1, self.ln_2 = norm("ln_1"), norm("ln_2")
        self.c_attn, self.attn_proj = lin("attn.c_attn"), lin("attn.c_proj")
        self.c_fc, self.mlp_proj = lin("mlp.c_fc"), lin("mlp.c_proj")
        self.n_heads = cfg.n_head

    def attention(self, x: jax.Array, rope=None, hook: Hook = no_hook) -> jax.Array:
        b, s, d = x.shape
        q, k, v = jnp.split(self.c_attn(self.ln_1(x)), 3, axis=-1)
        heads = lambda t: t.reshape(b, s, self.n_heads, -1)
        return self.attn_proj(hook("attn.hook_z", attend(heads(q), heads(k), heads(v)).reshape(b, s, d)))

    def mlp(self, x: jax.Array, rope=None, hook: Hook = no_hook) -> jax.Array:
        return self.mlp_proj(hook("mlp.hook_post", jax.nn.gelu(self.c_fc(pre_mlp(self.ln_2, x, hook)), approximate=True)))


class GPT2(nnx.Module):
    """GPT-2 causal LM."""

    def __init__(self, w: Mapping[str, np.ndarray], cfg: Any, dtype: jnp.dtype):
        self.wte = param(w["transformer.wte.weight"], dtype)
        self.wpe = param(w["transformer.wpe.weight"], dtype)
        self.layers = nnx.List([GPT2Block(w, f"transformer.h.{i}.", cfg, dtype) for i in range(cfg.n_layer)])
        self.ln_f = LayerNorm(w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], cfg.layer_norm_epsilon, dtype)
        self.lm_head = Linear(w.get("lm_head.weight", w["transformer.wte.weight"]).T, None, dtype)

    def embed(self, tokens: jax.Array) -> jax.Array:
        return jnp.take(self.wte[...], tokens, axis=0)

    def add_positions(self, x: jax.Array) -> jax.Array:
        return x + self.wpe[...][: x.shape[1]][None]

    def rope(self, seq: int, dtype: jnp.dtype) -> None:
        return None

    def unembed(self, x: jax.Array) -> jax.Array:
        return self.lm_head(self.ln_f(x))


def build(cfg: Any, weights: Mapping[str, np.ndarray], dtype: jnp.dtype) -> GPT2:
    """The model of a gpt2 HF config and its HF-named weights."""
    return GPT2(weights, cfg, dtype)
