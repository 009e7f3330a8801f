"""GGUF files of every mapped architecture load, without torch, exactly as transformers' own GGUF loader loads them.

Each file is written with ``gguf.GGUFWriter`` from a tiny random transformers model in llama.cpp's
layout (its tensor names; q/k rows permuted for llama, Gemma norm weights stored as 1 + w), with the
metadata transformers' GGUF config parser reads. The reference is
``AutoModelForCausalLM.from_pretrained(directory, gguf_file=...)``: our tensors must equal its
``state_dict`` by name, bit for bit (F32, and Q8_0 against its dequantised values), and the JAX
model built from them must give its logits. What transformers cannot load, we refuse.
"""

import numpy as np
import pytest
import torch
from transformers import (AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, LlamaConfig, Qwen2Config,
                          Qwen3Config)

from jaxinterp.models import resolve_model
from jaxinterp.models.gguf_weights import GGUF_ARCHITECTURES, _unpermute_rotary_rows, gguf_hf_names
from jaxinterp.models.jax_backend import JaxSourceModel
from jaxinterp.models.weights import load_hf_weights
from tests.test_jax_models import relative_error
from tests.test_weights import assert_weights_equal, state_dict_as_stored

SMALL = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
# GGUF architecture → a tiny config of the HF model type transformers parses it as. Attributes GGUF does
# not store (e.g. Qwen3's head_dim, 128 by default) are left at the defaults the parser falls back to.
CONFIGS = {
    "llama": LlamaConfig(tie_word_embeddings=False, **SMALL),
    "qwen2": Qwen2Config(**SMALL),  # q/k/v biases
    "qwen3": Qwen3Config(head_dim=128, tie_word_embeddings=False, **SMALL),  # q/k norms
    "gemma2": Gemma2Config(head_dim=16, sliding_window=5, **SMALL),
    "gemma3": Gemma3TextConfig(head_dim=16, sliding_window=5, tie_word_embeddings=False, **SMALL),
}
SEQ = 24


def random_model(config):
    """A float32 random model whose biases and norm weights are random too, so a dropped fix-up shows."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.normal_(0.0, 0.2)
            elif "norm" in name:
                parameter.normal_(0.0 if config.model_type.startswith("gemma") else 1.0, 0.3)
    return model


def _permute_rotary_rows(weights: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` (convert_hf_to_gguf.py): half-split → interleaved rotary pairs."""
    return weights.reshape(n_heads, 2, weights.shape[0] // n_heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(
        weights.shape)


def as_llama_cpp_stores(architecture: str, gguf_name: str, values: np.ndarray, config) -> np.ndarray:
    """The inverse of transformers' TensorProcessor for the architecture: what llama.cpp's converter writes."""
    if architecture == "llama" and ".attn_q." in gguf_name:
        return _permute_rotary_rows(values, config.num_attention_heads)
    if architecture == "llama" and ".attn_k." in gguf_name:
        return _permute_rotary_rows(values, config.num_key_value_heads)
    if architecture.startswith("gemma") and "norm.weight" in gguf_name:
        return values + 1
    return values


def write_gguf(model, path, architecture: str, quantized: bool = False, name: str = "tiny",
               extra_tensors: dict | None = None, drop: tuple[str, ...] = ()) -> str:
    """``model`` as a llama.cpp GGUF file of ``architecture`` (2-D tensors as Q8_0 when ``quantized``)."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_embedding_length(config.hidden_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(config.vocab_size)
    if architecture == "llama":
        writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    if architecture.startswith("gemma"):
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
        writer.add_sliding_window(config.sliding_window)
    hf_to_gguf = {hf: gguf_name for gguf_name, hf in gguf_hf_names(architecture, config.num_hidden_layers).items()}
    tensors = state_dict_as_stored(model)
    for hf_name, values in tensors.items():
        module, _, kind = hf_name.rpartition(".")
        gguf_name = f"{hf_to_gguf[module]}.{kind}"
        if gguf_name in drop:
            continue
        values = as_llama_cpp_stores(architecture, gguf_name, values, config)
        if quantized and values.ndim == 2:
            writer.add_tensor(gguf_name, gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gguf_name, np.ascontiguousarray(values, dtype=np.float32))
    for gguf_name, values in (extra_tensors or {}).items():
        writer.add_tensor(gguf_name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def transformers_gguf_model(path: str):
    """The reference: transformers' own GGUF loader, float32."""
    files = resolve_model(path, convert_gguf=False)
    return AutoModelForCausalLM.from_pretrained(files.directory, gguf_file=files.gguf_file, dtype=torch.float32,
                                                local_files_only=True).eval()


@pytest.fixture(scope="module")
def models():
    built = {}

    def model(architecture: str):
        if architecture not in built:
            built[architecture] = random_model(CONFIGS[architecture])
        return built[architecture]

    return model


def test_every_mapped_architecture_is_tested():
    assert sorted(CONFIGS) == sorted(GGUF_ARCHITECTURES)


@pytest.mark.parametrize("architecture", CONFIGS)
def test_names_match_transformers_map(architecture, models):
    """Every HF parameter has a GGUF name, the one transformers' get_gguf_hf_weights_map gives it."""
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    model = models(architecture)
    theirs = get_gguf_hf_weights_map(model, TensorProcessor())
    ours = {f"{gguf_module}.{kind}": f"{hf_module}.{kind}"
            for gguf_module, hf_module in gguf_hf_names(architecture, model.config.num_hidden_layers).items()
            for kind in ("weight", "bias")}
    assert {name: ours[name] for name in theirs} == theirs
    assert set(state_dict_as_stored(model)) <= set(ours.values())


@pytest.mark.parametrize("quantized", [False, True], ids=["f32", "q8_0"])
@pytest.mark.parametrize("architecture", CONFIGS)
def test_gguf_matches_transformers_loader(architecture, quantized, models, tmp_path):
    model = models(architecture)
    path = write_gguf(model, tmp_path / f"tiny-{architecture}.gguf", architecture, quantized=quantized)
    reference = transformers_gguf_model(path)
    config, weights = load_hf_weights(resolve_model(path, convert_gguf=False))
    assert config.model_type == reference.config.model_type == GGUF_ARCHITECTURES[architecture].model_type
    assert_weights_equal(weights, state_dict_as_stored(reference))
    if not quantized:  # the file round-trips to the model it was written from (so the layout fix-ups are inverted)
        original = state_dict_as_stored(model)
        for name, values in weights.items():
            np.testing.assert_allclose(values, original[name], rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("architecture", ["qwen3", "gemma2", "gemma3"])
def test_jax_logits_from_gguf_match_transformers(architecture, models, tmp_path):
    path = write_gguf(models(architecture), tmp_path / f"tiny-{architecture}.gguf", architecture)
    reference = transformers_gguf_model(path)
    reference.set_attn_implementation("eager")
    ours = JaxSourceModel(resolve_model(path, convert_gguf=False))
    ids = np.random.default_rng(0).integers(3, 500, size=(2, SEQ))
    with torch.inference_mode():
        expected = reference(torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
    logits = np.asarray(ours.logits(ids))
    assert relative_error(logits, expected) < 1e-4
    np.testing.assert_array_equal(logits.argmax(-1), expected.argmax(-1))


def test_rotary_unpermute_inverts_llama_cpp_permute():
    values = np.random.default_rng(0).standard_normal((4 * 8, 16)).astype(np.float32)
    np.testing.assert_array_equal(_unpermute_rotary_rows(_permute_rotary_rows(values, 4), 4), values)


def test_unknown_tensor_is_refused(models, tmp_path):
    """transformers drops a GGUF tensor it cannot name (leaving the model short of it); we refuse the file."""
    path = write_gguf(models("qwen2"), tmp_path / "tiny-qwen2-moe-tensor.gguf", "qwen2",
                      extra_tensors={"blk.0.ffn_gate_exps.weight": np.zeros((2, 4, 8), dtype=np.float32)})
    with pytest.raises(NotImplementedError, match=r"GGUF tensor 'blk\.0\.ffn_gate_exps\.weight' of architecture "
                                                  r"'qwen2' has no mapped HF parameter; install torch"):
        load_hf_weights(resolve_model(path, convert_gguf=False))


def test_missing_tensor_is_refused(models, tmp_path):
    """transformers would initialise a missing parameter at random; we refuse the file, naming the tensor."""
    path = write_gguf(models("gemma3"), tmp_path / "tiny-gemma3-short.gguf", "gemma3",
                      drop=("blk.1.attn_k_norm.weight", "blk.2.ffn_up.weight"))
    with pytest.raises(ValueError, match=r"GGUF file of architecture 'gemma3' lacks tensor 'blk\.1\.attn_k_norm"
                                         r"\.weight' and 1 more"):
        load_hf_weights(resolve_model(path, convert_gguf=False))


def test_llama_gguf_parsed_as_mistral_is_refused(models, tmp_path):
    """general.name 'mistral' makes transformers parse a llama file as Mistral, whose tensors it then cannot map."""
    path = write_gguf(models("llama"), tmp_path / "tiny-mistral.gguf", "llama", name="mistral")
    with pytest.raises(NotImplementedError, match="mistral"):
        transformers_gguf_model(path)
    with pytest.raises(NotImplementedError, match="GGUF architecture 'llama' parsed by transformers as model_type "
                                                  "'mistral'") as refused:
        load_hf_weights(resolve_model(path, convert_gguf=False))
    assert "\n" not in str(refused.value)


def test_llama_gguf_of_a_mistral_model_loads_as_llama(models, tmp_path):
    """llama.cpp writes Mistral-7B as architecture 'llama' (any other name): Llama without a sliding window."""
    path = write_gguf(models("llama"), tmp_path / "tiny-mistral-7b.gguf", "llama", name="Mistral-7B-v0.1")
    config, weights = load_hf_weights(resolve_model(path, convert_gguf=False))
    assert config.model_type == "llama"
    assert_weights_equal(weights, state_dict_as_stored(transformers_gguf_model(path)))
