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

# Per model type, every config attribute its transformers modeling code reads that changes the math
# and that its family module (jaxinterp.models.llama, .qwen3, .gpt2) does not compute for every value.
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
# tests/test_model_support.py). A whitelist: hook_attn_out / hook_mlp_out are the outputs of the
# layer's attention and MLP modules, which are what is added to the residual stream only where no norm
# follows them. The residual-stream hooks (hook_embed, hook_resid_pre/post) read layer inputs and
# outputs and would likely be right for any decoder-only model, but the rule is "tested equal or
# refused", so an untested model type is refused whole.
TORCH_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
_POST_NORM = ("its decoder layer normalises the attention and MLP outputs before adding them to the residual "
              "stream, so hook_attn_out/hook_mlp_out would not be what is added")
_TORCH_WHY = {"gemma2": _POST_NORM, "gemma3": _POST_NORM, "gemma3_text": _POST_NORM, "olmo2": _POST_NORM,
              "olmo3": _POST_NORM}


def jax_refusal(config: Any) -> str | None:
    """Why the JAX backend would not compute ``config``'s model exactly (one line), or None.

    ``config`` is a transformers config, or a bare ``model_type`` string (checks the type only).
    """
    model_type = config if isinstance(config, str) else config.model_type
    if model_type not in JAX_RULES:
        return (f"model_type {model_type!r} has no JAX-native implementation "
                f"(supported: {', '.join(JAX_RULES)})")
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
