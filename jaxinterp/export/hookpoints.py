"""TransformerLens hook names ↔ the HF module paths sparsify and delphi name hookpoints by.

sparsify hooks the *output* of a module of the model's base model (``LlamaModel``,
``GPT2Model``), so a hookpoint is a module path relative to it:

=============================  =======================  ==================  =================================  ======================
jaxinterp hook                 Llama family             GPT-2               Gemma-2/3                          GPT-NeoX
=============================  =======================  ==================  =================================  ======================
``blocks.L.hook_resid_post``   ``layers.L``             ``h.L``             ``layers.L``                       ``layers.L``
``blocks.L.hook_mlp_out``      ``layers.L.mlp``         ``h.L.mlp``         ``layers.L.post_feedforward_...``  ``layers.L.mlp``
``blocks.L.hook_attn_out``     ``layers.L.self_attn``   ``h.L.attn``        ``layers.L.post_attention_...``    ``layers.L.attention``
``blocks.L.hook_resid_pre``    ``layers.{L-1}``         ``h.{L-1}``         ``layers.{L-1}``                   ``layers.{L-1}`` (L ≥ 1)
``hook_embed``                 ``embed_tokens``         ``wte``             ``embed_tokens``                   ``embed_in``
``blocks.L.mlp.hook_in``       ``layers.L.post_...``    ``h.L.ln_2``        ``layers.L.pre_feedforward_...``   ``layers.L.post_...``
``blocks.L.mlp.hook_post``     (refused: SwiGLU)        ``h.L.mlp.act``     (refused: GeGLU)                   ``layers.L.mlp.act``
=============================  =======================  ==================  =================================  ======================

``mlp.hook_in`` is the pre-MLP norm's output (``post_attention_layernorm`` in Llama and GPT-NeoX). The other
sub-block hooks are no module's output, so sparsify cannot hook them: ``attn.hook_z`` (the output projection's
input), ``hook_resid_mid`` (the pre-MLP norm's input), ``ln2.hook_normalized`` (inside the norm, before its
weight) and a gated MLP's ``mlp.hook_post`` (``act_fn``'s output is multiplied by ``up_proj``'s before
``down_proj`` reads it); export those as SAELens.

Gemma's attention and MLP hooks are the post-attention / post-feedforward norm outputs (``..._layernorm``),
what its layers add to the residual stream, as jaxinterp's torch backend hooks them.

The naming comes from the run's ``source.model_class`` (an HF class such as ``LlamaForCausalLM``,
``GPT2LMHeadModel``, or a model type such as ``llama``, ``gpt2``): GPT-2, GPT-J and GPT-Neo keep
their blocks in ``transformer.h`` (GPT-2's column); every other model jaxinterp's extractor runs is
Llama-family (``model.layers`` with ``self_attn`` and ``mlp``) except Gemma (class or type naming
``gemma``) and GPT-NeoX (naming ``neox``), as in jaxinterp's torch backend (``HOOK_MODULES``).
Reading a hookpoint back, ``post_attention_layernorm`` stays unknown: in Llama it is the MLP's input norm.
A sparsify transcoder (``transcode: true``) hooks one module's input *and* output: its hookpoint is the
module, so only the pairs one module spans are exported (:func:`transcoder_hookpoint`):
``blocks.L.mlp.hook_in`` → ``blocks.L.hook_mlp_out`` is ``layers.L.mlp`` (GPT-2 ``h.L.mlp``; not Gemma, whose
MLP output is normed again before the hook) and ``blocks.L.hook_resid_pre`` → ``blocks.L.hook_resid_post`` is
``layers.L`` (``h.L``).
Unsupported: the sub-block hooks above that no module outputs, ``blocks.0.hook_resid_pre`` (the input of the first layer is no module's output:
for GPT-2 it is token plus position embeddings) and any hook jaxinterp does not define.
"""

from __future__ import annotations

import re

from jaxinterp.config import ConfigError

__all__ = ["hook_for_hookpoint", "hookpoint_for_hook", "gpt2_style", "transcoder_hookpoint"]

_HOOK = re.compile(r"^blocks\.(\d+)\.(hook_resid_post|hook_mlp_out|hook_attn_out|hook_resid_pre|mlp\.hook_in|"
                   r"mlp\.hook_post)$")
_HOOKPOINT = re.compile(r"^(?:layers|h)\.(\d+)(?:\.(mlp|self_attn|attn|attention|post_feedforward_layernorm|"
                        r"pre_feedforward_layernorm|ln_2|mlp\.act))?$")
_NO_MODULE = re.compile(r"^blocks\.\d+\.(attn\.hook_z|hook_resid_mid|ln2\.hook_normalized)$")


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
    gpt2, name = gpt2_style(model_class), (model_class or "").lower()
    layers, embed, attn, mlp = ("h", "wte", "attn", "mlp") if gpt2 else ("layers", "embed_tokens", "self_attn", "mlp")
    if "gemma" in name:
        attn, mlp = "post_attention_layernorm", "post_feedforward_layernorm"
    elif "neox" in name:
        embed, attn = "embed_in", "attention"
    ln2 = "ln_2" if gpt2 else "pre_feedforward_layernorm" if "gemma" in name else "post_attention_layernorm"
    gated = not gpt2 and "neox" not in name  # Llama-family and Gemma MLPs: act_fn(gate) * up
    if hook_name == "hook_embed":
        return embed
    if _NO_MODULE.match(hook_name) or (gated and hook_name.endswith(".mlp.hook_post")):
        raise ConfigError(f"hook {hook_name!r} has no sparsify hookpoint: it is no module's output on "
                          f"{model_class or 'this model'}, so sparsify cannot hook it; export it as 'saelens' instead")
    match = _HOOK.match(hook_name)
    if not match:
        raise ConfigError(f"hook {hook_name!r} has no sparsify hookpoint; sparsify exports support "
                          f"blocks.L.hook_resid_post / hook_mlp_out / hook_attn_out / hook_resid_pre (L >= 1) / "
                          f"mlp.hook_in / mlp.hook_post (GPT-2, GPT-NeoX) and hook_embed; export it as 'saelens' instead")
    layer, kind = int(match.group(1)), match.group(2)
    if kind == "hook_resid_pre":
        if layer == 0:
            raise ConfigError(f"hook {hook_name!r} is the first layer's input, which no module outputs, so "
                              f"sparsify cannot hook it; export it as 'saelens' instead")
        return f"{layers}.{layer - 1}"
    suffix = {"hook_resid_post": "", "hook_mlp_out": f".{mlp}", "hook_attn_out": f".{attn}", "mlp.hook_in": f".{ln2}",
              "mlp.hook_post": ".mlp.act"}[kind]
    return f"{layers}.{layer}{suffix}"


def hook_for_hookpoint(hookpoint: str) -> str:
    """The jaxinterp hook of a sparsify hookpoint (``layers.L`` → ``blocks.L.hook_resid_post``);
    ``''`` for a hookpoint with no jaxinterp hook (e.g. ``layers.3.mlp.act_fn``)."""
    if hookpoint in ("embed_tokens", "wte", "embed_in"):
        return "hook_embed"
    match = _HOOKPOINT.match(hookpoint)
    if not match:
        return ""
    kind = {None: "hook_resid_post", "mlp": "hook_mlp_out", "self_attn": "hook_attn_out", "attn": "hook_attn_out",
            "attention": "hook_attn_out", "post_feedforward_layernorm": "hook_mlp_out",
            "pre_feedforward_layernorm": "mlp.hook_in", "ln_2": "mlp.hook_in", "mlp.act": "mlp.hook_post"}
    return f"blocks.{match.group(1)}.{kind[match.group(2)]}"


def transcoder_hookpoint(hook_name: str, target_hook: str, model_class: str) -> str:
    """The sparsify hookpoint of a transcoder from ``hook_name`` to ``target_hook``: the module whose input and
    output these are (sparsify's ``transcode`` reads a module's input and predicts its output).

    Raises:
      ConfigError: no one module has this input and output on ``model_class``.
    """
    gpt2, name = gpt2_style(model_class), (model_class or "").lower()
    layers = "h" if gpt2 else "layers"
    source, target = re.match(r"^blocks\.(\d+)\.(.+)$", hook_name or ""), re.match(r"^blocks\.(\d+)\.(.+)$",
                                                                                    target_hook or "")
    if source and target and source.group(1) == target.group(1):
        layer, pair = source.group(1), (source.group(2), target.group(2))
        if pair == ("mlp.hook_in", "hook_mlp_out") and "gemma" not in name:
            return f"{layers}.{layer}.mlp"
        if pair == ("hook_resid_pre", "hook_resid_post"):
            return f"{layers}.{layer}"
    raise ConfigError(f"transcoder {hook_name} -> {target_hook} has no sparsify hookpoint: sparsify transcoders "
                      f"read one module's input and predict its output, and no module of {model_class or 'this model'} "
                      "spans these hooks (exportable: blocks.L.mlp.hook_in -> blocks.L.hook_mlp_out, not on Gemma; "
                      "blocks.L.hook_resid_pre -> blocks.L.hook_resid_post); export it as 'saelens' (ReLU/JumpReLU)")
