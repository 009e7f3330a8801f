"""JAX-native (flax.nnx) source transformers: the Llama family and GPT-2, with named hook points.

Both families are pre-norm residual stacks, so one driver, :func:`hooked_forward`, runs either and
applies TransformerLens-named hooks: it can *capture* an activation and *edit* (replace) it, and it
stops after the last layer a capture needs. Modules are built directly from HF-named weights
(:func:`build_model`); there is no random init.

Llama family (Llama, Mistral, Qwen2, SmolLM): RMSNorm, rotary embeddings (default RoPE), grouped-
query attention, SwiGLU MLP; Qwen2 has q/k/v biases, Llama's ``attention_bias`` / ``mlp_bias`` add
q/k/v/o and MLP biases. GPT-2: learned positions, LayerNorm, fused QKV (HF ``Conv1D`` weights are
already [in, out]), tanh-GELU MLP. A config attribute this code does not compute (sliding windows,
RoPE scaling, ...) is refused before the model is built: see :mod:`jaxinterp.models.support`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxinterp.models.support import JAX_RULES, check_jax_support

__all__ = ["build_model", "hooked_forward", "SUPPORTED_MODEL_TYPES", "Edit"]

SUPPORTED_MODEL_TYPES = tuple(JAX_RULES)  # ("llama", "mistral", "qwen2", "gpt2")
# edit(hook_name, activation) -> activation; the identity for hooks it does not touch.
Edit = Callable[[str, jax.Array], jax.Array]


class Linear(nnx.Module):
    """``x @ kernel + bias`` with ``kernel`` [in, out]."""

    def __init__(self, kernel: np.ndarray, bias: np.ndarray | None, dtype: jnp.dtype):
        self.kernel = nnx.Param(jnp.asarray(kernel, dtype))
        self.bias = nnx.Param(jnp.asarray(bias, dtype)) if bias is not None else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x @ self.kernel[...]
        return y + self.bias[...] if self.bias is not None else y


class RMSNorm(nnx.Module):
    """Llama RMSNorm, computed in float32 like transformers."""

    def __init__(self, weight: np.ndarray, eps: float, dtype: jnp.dtype):
        self.weight, self.eps = nnx.Param(jnp.asarray(weight, dtype)), eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * normed.astype(x.dtype)


class LayerNorm(nnx.Module):
    """GPT-2 LayerNorm, computed in float32."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, eps: float, dtype: jnp.dtype):
        self.weight, self.bias, self.eps = nnx.Param(jnp.asarray(weight, dtype)), nnx.Param(jnp.asarray(bias, dtype)), eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        return ((x32 - mean) * jax.lax.rsqrt(var + self.eps)).astype(x.dtype) * self.weight[...] + self.bias[...]


def _attend(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Causal softmax attention over [batch, seq, heads, head_dim]; kv heads repeated for GQA."""
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(q.shape[-1])
    seq = q.shape[1]
    scores = jnp.where(jnp.tril(jnp.ones((seq, seq), bool)), scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def _rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _llama_biases(cfg: Any) -> tuple[bool, bool, bool]:
    """(q/k/v, o_proj, MLP) biases, as each model type's transformers modeling code decides them."""
    if cfg.model_type == "qwen2":
        return True, False, False
    if cfg.model_type == "llama":
        attention = bool(getattr(cfg, "attention_bias", False))
        return attention, attention, bool(getattr(cfg, "mlp_bias", False))
    return False, False, False  # mistral: no biases, whatever the config says


class LlamaBlock(nnx.Module):
    """One decoder layer; ``attention`` and ``mlp`` include their pre-norms."""

    def __init__(self, w: Mapping[str, np.ndarray], prefix: str, cfg: Any, dtype: jnp.dtype):
        lin = lambda name, bias=False: Linear(w[f"{prefix}{name}.weight"].T,
                                             w.get(f"{prefix}{name}.bias") if bias else None, dtype)
        qkv_bias, o_bias, mlp_bias = _llama_biases(cfg)
        self.q_proj, self.k_proj, self.v_proj = (lin(f"self_attn.{n}_proj", qkv_bias) for n in "qkv")
        self.o_proj = lin("self_attn.o_proj", o_bias)
        self.gate_proj, self.up_proj, self.down_proj = (lin(f"mlp.{n}_proj", mlp_bias) for n in ("gate", "up", "down"))
        self.input_layernorm = RMSNorm(w[f"{prefix}input_layernorm.weight"], cfg.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(w[f"{prefix}post_attention_layernorm.weight"], cfg.rms_norm_eps, dtype)
        self.n_heads, self.n_kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads

    def attention(self, x: jax.Array, rope: tuple[jax.Array, jax.Array]) -> jax.Array:
        h = self.input_layernorm(x)
        b, s, _ = h.shape
        q = self.q_proj(h).reshape(b, s, self.n_heads, -1)
        k = self.k_proj(h).reshape(b, s, self.n_kv_heads, -1)
        v = self.v_proj(h).reshape(b, s, self.n_kv_heads, -1)
        cos, sin = rope
        out = _attend(_rotate(q, cos, sin), _rotate(k, cos, sin), v)
        return self.o_proj(out.reshape(b, s, -1))

    def mlp(self, x: jax.Array, rope=None) -> jax.Array:
        h = self.post_attention_layernorm(x)
        return self.down_proj(jax.nn.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(nnx.Module):
    """Llama-family causal LM."""

    def __init__(self, w: Mapping[str, np.ndarray], cfg: Any, dtype: jnp.dtype):
        self.embed_tokens = nnx.Param(jnp.asarray(w["model.embed_tokens.weight"], dtype))
        self.layers = nnx.List([LlamaBlock(w, f"model.layers.{i}.", cfg, dtype) for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(w["model.norm.weight"], cfg.rms_norm_eps, dtype)
        # tied checkpoints store the embedding only; transformers (5.x) keeps a stored lm_head even when tied
        head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
        self.lm_head = Linear(head.T, None, dtype)
        # only default RoPE gets here (support.JAX_RULES refuses the other rope types)
        rope = getattr(cfg, "rope_parameters", None) or {"rope_type": "default", "rope_theta": getattr(cfg, "rope_theta", 10000.0)}
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.inv_freq = 1.0 / (rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))

    def embed(self, tokens: jax.Array) -> jax.Array:
        return jnp.take(self.embed_tokens[...], tokens, axis=0)

    def add_positions(self, x: jax.Array) -> jax.Array:
        return x  # positions enter through the rotary embedding

    def rope(self, seq: int, dtype: jnp.dtype) -> tuple[jax.Array, jax.Array]:
        freqs = jnp.arange(seq, dtype=jnp.float32)[:, None] * jnp.asarray(self.inv_freq)[None, :]
        angles = jnp.concatenate([freqs, freqs], axis=-1)[None, :, None, :]
        return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)

    def unembed(self, x: jax.Array) -> jax.Array:
        return self.lm_head(self.norm(x))


class GPT2Block(nnx.Module):
    """One GPT-2 block; ``attention`` and ``mlp`` include their pre-norms."""

    def __init__(self, w: Mapping[str, np.ndarray], prefix: str, cfg: Any, dtype: jnp.dtype):
        lin = lambda name: Linear(w[f"{prefix}{name}.weight"], w[f"{prefix}{name}.bias"], dtype)  # Conv1D: [in, out]
        norm = lambda name: LayerNorm(w[f"{prefix}{name}.weight"], w[f"{prefix}{name}.bias"], cfg.layer_norm_epsilon, dtype)
        self.ln_1, self.ln_2 = norm("ln_1"), norm("ln_2")
        self.c_attn, self.attn_proj = lin("attn.c_attn"), lin("attn.c_proj")
        self.c_fc, self.mlp_proj = lin("mlp.c_fc"), lin("mlp.c_proj")
        self.n_heads = cfg.n_head

    def attention(self, x: jax.Array, rope=None) -> jax.Array:
        b, s, d = x.shape
        q, k, v = jnp.split(self.c_attn(self.ln_1(x)), 3, axis=-1)
        heads = lambda t: t.reshape(b, s, self.n_heads, -1)
        return self.attn_proj(_attend(heads(q), heads(k), heads(v)).reshape(b, s, d))

    def mlp(self, x: jax.Array, rope=None) -> jax.Array:
        return self.mlp_proj(jax.nn.gelu(self.c_fc(self.ln_2(x)), approximate=True))


class GPT2(nnx.Module):
    """GPT-2 causal LM (``hook_embed`` is the token embedding; positions are added after it)."""

    def __init__(self, w: Mapping[str, np.ndarray], cfg: Any, dtype: jnp.dtype):
        self.wte = nnx.Param(jnp.asarray(w["transformer.wte.weight"], dtype))
        self.wpe = nnx.Param(jnp.asarray(w["transformer.wpe.weight"], dtype))
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


def build_model(cfg: Any, weights: Mapping[str, np.ndarray], dtype: str = "float32") -> Llama | GPT2:
    """The nnx model for an HF config and HF-named weights (``weights.load_hf_weights``).

    Raises:
      UnsupportedModelError: the model type, or a config attribute, that this code does not compute
        exactly (:func:`jaxinterp.models.support.check_jax_support`).
    """
    check_jax_support(cfg)
    jdtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
    if cfg.model_type == "gpt2":
        return GPT2(weights, cfg, jdtype)
    return Llama(weights, cfg, jdtype)


def hooked_forward(model: Llama | GPT2, tokens: jax.Array, capture: frozenset[str] = frozenset(),
                   edit: Edit | None = None, logits: bool = False) -> tuple[jax.Array | None, dict[str, jax.Array]]:
    """Runs ``model`` on ``tokens`` [batch, seq]; returns ``(logits or None, {hook: activation})``.

    ``capture`` names the hooks to return; ``edit`` may replace any hook's activation (it sees every
    hook point, in forward order). Without ``logits`` the pass stops after the last captured hook.
    """
    captured: dict[str, jax.Array] = {}

    def hook(name: str, x: jax.Array) -> jax.Array:
        if edit is not None:
            x = edit(name, x)
        if name in capture:
            captured[name] = x
        return x

    def done() -> bool:
        return not logits and len(captured) == len(capture)

    x = model.add_positions(hook("hook_embed", model.embed(tokens)))
    rope = model.rope(tokens.shape[1], x.dtype)
    for layer, block in enumerate(model.layers):
        if done():
            return None, captured
        prefix = f"blocks.{layer}."
        x = hook(prefix + "hook_resid_pre", x)
        if done():
            return None, captured
        x = x + hook(prefix + "hook_attn_out", block.attention(x, rope))
        x = x + hook(prefix + "hook_mlp_out", block.mlp(x, rope))
        x = hook(prefix + "hook_resid_post", x)
    if done():
        return None, captured
    return model.unembed(x), captured
