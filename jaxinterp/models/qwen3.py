"""Qwen3 in JAX: the Llama-family block with a per-head RMSNorm of q and k before RoPE.

As transformers' ``modeling_qwen3``: an explicit ``head_dim`` (q/k/v widths ``heads * head_dim``,
which need not equal ``hidden_size``), q/k/v/o biases only with ``attention_bias``, no MLP biases,
and sliding windows on the layers ``layer_types`` names ``sliding_attention`` (as Qwen2). The HF
attributes this does not compute are refused first (:mod:`jaxinterp.models.support`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxinterp.models.layers import rope_inv_freq
from jaxinterp.models.llama import Llama, LlamaConfig, head_dim, layer_type_windows, rope_parameters

__all__ = ["MODEL_TYPES", "build", "config_from_hf"]

MODEL_TYPES = ("qwen3",)


def config_from_hf(cfg: Any) -> LlamaConfig:
    """The :class:`~jaxinterp.models.llama.LlamaConfig` of a qwen3 HF config (already checked by support.py)."""
    bias = bool(getattr(cfg, "attention_bias", False))
    return LlamaConfig(n_layers=cfg.num_hidden_layers, n_heads=cfg.num_attention_heads,
                       n_kv_heads=cfg.num_key_value_heads, rms_norm_eps=cfg.rms_norm_eps,
                       inv_freq=rope_inv_freq(rope_parameters(cfg), head_dim(cfg)), windows=layer_type_windows(cfg),
                       qkv_bias=bias, o_bias=bias, mlp_bias=False, qk_norm=True)


def build(cfg: Any, weights: Mapping[str, np.ndarray], dtype: jnp.dtype) -> Llama:
    """The model of a qwen3 HF config and its HF-named weights."""
    return Llama(weights, config_from_hf(cfg), dtype)
