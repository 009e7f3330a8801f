"""Gemma-2, Gemma-3 (text) and GPT-NeoX on both backends against transformers' forward, hook by hook.

Every variant is a tiny random model (seeded, 3 layers, random biases and norm weights; grouped-query
attention and sliding windows shorter than the context for Gemma; soft-caps small enough to bite
for Gemma-2) whose logits and every hook on the JAX backend must be within 1e-4 relative error of
transformers' eager forward (and SDPA where the model type has it), with identical greedy next
tokens. The torch backend's hooks are the residual stream's parts (resid_post = resid_pre +
attn_out + mlp_out): for Gemma they read the post-norms, what the layer adds. Each computed feature
is shown to move the logits far beyond the tolerance, and what stays refused is refused in one line.
"""

import copy

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import Gemma2Config, Gemma3Config, Gemma3TextConfig, GPTNeoXConfig

from jaxinterp.mesh import make_mesh
from jaxinterp.models import HookEdit, choose_backend, resolve_model, support, valid_hook_names
from jaxinterp.models.jax_backend import JaxSourceModel
from jaxinterp.models.support import UnsupportedModelError
from jaxinterp.models.torch_backend import HOOK_MODULES, TorchSourceModel
from jaxinterp.models.transformer import build_model, hooked_forward
from jaxinterp.models.weights import load_hf_weights
from tests.test_jax_models import relative_error
from tests.test_model_support import residual_errors
from tests.tiny_models import saved_on_demand

SMALL = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
SMALL_NEOX = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
SLIDING, FULL = "sliding_attention", "full_attention"
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}
SEQ = 48

VARIANTS = {
    # default layer_types: sliding, full, sliding; query_pre_attn_scalar 8 != head_dim 16
    "gemma2": Gemma2Config(head_dim=16, query_pre_attn_scalar=8, sliding_window=5, attn_logit_softcapping=1.0,
                           final_logit_softcapping=2.0, **SMALL),
    "gemma2_biases_linear_rope_untied": Gemma2Config(
        head_dim=24, query_pre_attn_scalar=32, sliding_window=7, layer_types=[FULL, SLIDING, SLIDING],
        attn_logit_softcapping=2.0, final_logit_softcapping=3.0, attention_bias=True, tie_word_embeddings=False,
        rope_scaling={"rope_type": "linear", "factor": 4.0}, **SMALL),
    # legacy keys: rope_theta and rope_scaling for the full layers, rope_local_base_freq for the sliding ones
    "gemma3_text": Gemma3TextConfig(head_dim=24, query_pre_attn_scalar=24, sliding_window=5, rope_theta=1e6,
                                    rope_local_base_freq=100.0, rope_scaling={"rope_type": "linear", "factor": 8.0},
                                    layer_types=[SLIDING, FULL, SLIDING], **SMALL),
    "gemma3_text_softcap_llama3_rope_biases": Gemma3TextConfig(
        head_dim=16, query_pre_attn_scalar=12, sliding_window=6, final_logit_softcapping=2.0, attention_bias=True,
        tie_word_embeddings=False, layer_types=[FULL, SLIDING, FULL],
        rope_parameters={SLIDING: {"rope_type": "default", "rope_theta": 500.0},
                         FULL: {**LLAMA3_ROPE, "rope_theta": 10000.0}}, **SMALL),
    # Pythia: parallel residual, a quarter of each head rotated, exact GELU, biases, untied embed_out
    "gpt_neox": GPTNeoXConfig(rotary_pct=0.25, **SMALL_NEOX),
    "gpt_neox_sequential_linear_rope_tied": GPTNeoXConfig(
        use_parallel_residual=False, rotary_pct=0.5, rotary_emb_base=500.0, hidden_act="gelu_new",
        attention_bias=False, tie_word_embeddings=True, rope_scaling={"rope_type": "linear", "factor": 2.0},
        **SMALL_NEOX),
}
# what hooked_forward computes on top of a plain pre-norm block, each removed in turn: (variant, change)
FEATURES = {
    "attention soft-cap": ("gemma2", dict(attn_logit_softcapping=None)),
    "final soft-cap": ("gemma2", dict(final_logit_softcapping=None)),
    "query_pre_attn_scalar": ("gemma2", dict(query_pre_attn_scalar=16)),
    "sliding window": ("gemma2", dict(sliding_window=4096)),
    "gemma3 sliding window": ("gemma3_text", dict(sliding_window=4096)),
    "local RoPE base": ("gemma3_text", dict(rope_parameters={SLIDING: {"rope_type": "default", "rope_theta": 1e6},
                                                            FULL: {"rope_type": "linear", "factor": 8.0,
                                                                   "rope_theta": 1e6}})),
    "global RoPE scaling": ("gemma3_text", dict(rope_parameters={SLIDING: {"rope_type": "default", "rope_theta": 100.0},
                                                                FULL: {"rope_type": "default", "rope_theta": 1e6}})),
    "parallel residual": ("gpt_neox", dict(use_parallel_residual=False)),
    "sequential residual": ("gpt_neox_sequential_linear_rope_tied", dict(use_parallel_residual=True)),
    "partial rotary": ("gpt_neox", dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                         "partial_rotary_factor": 0.5})),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return saved_on_demand(VARIANTS, tmp_path_factory)


def tokens(seq: int = SEQ) -> np.ndarray:
    return np.random.default_rng(0).integers(3, 500, size=(2, seq))


def _torch_model(files, implementation: str) -> TorchSourceModel:
    model = TorchSourceModel(files)
    model.model.set_attn_implementation(implementation)
    assert model.model.config._attn_implementation == implementation
    return model


def _implementations(model_type: str) -> tuple[str, ...]:
    return ("eager",) if model_type == "gemma2" else ("eager", "sdpa")  # transformers: gemma2 has no SDPA (soft-caps)


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_matches_transformers(name, saved):
    """JAX logits and hooks against transformers' forward; the reference hooks are read by the torch backend,
    so its hooks equal the JAX backend's too."""
    config = VARIANTS[name]
    assert choose_backend(config, "jax") == "jax" and choose_backend(config, "torch") == "torch"
    files = resolve_model(saved(name))
    ours = JaxSourceModel(files)
    hooks = valid_hook_names(ours.n_layers, ours.config)
    ids = tokens()
    logits, captured = ours.forward(ids, capture=frozenset(hooks))
    errors = {}
    for implementation in _implementations(config.model_type):
        theirs = _torch_model(files, implementation)
        reference = theirs.run(ids, hooks)
        with torch.inference_mode():
            torch_logits = theirs.model(torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
        for hook in hooks:
            errors[hook] = max(errors.get(hook, 0.0), relative_error(captured[hook], reference[hook]))
        errors["logits"] = max(errors.get("logits", 0.0), relative_error(logits, torch_logits))
        assert (np.asarray(logits).argmax(-1) == torch_logits.argmax(-1)).all(), implementation
    worst = max(errors, key=errors.get)
    print(f"{name}: max relative error {errors[worst]:.2e} ({worst})")
    assert errors[worst] <= 1e-4, sorted(errors.items(), key=lambda kv: -kv[1])[:3]


@pytest.mark.parametrize("name", VARIANTS)
def test_torch_hooks_are_the_residual_stream(name, saved):
    model = TorchSourceModel(resolve_model(saved(name)))
    assert model.config.model_type in support.TORCH_MODEL_TYPES
    errors = residual_errors(model, tokens())
    assert max(errors.values()) <= 1e-5, errors


def test_torch_hooks_read_the_modules_the_table_names(saved):
    """Gemma's attention/MLP hooks read the post-norms; GPT-NeoX's its attention and MLP modules."""
    assert HOOK_MODULES["gemma2"].attn_out == HOOK_MODULES["gemma3_text"].attn_out == "post_attention_layernorm"
    assert HOOK_MODULES["gemma2"].mlp_out == HOOK_MODULES["gemma3_text"].mlp_out == "post_feedforward_layernorm"
    assert (HOOK_MODULES["gpt_neox"].attn_out, HOOK_MODULES["gpt_neox"].mlp_out) == ("attention", "mlp")
    assert set(support.TORCH_MODEL_TYPES) <= set(HOOK_MODULES)
    # a module hook that misses the post-norm is measurably not the residual stream's part
    model = TorchSourceModel(resolve_model(saved("gemma2")))
    model._attn, model._mlp = "self_attn", "mlp"
    assert residual_errors(model, tokens())["hook_attn_out+hook_mlp_out"] > 0.1


@pytest.mark.parametrize("name", ["gemma2", "gemma3_text", "gpt_neox", "gpt_neox_sequential_linear_rope_tied"])
@pytest.mark.parametrize("hook", ["blocks.1.hook_attn_out", "blocks.1.hook_mlp_out", "blocks.0.hook_resid_post"])
def test_edits_agree_across_backends(name, hook, saved):
    """Replacing a hook means the same on both backends: what the layer adds (Gemma: after the post-norm)."""
    files = resolve_model(saved(name))
    edit = HookEdit(hook, lambda scale, x: x * scale, jnp.float32(0.5))
    ids = tokens(16)
    ours, theirs = JaxSourceModel(files).logits(ids, edit), TorchSourceModel(files).logits(ids, edit)
    clean = TorchSourceModel(files).logits(ids)
    assert relative_error(theirs, clean) > 1e-3  # the edit changes something
    assert relative_error(ours, theirs) <= 1e-4


@pytest.mark.parametrize("name", ["gemma2", "gemma3_text", "gpt_neox"])
def test_sharded_forward_matches_one_device(name, saved):
    files = resolve_model(saved(name))
    ids = np.random.default_rng(1).integers(3, 500, size=(4, 32))
    one = JaxSourceModel(files, mesh=make_mesh(data=1, model=1))
    eight = JaxSourceModel(files, mesh=make_mesh(data=2, model=4))
    from jax.sharding import PartitionSpec as P

    block = eight.state["layers"][0]
    column, row = ("query_key_value", "dense") if name == "gpt_neox" else ("q_proj", "o_proj")
    assert block[column]["kernel"][...].sharding.spec == P(None, "model")
    assert block[row]["kernel"][...].sharding.spec == P("model", None)
    capture = frozenset({"blocks.2.hook_resid_post", "blocks.1.hook_attn_out", "blocks.1.hook_mlp_out"})
    (logits_1, acts_1), (logits_8, acts_8) = one.forward(ids, capture), eight.forward(ids, capture)
    # sharded matmuls sum in another order; the norms' (1 + w) scales make Gemma's activations large
    assert relative_error(logits_8, logits_1) <= 1e-5
    for hook in capture:
        assert relative_error(acts_8[hook], acts_1[hook]) <= 1e-5, hook


@pytest.mark.parametrize("feature", FEATURES)
def test_each_feature_moves_the_logits_beyond_the_tolerance(feature, saved):
    """The equality tests above would catch the feature dropped: without it the JAX logits move by > 1e-3."""
    name, changes = FEATURES[feature]
    config, weights = load_hf_weights(resolve_model(saved(name)))
    changed = copy.deepcopy(config)
    for attribute, value in changes.items():
        setattr(changed, attribute, value)
    ids = jnp.asarray(tokens())
    logits = lambda cfg: np.asarray(hooked_forward(build_model(cfg, weights), ids, logits=True)[0])
    assert relative_error(logits(changed), logits(config)) > 1e-3


# (config, text the JAX refusal must contain: the attribute and its value)
JAX_REFUSED = {
    "gemma2_erf_gelu": (Gemma2Config(hidden_activation="gelu", **SMALL), "hidden_activation='gelu'"),
    "gemma2_yarn": (Gemma2Config(rope_scaling={"rope_type": "yarn", "factor": 4.0}, **SMALL),
                    "rope_parameters['rope_type']='yarn'"),
    "gemma2_partial_rotary": (Gemma2Config(partial_rotary_factor=0.5, **SMALL), "partial_rotary_factor=0.5"),
    "gemma2_bidirectional": (Gemma2Config(use_bidirectional_attention=True, **SMALL),
                             "use_bidirectional_attention=True"),
    "gemma2_no_window": (Gemma2Config(sliding_window=None, **SMALL), "sliding_window=None"),
    "gemma2_chunked": (Gemma2Config(layer_types=[SLIDING, "chunked_attention", FULL], **SMALL),
                       "layer_types=['sliding_attention', 'chunked_attention', 'full_attention']"),
    "gemma3_attn_softcap": (Gemma3TextConfig(attn_logit_softcapping=50.0, **SMALL), "attn_logit_softcapping=50.0"),
    "gemma3_yarn_global": (Gemma3TextConfig(rope_scaling={"rope_type": "yarn", "factor": 8.0},
                                            layer_types=[SLIDING, FULL, SLIDING], **SMALL), "'full_attention': 'yarn'"),
    "gemma3_partial_rotary": (Gemma3TextConfig(partial_rotary_factor=0.5, **SMALL), "partial_rotary_factor="),
    "gemma3_bidirectional": (Gemma3TextConfig(use_bidirectional_attention=True, **SMALL),
                             "use_bidirectional_attention=True"),
    "gemma3_erf_gelu": (Gemma3TextConfig(hidden_activation="gelu", **SMALL), "hidden_activation='gelu'"),
    "neox_relu": (GPTNeoXConfig(hidden_act="relu", **SMALL_NEOX), "hidden_act='relu'"),
    "neox_dynamic_rope": (GPTNeoXConfig(rope_scaling={"rope_type": "dynamic", "factor": 2.0}, **SMALL_NEOX),
                          "rope_parameters['rope_type']='dynamic'"),
    "neox_odd_rotary": (GPTNeoXConfig(rotary_pct=0.3125, **SMALL_NEOX), "rotary_ndims=5"),
    "neox_head_dim": (GPTNeoXConfig(head_dim=8, **SMALL_NEOX), "head_dim=8"),
}


@pytest.mark.parametrize("name", JAX_REFUSED)
def test_jax_refuses_attributes_it_does_not_compute(name):
    config, named = JAX_REFUSED[name]
    with pytest.raises(UnsupportedModelError) as refused:
        choose_backend(config, "jax")
    line = str(refused.value)
    assert named in line and "not implemented by the JAX backend" in line, line
    assert line.startswith("config field 'backend': ") and line.endswith("use --config.backend=torch")
    assert "\n" not in line
    assert choose_backend(config, "torch") == "torch"  # transformers' own forward, hooked where the table says


def test_multimodal_gemma3_is_refused_with_a_hint():
    config = Gemma3Config(text_config=dict(SMALL, head_dim=16))
    for backend, start in [("jax", "config field 'backend': "), ("torch", "config field 'model': "),
                           ("auto", "config field 'model': no backend computes it exactly")]:
        with pytest.raises(UnsupportedModelError) as refused:
            choose_backend(config, backend)
        line = str(refused.value)
        assert line.startswith(start) and "'gemma3'" in line and "gemma3_text" in line and "\n" not in line, line


@pytest.mark.parametrize("architecture", ["gptneox"])
def test_gguf_of_the_new_families_is_refused(architecture, tmp_path):
    """Gemma-2/3 GGUF files load (tests/test_gguf_families.py); GPT-NeoX ones, which transformers' GGUF reader
    does not read either, are refused: they load from safetensors."""
    import gguf

    path = tmp_path / f"tiny-{architecture}.gguf"
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    refusal = f"GGUF architecture '{architecture}' is not supported by jaxinterp's torch-free GGUF reader"
    with pytest.raises(NotImplementedError, match=refusal):
        load_hf_weights(resolve_model(str(path), convert_gguf=False))
