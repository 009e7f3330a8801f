"""A source model is either exact or refused with one line that says why (jaxinterp.models.support).

Refusals are checked on transformers configs (no weights needed) and, end to end, on tiny random
models saved with transformers; every accepted variant is compared hook by hook with transformers.
"""

import numpy as np
import pytest
import torch
from transformers import GPT2Config, LlamaConfig, MistralConfig, Olmo2Config, Qwen2Config, Qwen3Config

from jaxinterp.cli import main
from jaxinterp.config import ConfigError
from jaxinterp.models import choose_backend, load_source_model, resolve_model, valid_hook_names
from jaxinterp.models import jax_backend, support
from jaxinterp.models.jax_backend import JaxSourceModel
from jaxinterp.models.support import UnsupportedModelError
from jaxinterp.models.torch_backend import TorchSourceModel
from tests.test_jax_models import compare_to_torch, relative_error
from tests.tiny_models import save_tiny_model

SMALL = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
SMALL_GPT2 = dict(vocab_size=512, n_embd=64, n_layer=3, n_head=4, n_positions=512, bos_token_id=1, eos_token_id=2)

# (config, text the refusal must contain: the attribute and its value)
JAX_REFUSED = {
    # sliding windows are computed (tests/test_model_families.py), a non-positive one is not
    "mistral_zero_window": (MistralConfig(sliding_window=0, **SMALL), "sliding_window=0"),
    "qwen2_window_without_size": (Qwen2Config(layer_types=["full_attention", "sliding_attention", "full_attention"],
                                              **SMALL), "sliding_window=None"),
    "dynamic_rope": (MistralConfig(rope_scaling={"rope_type": "dynamic", "factor": 2.0}, sliding_window=4, **SMALL),
                     "rope_parameters['rope_type']='dynamic'"),
    "yarn_rope": (Qwen2Config(rope_scaling={"rope_type": "yarn", "factor": 4.0}, **SMALL),
                  "rope_parameters['rope_type']='yarn'"),
    # llama3 and linear RoPE are computed (tests/test_model_families.py); longrope is not
    "longrope": (LlamaConfig(rope_scaling={"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
                                           "original_max_position_embeddings": 256}, **SMALL),
                 "rope_parameters['rope_type']='longrope'"),
    "partial_rotary": (LlamaConfig(partial_rotary_factor=0.5, **SMALL), "partial_rotary_factor=0.5"),
    "llama_gelu": (LlamaConfig(hidden_act="gelu", **SMALL), "hidden_act='gelu'"),
    "gpt2_erf_gelu": (GPT2Config(activation_function="gelu", **SMALL_GPT2), "activation_function='gelu'"),
    "gpt2_unscaled": (GPT2Config(scale_attn_weights=False, **SMALL_GPT2), "scale_attn_weights=False"),
    "gpt2_layer_scaled": (GPT2Config(scale_attn_by_inverse_layer_idx=True, **SMALL_GPT2),
                          "scale_attn_by_inverse_layer_idx=True"),
    "gpt2_reordered": (GPT2Config(reorder_and_upcast_attn=True, **SMALL_GPT2), "reorder_and_upcast_attn=True"),
    "gpt2_cross": (GPT2Config(add_cross_attention=True, **SMALL_GPT2), "add_cross_attention=True"),
}

# Accepted variants, each compared with transformers below: head_dim != hidden_size // heads, the
# qwen2 q/k/v biases, llama's attention (q/k/v/o) and MLP biases with tied embeddings, torch's tanh GELU, a
# sliding window, qwen3's q/k norms (more in tests/test_model_families.py).
ACCEPTED = {
    "mistral": MistralConfig(sliding_window=None, head_dim=32, **SMALL),
    "qwen2": Qwen2Config(**SMALL),
    "llama_biases": LlamaConfig(attention_bias=True, mlp_bias=True, tie_word_embeddings=True, **SMALL),
    "mistral_window": MistralConfig(sliding_window=4, **SMALL),
    "qwen3": Qwen3Config(head_dim=24, **SMALL),
    "gpt2_tanh": GPT2Config(activation_function="gelu_pytorch_tanh", n_inner=96, **SMALL_GPT2),
}
OLMO2 = Olmo2Config(**SMALL)  # post-norms only: no backend computes it (Gemma's are in test_model_families_gemma_neox.py)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``tiny(name)`` → the directory of a saved random-weight model (built once per module)."""
    configs = {**ACCEPTED, "dynamic_rope": JAX_REFUSED["dynamic_rope"][0], "olmo2": OLMO2}
    saved = {}

    def build(name: str) -> str:
        if name not in saved:
            with_tokenizer = name == "dynamic_rope"  # the CLI test extracts from it
            saved[name] = save_tiny_model(configs[name], tmp_path_factory.mktemp(name), tokenizer=with_tokenizer)
        return saved[name]

    return build


def tokens(seq: int = 48):
    return np.random.default_rng(0).integers(3, 500, size=(2, seq))


@pytest.mark.parametrize("name", JAX_REFUSED)
def test_jax_refuses_attributes_it_does_not_compute(name):
    config, named = JAX_REFUSED[name]
    with pytest.raises(UnsupportedModelError) as refused:
        choose_backend(config, "jax")
    line = str(refused.value)
    assert named in line and "not implemented by the JAX backend" in line, line
    assert line.startswith("config field 'backend': ") and line.endswith("use --config.backend=torch")
    assert "\n" not in line and isinstance(refused.value, ConfigError)
    assert choose_backend(config, "auto") == "torch"  # torch computes these exactly
    assert choose_backend(config, "torch") == "torch"


@pytest.mark.parametrize("name", ACCEPTED)
def test_accepted_configs_pass_the_check(name):
    support.check_jax_support(ACCEPTED[name])
    assert choose_backend(ACCEPTED[name], "jax") == "jax"


def test_model_types_no_backend_computes_are_refused():
    with pytest.raises(UnsupportedModelError, match="'olmo2' has no JAX-native implementation"):
        choose_backend(OLMO2, "jax")
    with pytest.raises(UnsupportedModelError) as refused:
        choose_backend(OLMO2, "torch")
    line = str(refused.value)
    assert "'olmo2' is not supported by the torch backend" in line and ", ".join(support.TORCH_MODEL_TYPES) in line
    assert "hook_attn_out/hook_mlp_out" in line and "\n" not in line
    with pytest.raises(UnsupportedModelError, match="no backend computes it exactly: .*JAX.*torch backend"):
        choose_backend(OLMO2, "auto")
    with pytest.raises(UnsupportedModelError, match="'phi' is not supported by the torch backend"):
        choose_backend("phi", "torch")


@pytest.mark.parametrize("name", ACCEPTED)
def test_accepted_configs_match_transformers(name, tiny):
    files = resolve_model(tiny(name))
    errors, same_greedy = compare_to_torch(files, tokens(), 3)
    assert max(errors.values()) <= 1e-4, errors
    assert same_greedy


def test_dynamic_rope_is_refused_before_the_weights_are_read(tiny, monkeypatch):
    directory = tiny("dynamic_rope")

    def no_weights(files):
        raise AssertionError("weights read before the refusal")

    monkeypatch.setattr(jax_backend, "load_hf_weights", no_weights)
    monkeypatch.setattr(jax_backend, "lazy_safetensors", no_weights)
    with pytest.raises(UnsupportedModelError,
                       match=r"mistral attribute rope_parameters\['rope_type'\]='dynamic' \(RoPE scaling"):
        JaxSourceModel(resolve_model(directory))
    with pytest.raises(UnsupportedModelError, match="'dynamic'"):
        load_source_model(directory, backend="jax")
    assert load_source_model(directory, backend="auto").backend == "torch"  # exact there


def test_cli_prints_the_refusal_as_one_line(tiny, tmp_path, capsys):
    directory = tiny("dynamic_rope")
    code = main(["extract", "--config", "configs/extract.py", f"--config.model={directory}", "--config.backend=jax",
                 "--config.hooks=blocks.1.hook_resid_post", f"--config.out={tmp_path / 'store'}",
                 "--config.max_tokens=1024", "--config.context_size=64"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "rope_type']='dynamic'" in err and "use --config.backend=torch" in err
    assert not (tmp_path / "store").exists()


def residual_errors(model: TorchSourceModel, ids: np.ndarray) -> dict[str, float]:
    """How far the torch hooks are from what the residual stream is made of, per hook kind.

    resid_pre(0) is the embedded input, each layer's output is resid_pre + attn_out + mlp_out, and
    resid_pre(l) is transformers' hidden_states[l].
    """
    n = model.n_layers
    acts = model.run(ids, valid_hook_names(n, model.config))
    with torch.inference_mode():
        hidden = model.model(torch.as_tensor(ids), output_hidden_states=True).hidden_states
        embedded = model.model.get_input_embeddings()(torch.as_tensor(ids)).numpy()
    act = lambda layer, kind: acts[f"blocks.{layer}.hook_{kind}"]
    return {"hook_embed": relative_error(acts["hook_embed"], embedded),
            "hook_resid_pre": max(relative_error(act(layer, "resid_pre"), hidden[layer].numpy()) for layer in range(n)),
            "hook_attn_out+hook_mlp_out": max(relative_error(
                act(layer, "resid_pre") + act(layer, "attn_out") + act(layer, "mlp_out"), act(layer, "resid_post"))
                for layer in range(n)),
            "hook_resid_post": max(relative_error(act(layer, "resid_post"), act(layer + 1, "resid_pre"))
                                   for layer in range(n - 1))}


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2", "mistral", "mistral_window", "dynamic_rope", "qwen2",
                                  "qwen3", "llama_biases"])
def test_torch_hooks_are_the_residual_stream(name, tiny, request):
    """Every model type the torch backend accepts (sliding windows included), on transformers' own forward."""
    directory = request.getfixturevalue(name) if name.startswith("tiny_") else tiny(name)
    model = TorchSourceModel(resolve_model(directory))
    assert model.config.model_type in support.TORCH_MODEL_TYPES
    errors = residual_errors(model, tokens())
    assert max(errors.values()) <= 1e-5, errors


def test_torch_refuses_olmo2(tiny, monkeypatch):
    directory = tiny("olmo2")
    with pytest.raises(UnsupportedModelError, match="'olmo2' is not supported by the torch backend.*hook_attn_out"):
        TorchSourceModel(resolve_model(directory))
    with pytest.raises(UnsupportedModelError, match="no backend computes it exactly"):
        load_source_model(directory, backend="auto")
    # Why: let it through, and its attention/MLP hooks are not what its layers add to the residual stream
    monkeypatch.setattr(support, "TORCH_MODEL_TYPES", (*support.TORCH_MODEL_TYPES, "olmo2"))
    errors = residual_errors(TorchSourceModel(resolve_model(directory)), tokens())
    assert errors["hook_attn_out+hook_mlp_out"] > 0.1, errors
