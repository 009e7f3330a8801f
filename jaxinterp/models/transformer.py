"""JAX-native (flax.nnx) source transformers with named hook points: the driver and the family table.

Every family is a pre-norm residual stack, so one driver, :func:`hooked_forward`, runs any of them
and applies TransformerLens-named hooks: it can *capture* an activation and *edit* (replace) it, and
it stops after the last layer a capture needs. Modules are built directly from HF-named weights
(:func:`build_model`), arrays or unread checkpoint refs; there is no random init.

One family is one module: :mod:`jaxinterp.models.llama` (Llama, Mistral, Qwen2, SmolLM),
:mod:`jaxinterp.models.qwen3` (the Llama block with q/k norms), :mod:`jaxinterp.models.gemma`
(Gemma-2, Gemma-3 text: post-norms, soft-capping), :mod:`jaxinterp.models.gpt2` and
:mod:`jaxinterp.models.gpt_neox` (GPT-NeoX / Pythia: parallel residual, partial rotary), composed from the
shared blocks in :mod:`jaxinterp.models.layers`.
A config attribute a family does not compute (dynamic or YaRN RoPE, ...) is refused before the model is
built: see :mod:`jaxinterp.models.support`.

A family module provides ``build(hf_config, weights, dtype)`` returning a model with ``embed``,
``add_positions``, ``rope``, ``layers`` (blocks with ``attention(x, rope, hook)`` and ``mlp(x, rope, hook)``,
each returning what is added to the residual stream and calling ``hook(kind, activation)`` at its sub-block
hook points: ``attn.hook_z``, ``ln2.hook_normalized``, ``mlp.hook_in``, ``mlp.hook_post``) and ``unembed``. A block whose
``parallel_residual`` is true (GPT-NeoX) has its MLP read the layer input, not ``x + attention``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxinterp.models import gemma, gpt2, gpt_neox, llama, qwen3
from jaxinterp.models.layers import Weight
from jaxinterp.models.support import JAX_RULES, check_jax_support

__all__ = ["build_model", "hooked_forward", "SUPPORTED_MODEL_TYPES", "Edit", "FAMILIES"]

SUPPORTED_MODEL_TYPES = tuple(JAX_RULES)  # ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", ...)
# edit(hook_name, activation) -> activation; the identity for hooks it does not touch.
Edit = Callable[[str, jax.Array], jax.Array]
# model_type -> the family module that builds it
FAMILIES = {model_type: family for family in (llama, qwen3, gemma, gpt2, gpt_neox)
            for model_type in family.MODEL_TYPES}
assert set(FAMILIES) == set(SUPPORTED_MODEL_TYPES), "support.JAX_RULES and the family modules disagree"


def build_model(cfg: Any, weights: Mapping[str, Weight], dtype: str = "float32") -> nnx.Module:
    """The nnx model for an HF config and HF-named weights: arrays (``weights.load_hf_weights``), or refs
    (``checkpoint.lazy_safetensors``) for a model whose params are read later, each device its slice.

    Raises:
      UnsupportedModelError: the model type, or a config attribute, that this code does not compute
        exactly (:func:`jaxinterp.models.support.check_jax_support`).
    """
    check_jax_support(cfg)
    jdtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
    return FAMILIES[cfg.model_type].build(cfg, weights, jdtype)


def hooked_forward(model: nnx.Module, tokens: jax.Array, capture: frozenset[str] = frozenset(),
                   edit: Edit | None = None, logits: bool = False, positions: jax.Array | None = None,
                   kv: Sequence[Any] | None = None) -> tuple[jax.Array | None, dict[str, jax.Array]]:
    """Runs ``model`` on ``tokens`` [batch, seq]; returns ``(logits or None, {hook: activation})``.

    ``capture`` names the hooks to return; ``edit`` may replace any hook's activation (it sees every
    hook point, in forward order). Without ``logits`` the pass stops after the last captured hook.
    ``positions`` [batch, seq] (each row's rotary positions) and ``kv`` (one
    :class:`~jaxinterp.models.kv_cache.LayerCache` per layer, which each attention appends to and
    attends) are how :func:`jaxinterp.models.kv_cache.cached_forward` runs a cached step; without them
    the pass is the plain causal forward over positions 0..seq-1.
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
    rope = model.rope(tokens.shape[1], x.dtype) if positions is None else model.rope(tokens.shape[1], x.dtype,
                                                                                       positions)
    for layer, block in enumerate(model.layers):
        if done():
            return None, captured
        prefix = f"blocks.{layer}."
        sub = lambda kind, value, prefix=prefix: hook(prefix + kind, value)  # the block's own hook points
        x = hook(prefix + "hook_resid_pre", x)
        if done():
            return None, captured
        attended = block.attention(x, rope, sub) if kv is None else block.attention(x, rope, sub, cache=kv[layer])
        attn = hook(prefix + "hook_attn_out", attended)
        if getattr(block, "parallel_residual", False):  # GPT-NeoX: the MLP reads the layer input too (no resid_mid)
            x = hook(prefix + "hook_mlp_out", block.mlp(x, rope, sub)) + attn + x  # transformers' order of sums
        else:
            x = hook(prefix + "hook_resid_mid", x + attn)
            x = x + hook(prefix + "hook_mlp_out", block.mlp(x, rope, sub))
        x = hook(prefix + "hook_resid_post", x)
    if done():
        return None, captured
    return model.unembed(x), captured
