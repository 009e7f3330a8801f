"""Which source models each backend computes exactly; a one-line refusal for everything else.

A source model is either exact — every hook equal to transformers' forward, tested in
tests/test_jax_models.py and tests/test_model_support.py — or refused with a line that says why.
Nothing in between: an HF config attribute that changes the math and that the JAX implementation
does not handle is refused before any weights are read, and the torch backend accepts only the
model types whose hooks are tested equal.

Example::

    jax_refusal(MistralConfig(rope_scaling={"rope_type": "dynamic", "factor": 2.0}))
    # "mistral attribute rope_parameters['rope_type']='dynamic' (RoPE scaling; ...) is not implemented by the
    #  JAX backend"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from jaxinterp.config import ConfigError

__all__ = ["UnsupportedModelError", "JAX_RULES", "ROPE_TYPES", "TORCH_MODEL_TYPES", "jax_refusal", "torch_refusal",
           "check_jax_support", "check_torch_support"]


class UnsupportedModelError(ConfigError, NotImplementedError):
    """A source model a backend does not compute exactly; the message says why and what would."""


class Rule(NamedTuple):
    """One HF config attribute: how to read it, which values the JAX code computes exactly, what it does."""

    name: str
    get: Callable[[Any], Any]
    accepted: Callable[[Any], bool]
    meaning: str


def _attr(name: str, default: Any = None) -> Callable[[Any], Any]:
    return lambda config: getattr(config, name, default)


def _rope_parameters(config: Any) -> dict:
    return getattr(config, "rope_parameters", None) or {}


def _rope_type(config: Any) -> Any:
    params = _rope_parameters(config)
    if any(isinstance(value, dict) for value in params.values()):
        return params  # one RoPE per layer type: not the default, whatever the types are
    return params.get("rope_type", params.get("type", "default"))


def _partial_rotary_factor(config: Any) -> Any:
    return _rope_parameters(config).get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None))


# The rope types jaxinterp.models.layers.rope_inv_freq computes exactly (tested in
# tests/test_model_families.py): default, linear and llama3 scale the frequencies only. dynamic (NTK,
# recomputed per context length), yarn and longrope (which also scale cos/sin by an attention factor),
# proportional and per-layer-type RoPE stay refused.
ROPE_TYPES = ("default", "linear", "llama3")
_ROPE = (
    Rule("rope_parameters['rope_type']", _rope_type, lambda v: isinstance(v, str) and v in ROPE_TYPES,
         f"RoPE scaling; only {', '.join(ROPE_TYPES)} RoPE are implemented"),
    # transformers' default RoPE for these model types ignores the factor too, but a checkpoint that
    # sets it expects a partial rotary embedding: refused rather than trusted either way.
    Rule("partial_rotary_factor", _partial_rotary_factor, lambda v: v is None or v == 1,
         "a partial rotary embedding"),
)
_POSITIVE = lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0
_WINDOW = Rule("sliding_window", _attr("sliding_window"), lambda v: v is None or _POSITIVE(v),
               "a sliding window that is not a positive number of keys")


def _window_of_sliding_layers(config: Any) -> Any:
    """``sliding_window`` where ``layer_types`` has sliding layers; qwen2/qwen3 read it nowhere else."""
    return getattr(config, "sliding_window", None) if "sliding_attention" in _layer_types(config) else "unused"


def _layer_types(config: Any) -> Any:
    return getattr(config, "layer_types", None) or ()


# Qwen2Config / Qwen3Config set sliding_window to None unless use_sliding_window, and derive layer_types
# (sliding from max_window_layers on) unless given; only the layers layer_types names slide.
_LAYER_WINDOWS = (
    Rule("layer_types", _layer_types, lambda v: set(v) <= {"full_attention", "sliding_attention"},
         "attention kinds other than full and sliding"),
    Rule("sliding_window", _window_of_sliding_layers, lambda v: v == "unused" or _POSITIVE(v),
         "sliding_attention layers without a positive window"),
)
_SILU = Rule("hidden_act", _attr("hidden_act", "silu"), lambda v: v == "silu",
             "an MLP activation other than SiLU")

_NOT_BIDIRECTIONAL = Rule("use_bidirectional_attention", _attr("use_bidirectional_attention", None), lambda v: not v,
                          "bidirectional (non-causal) attention")
_GEMMA_GELU = Rule("hidden_activation", _attr("hidden_activation", "gelu_pytorch_tanh"),
                   lambda v: v == "gelu_pytorch_tanh", "an MLP activation other than tanh-approximated GELU")


def _per_layer_type_rope(config: Any) -> Any:
    """Gemma-3's ``rope_parameters`` nests one RoPE per layer type; each type's ``rope_type``, or the whole
    entry when a layer type has none (or the nesting is missing)."""
    params = _rope_parameters(config)
    kinds = sorted(set(_layer_types(config)))
    if not all(isinstance(params.get(kind), dict) for kind in kinds):
        return params
    return {kind: params[kind].get("rope_type", params[kind].get("type", "default")) for kind in kinds}


def _per_layer_type_partial_rotary(config: Any) -> Any:
    """Any partial rotary factor, per layer type or top-level (which transformers' gemma3 RoPE ignores, but a
    checkpoint that sets it expects: refused either way, as for the Llama family)."""
    params = _rope_parameters(config)
    factors = {kind: params[kind].get("partial_rotary_factor") for kind in sorted(set(_layer_types(config)))
               if isinstance(params.get(kind), dict)}
    factors["top-level"] = getattr(config, "partial_rotary_factor", None)
    return None if all(factor in (None, 1, 1.0) for factor in factors.values()) else factors


def _neox_rotary_ndims(config: Any) -> Any:
    """``int(head_size * partial_rotary_factor)``, the rotated width of each GPT-NeoX head (or the factor, if odd)."""
    factor = _rope_parameters(config).get("partial_rotary_factor", 1.0)
    if not isinstance(factor, (int, float)) or not 0 < factor <= 1:
        return factor
    return int(config.hidden_size // config.num_attention_heads * factor)


_GEMMA3_ROPE = (
    Rule("rope_parameters", _per_layer_type_rope,
         lambda v: isinstance(v, dict) and all(isinstance(t, str) and t in ROPE_TYPES for t in v.values()),
         f"per-layer-type RoPE other than {', '.join(ROPE_TYPES)} for every layer type"),
    Rule("partial_rotary_factor", _per_layer_type_partial_rotary, lambda v: v is None, "a partial rotary embedding"),
)

# Per model type, every config attribute its transformers modeling code reads that changes the math
# and that its family module (jaxinterp.models.llama, .qwen3, .gemma, .gpt2, .gpt_neox) does not compute
# for every value.
# Attributes the JAX code handles for any value are not listed, each tested equal in tests/test_model_support.py and
# tests/test_model_families.py: head_dim (shapes come from the weights, the rotary table from
# head_dim), tie_word_embeddings, n_inner, llama's attention_bias (q/k/v/o) and mlp_bias, qwen2's q/k/v
# biases, linear/llama3 RoPE, sliding windows (mistral: every layer; qwen2: the layer_types layers).
# Attributes these model types' modeling code never reads (soft-capping, qk norms, mistral's
# layer_types, ...) change nothing.
JAX_RULES: dict[str, tuple[Rule, ...]] = {
    "llama": (_SILU, *_ROPE),
    "mistral": (_SILU, *_ROPE, _WINDOW),  # every layer slides when sliding_window is set
    "qwen2": (_SILU, *_ROPE, *_LAYER_WINDOWS),
    "qwen3": (_SILU, *_ROPE, *_LAYER_WINDOWS),  # q/k norms, head_dim and attention_bias: any value
    # (1+w) RMSNorms, post-norms, embedding scale, query_pre_attn_scalar, head_dim, attention_bias, both
    # soft-caps (any value, None included) and linear/llama3 RoPE are computed (tests/test_model_families_gemma_neox.py)
    "gemma2": (_GEMMA_GELU, *_ROPE, *_LAYER_WINDOWS, _NOT_BIDIRECTIONAL),
    "gemma3_text": (
        _GEMMA_GELU, *_GEMMA3_ROPE, *_LAYER_WINDOWS, _NOT_BIDIRECTIONAL,
        # Gemma3Attention sets it but never passes it to the attention function: a checkpoint that sets it
        # may expect a soft-cap that transformers does not apply, so neither reading is trusted.
        Rule("attn_logit_softcapping", _attr("attn_logit_softcapping"), lambda v: v is None,
             "attention-logit soft-capping, which transformers' gemma3 attention does not apply"),
    ),
    # parallel and sequential residuals, attention_bias, tie_word_embeddings, rotary_pct and linear/llama3 RoPE
    "gpt_neox": (
        Rule("hidden_act", _attr("hidden_act", "gelu"), lambda v: v in ("gelu", "gelu_new", "gelu_pytorch_tanh"),
             "an MLP activation other than GELU (exact or tanh-approximated)"),
        _ROPE[0],
        Rule("rotary_ndims", _neox_rotary_ndims, lambda v: _POSITIVE(v) and v % 2 == 0,
             "a rotated width per head (head_size x partial_rotary_factor) that is not a positive even number"),
        Rule("head_dim", _attr("head_dim"),  # transformers' rotary table would read it, its attention would not
             lambda v: v is None, "a head_dim attribute (GPT-NeoX heads are hidden_size / num_attention_heads)"),
    ),
    "gpt2": (
        Rule("activation_function", _attr("activation_function", "gelu_new"),
             lambda v: v in ("gelu_new", "gelu_pytorch_tanh"), "an MLP activation other than tanh-approximated GELU"),
        Rule("scale_attn_weights", _attr("scale_attn_weights", True), lambda v: v is True,
             "attention scores not scaled by 1/sqrt(head_dim)"),
        Rule("scale_attn_by_inverse_layer_idx", _attr("scale_attn_by_inverse_layer_idx", False),
             lambda v: v is False, "attention scores scaled by 1/(layer + 1)"),
        Rule("reorder_and_upcast_attn", _attr("reorder_and_upcast_attn", False), lambda v: v is False,
             "attention computed in a different order and precision"),
        Rule("add_cross_attention", _attr("add_cross_attention", False), lambda v: v is False,
             "cross-attention layers"),
    ),
}

# The model types whose every hook the torch backend is tested to read exactly (tests/test_jax_models.py,
# tests/test_model_support.py, tests/test_model_families_gemma_neox.py). A whitelist: hook_attn_out /
# hook_mlp_out are the outputs of the modules torch_backend.HOOK_MODULES names per model type — the
# attention and MLP modules, or for Gemma-2/3 the post-attention / post-feedforward norms after them —
# which must be what the layer adds to the residual stream (OLMo-2's post-norms have no such module
# hook: refused). The residual-stream hooks (hook_embed, hook_resid_pre/post) read layer inputs and
# outputs and would likely be right for any decoder-only model, but the rule is "tested equal or
# refused", so an untested model type is refused whole.
TORCH_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "gpt2", "gpt_neox")
_POST_NORM = ("its decoder layer normalises the attention and MLP outputs before adding them to the residual "
              "stream, so hook_attn_out/hook_mlp_out would not be what is added")
_GEMMA3_MULTIMODAL = ("'gemma3' is the multimodal (vision + text) checkpoint, whose text decoder sits under "
                      "model.language_model; text-only Gemma-3 checkpoints (model_type 'gemma3_text', e.g. "
                      "gemma-3-1b) are supported")
_TORCH_WHY = {"gemma3": _GEMMA3_MULTIMODAL, "olmo2": _POST_NORM, "olmo3": _POST_NORM}
# Model types with no JAX implementation but a more specific reason than "not implemented"
_JAX_WHY = {"gemma3": _GEMMA3_MULTIMODAL}


def jax_refusal(config: Any) -> str | None:
    """Why the JAX backend would not compute ``config``'s model exactly (one line), or None.

    ``config`` is a transformers config, or a bare ``model_type`` string (checks the type only).
    """
    model_type = config if isinstance(config, str) else config.model_type
    if model_type not in JAX_RULES:
        why = f"; {_JAX_WHY[model_type]}" if model_type in _JAX_WHY else ""
        return (f"model_type {model_type!r} has no JAX-native implementation "
                f"(supported: {', '.join(JAX_RULES)}){why}")
    if isinstance(config, str):
        return None
    refused = []
    for rule in JAX_RULES[model_type]:
        value = rule.get(config)
        if not rule.accepted(value):
            refused.append(f"{rule.name}={value!r} ({rule.meaning})")
    if not refused:
        return None
    return (f"{model_type} attribute{'s' if len(refused) > 1 else ''} {', '.join(refused)} "
            f"{'is' if len(refused) == 1 else 'are'} not implemented by the JAX backend")


def torch_refusal(model_type: str) -> str | None:
    """Why the torch backend would not compute ``model_type`` exactly (one line), or None."""
    if model_type in TORCH_MODEL_TYPES:
        return None
    why = f"; {_TORCH_WHY[model_type]}" if model_type in _TORCH_WHY else ""
    return (f"model_type {model_type!r} is not supported by the torch backend: its hooks are tested equal to "
            f"transformers only for {', '.join(TORCH_MODEL_TYPES)}{why}")


def check_jax_support(config: Any) -> None:
    """Raises :class:`UnsupportedModelError` when the JAX backend would not compute ``config`` exactly."""
    if (reason := jax_refusal(config)) is not None:
        torch_reason = torch_refusal(config if isinstance(config, str) else config.model_type)
        hint = "use --config.backend=torch" if torch_reason is None else f"and {torch_reason}"
        raise UnsupportedModelError(f"config field 'backend': {reason}; {hint}")


def check_torch_support(model_type: str) -> None:
    """Raises :class:`UnsupportedModelError` for a model type the torch backend is not tested exact on."""
    if (reason := torch_refusal(model_type)) is not None:
        raise UnsupportedModelError(f"config field 'model': {reason}")
