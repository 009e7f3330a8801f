"""TransformerLens hook names ↔ the HF module paths sparsify and delphi name hookpoints by.

sparsify hooks the *output* of a module of the model's base model (``LlamaModel``,
``GPT2Model``), so a hookpoint is a module path relative to it:

=============================  =======================  ==================
jaxinterp hook                 Llama family             GPT-2
=============================  =======================  ==================
``blocks.L.hook_resid_post``   ``layers.L``             ``h.L``
``blocks.L.hook_mlp_out``      ``layers.L.mlp``         ``h.L.mlp``
``blocks.L.hook_attn_out``     ``layers.L.self_attn``   ``h.L.attn``
``blocks.L.hook_resid_pre``    ``layers.{L-1}``         ``h.{L-1}``  (L ≥ 1)
``hook_embed``                 ``embed_tokens``         ``wte``
=============================  =======================  ==================

The naming comes from the run's ``source.model_class`` (an HF class such as ``LlamaForCausalLM``,
``GPT2LMHeadModel``, or a model type such as ``llama``, ``gpt2``): GPT-2, GPT-J and GPT-Neo keep
their blocks in ``transformer.h`` (GPT-2's column); every other model jaxinterp's extractor runs is
Llama-family (``model.layers`` with ``self_attn`` and ``mlp``), as jaxinterp's torch backend assumes.
Unsupported: ``blocks.0.hook_resid_pre`` (the input of the first layer is no module's output:
for GPT-2 it is token plus position embeddings) and any hook jaxinterp does not define.
"""

from __future__ import annotations

import re

from jaxinterp.config import ConfigError

__all__ = ["hook_for_hookpoint", "hookpoint_for_hook", "gpt2_style"]

_HOOK = re.compile(r"^blocks\.(\d+)\.(hook_resid_post|hook_mlp_out|hook_attn_out|hook_resid_pre)$")
_HOOKPOINT = re.compile(r"^(?:layers|h)\.(\d+)(?:\.(mlp|self_attn|attn))?$")


_GPT2_STYLE = ("gpt2", "gptj", "gpt_neo", "gptneo")


def gpt2_style(model_class: str) -> bool:
    """Whether ``model_class`` (an HF class name or model type) names its blocks ``h.L`` with
    ``attn`` and ``mlp`` (GPT-2, GPT-J, GPT-Neo; not GPT-NeoX, whose blocks are ``layers.L``)."""
    name = (model_class or "").lower()
    return any(family in name for family in _GPT2_STYLE) and "neox" not in name


def hookpoint_for_hook(hook_name: str, model_class: str) -> str:
    """The sparsify hookpoint of ``hook_name`` on a model of class ``model_class`` (table above).

    Raises:
      ConfigError: a hook no module outputs (``blocks.0.hook_resid_pre``) or an unknown hook.
    """
    gpt2 = gpt2_style(model_class)
    layers, attn = ("h", "attn") if gpt2 else ("layers", "self_attn")
    if hook_name == "hook_embed":
        return "wte" if gpt2 else "embed_tokens"
    match = _HOOK.match(hook_name)
    if not match:
        raise ConfigError(f"hook {hook_name!r} has no sparsify hookpoint; sparsify exports support "
                          f"blocks.L.hook_resid_post / hook_mlp_out / hook_attn_out / hook_resid_pre (L >= 1) "
                          f"and hook_embed; export it as 'saelens' instead")
    layer, kind = int(match.group(1)), match.group(2)
    if kind == "hook_resid_pre":
        if layer == 0:
            raise ConfigError(f"hook {hook_name!r} is the first layer's input, which no module outputs, so "
                              f"sparsify cannot hook it; export it as 'saelens' instead")
        return f"{layers}.{layer - 1}"
    suffix = {"hook_resid_post": "", "hook_mlp_out": ".mlp", "hook_attn_out": f".{attn}"}[kind]
    return f"{layers}.{layer}{suffix}"


def hook_for_hookpoint(hookpoint: str) -> str:
    """The jaxinterp hook of a sparsify hookpoint (``layers.L`` → ``blocks.L.hook_resid_post``);
    ``''`` for a hookpoint with no jaxinterp hook (e.g. ``layers.3.mlp.act_fn``)."""
    if hookpoint in ("embed_tokens", "wte"):
        return "hook_embed"
    match = _HOOKPOINT.match(hookpoint)
    if not match:
        return ""
    kind = {None: "hook_resid_post", "mlp": "hook_mlp_out", "self_attn": "hook_attn_out", "attn": "hook_attn_out"}
    return f"blocks.{match.group(1)}.{kind[match.group(2)]}"
