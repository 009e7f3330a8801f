"""Each JAX model family variant against transformers' forward (eager and SDPA), hook by hook.

Every variant is a tiny random model (seeded, 3 layers, grouped-query attention, random biases and
norm weights) whose logits and every hook must be within 1e-4 relative error of transformers, with
identical greedy next tokens; sliding windows are shorter than the test context, RoPE scalings
non-default where named. What stays refused is tested in tests/test_model_support.py.
"""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from jaxinterp.models import choose_backend, qwen3, resolve_model, support, valid_hook_names
from jaxinterp.models.jax_backend import JaxSourceModel
from jaxinterp.models.layers import causal_mask, rope_inv_freq
from jaxinterp.models.llama import head_dim, rope_parameters, windows
from jaxinterp.models.torch_backend import TorchSourceModel
from tests.test_jax_models import relative_error
from tests.test_model_support import residual_errors
from tests.tiny_models import saved_on_demand

SMALL = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
# head_dim 16: wavelengths 6.3 (kept), 20 (blended) and 63 ... 2e4 (divided by the factor) against 32 / 1, 32 / 4
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}
LINEAR_ROPE = {"rope_type": "linear", "factor": 4.0}
SEQ = 48

VARIANTS = {
    "llama_llama3_rope": LlamaConfig(rope_scaling=LLAMA3_ROPE, **SMALL),
    "llama_linear_rope": LlamaConfig(rope_scaling=LINEAR_ROPE, attention_bias=True, **SMALL),
    "mistral_linear_rope": MistralConfig(rope_scaling=LINEAR_ROPE, sliding_window=None, **SMALL),
    "qwen2_llama3_rope": Qwen2Config(rope_scaling=LLAMA3_ROPE, **SMALL),
    # sliding windows shorter than the SEQ-token context; every layer slides in Mistral
    "mistral_window": MistralConfig(sliding_window=5, **SMALL),
    "mistral_window_llama3_rope": MistralConfig(sliding_window=7, rope_scaling=LLAMA3_ROPE, head_dim=24, **SMALL),
    # layers 1 and 2 slide (from max_window_layers), layer 0 does not
    "qwen2_window": Qwen2Config(use_sliding_window=True, sliding_window=5, max_window_layers=1, **SMALL),
    "qwen2_layer_types": Qwen2Config(use_sliding_window=True, sliding_window=6, rope_scaling=LINEAR_ROPE,
                                     layer_types=["sliding_attention", "full_attention", "sliding_attention"], **SMALL),
    # q/k norms; head_dim 24 and 32, not hidden_size / heads = 16
    "qwen3": Qwen3Config(head_dim=24, **SMALL),
    "qwen3_window_llama3_rope_biases": Qwen3Config(head_dim=32, attention_bias=True, use_sliding_window=True,
                                                   sliding_window=5, max_window_layers=1, rope_scaling=LLAMA3_ROPE,
                                                   tie_word_embeddings=True, **SMALL),
    "qwen3_layer_types_linear_rope": Qwen3Config(head_dim=24, rope_scaling=LINEAR_ROPE, sliding_window=6,
                                                 layer_types=["full_attention", "sliding_attention", "full_attention"],
                                                 use_sliding_window=True, **SMALL),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return saved_on_demand(VARIANTS, tmp_path_factory)


def compare(directory: str, tokens: np.ndarray) -> tuple[dict[str, float], bool]:
    """Max relative error of the JAX logits and every hook against transformers' eager and SDPA forwards,
    plus whether the greedy next tokens agree everywhere."""
    files = resolve_model(directory)
    ours = JaxSourceModel(files)
    hooks = valid_hook_names(ours.n_layers)
    logits, captured = ours.forward(tokens, capture=frozenset(hooks))
    errors, same_greedy = {}, True
    for implementation in ("eager", "sdpa"):
        theirs = _torch_model(files, implementation)
        reference = theirs.run(tokens, hooks)
        with torch.inference_mode():
            torch_logits = theirs.model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
        for name in hooks:
            errors[name] = max(errors.get(name, 0.0), relative_error(captured[name], reference[name]))
        errors["logits"] = max(errors.get("logits", 0.0), relative_error(logits, torch_logits))
        same_greedy &= bool((np.asarray(logits).argmax(-1) == torch_logits.argmax(-1)).all())
    return errors, same_greedy


def _torch_model(files, implementation: str) -> TorchSourceModel:
    model = TorchSourceModel(files)
    model.model.set_attn_implementation(implementation)
    assert model.model.config._attn_implementation == implementation
    return model


def tokens(seq: int = SEQ) -> np.ndarray:
    return np.random.default_rng(0).integers(3, 500, size=(2, seq))


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_matches_transformers(name, saved):
    assert choose_backend(VARIANTS[name], "jax") == "jax"
    errors, same_greedy = compare(saved(name), tokens())
    worst = max(errors, key=errors.get)
    print(f"{name}: max relative error {errors[worst]:.2e} ({worst})")
    assert errors[worst] <= 1e-4, sorted(errors.items(), key=lambda kv: -kv[1])[:3]
    assert same_greedy


@pytest.mark.parametrize("rope", [
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,  # Llama-3.1-8B
     "original_max_position_embeddings": 8192, "rope_theta": 500000.0},
    {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,  # Llama-3.2-1B
     "original_max_position_embeddings": 8192, "rope_theta": 500000.0},
    {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
    {"rope_type": "default", "rope_theta": 1000000.0},
])
@pytest.mark.parametrize("dim", [64, 128])
def test_rope_frequencies_match_transformers(rope, dim):
    config = LlamaConfig(hidden_size=dim * 8, num_attention_heads=8, rope_parameters=dict(rope),
                         max_position_embeddings=131072)
    init = ROPE_INIT_FUNCTIONS.get(rope["rope_type"], type(_default_rotary()).compute_default_rope_parameters)
    theirs, attention_scaling = init(config)
    assert attention_scaling == 1.0  # nothing else scales cos/sin for these types
    ours = rope_inv_freq(rope_parameters(config), head_dim(config))
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6)


def _default_rotary():
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    return LlamaRotaryEmbedding(LlamaConfig(hidden_size=64, num_attention_heads=4))


def test_rope_types_the_code_does_not_compute_stay_refused():
    for rope in ({"rope_type": "dynamic", "factor": 2.0}, {"rope_type": "yarn", "factor": 4.0},
                 {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
                  "original_max_position_embeddings": 256}):
        refusal = support.jax_refusal(LlamaConfig(rope_scaling=rope, **SMALL))
        assert f"rope_parameters['rope_type']={rope['rope_type']!r}" in refusal, refusal
    with pytest.raises(NotImplementedError, match="'yarn'"):
        rope_inv_freq({"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}, 16)


@pytest.mark.parametrize("window", [1, 2, 5])
def test_causal_mask_is_transformers_sliding_window_mask(window):
    from transformers.masking_utils import and_masks, causal_mask_function, sliding_window_overlay

    theirs = and_masks(causal_mask_function, sliding_window_overlay(window))
    index = torch.arange(12)
    expected = np.asarray(theirs(torch.tensor(0), torch.tensor(0), index[:, None], index[None, :]))
    assert np.array_equal(np.asarray(causal_mask(12, window)), expected)
    assert expected.sum(-1).max() == window  # the query's own key is one of the window's
    assert np.array_equal(np.asarray(causal_mask(12)), np.tril(np.ones((12, 12), bool)))


def test_layer_windows_follow_the_model_type():
    assert windows(VARIANTS["mistral_window"]) == (5, 5, 5)
    assert windows(VARIANTS["qwen2_window"]) == (None, 5, 5)
    assert windows(VARIANTS["qwen2_layer_types"]) == (6, None, 6)
    assert windows(Qwen2Config(sliding_window=5, max_window_layers=1, **SMALL)) == (None,) * 3  # not used
    assert windows(LlamaConfig(**SMALL)) == (None,) * 3
    assert qwen3.config_from_hf(VARIANTS["qwen3_window_llama3_rope_biases"]).windows == (None, 5, 5)
    assert qwen3.config_from_hf(VARIANTS["qwen3_layer_types_linear_rope"]).windows == (None, 6, None)


def test_qwen3_is_exact_on_both_backends(saved):
    """Qwen3's layers add their attention and MLP outputs to the residual stream unnormalised, so the torch
    backend's module hooks are what the JAX forward hooks (compared above with both attention kernels)."""
    assert "qwen3" in support.TORCH_MODEL_TYPES and choose_backend("qwen3", "torch") == "torch"
    from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

    layer = Qwen3DecoderLayer(VARIANTS["qwen3"], 0)  # pre-norms only: no post-attention/feedforward norms
    assert {name for name, _ in layer.named_children()} == {"self_attn", "mlp", "input_layernorm",
                                                            "post_attention_layernorm"}
    model = TorchSourceModel(resolve_model(saved("qwen3_window_llama3_rope_biases")))
    errors = residual_errors(model, tokens())
    assert max(errors.values()) <= 1e-5, errors


def test_windows_the_code_does_not_compute_stay_refused():
    for config, named in [(MistralConfig(sliding_window=0, **SMALL), "sliding_window=0"),
                          (Qwen2Config(layer_types=["sliding_attention", "chunked_attention", "full_attention"],
                                       use_sliding_window=True, sliding_window=4, **SMALL),
                           "layer_types=['sliding_attention', 'chunked_attention', 'full_attention']")]:
        refusal = support.jax_refusal(config)
        assert refusal is not None and named in refusal, refusal
