"""load_hf_weights gives exactly the parameters transformers' loaded model holds, by state_dict name."""

import shutil

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open

from jaxinterp.models import resolve_model
from jaxinterp.models.gguf_weights import NON_PARAMETERS, _unpermute_rotary_rows, gguf_hf_names
from jaxinterp.models.weights import load_hf_weights


def state_dict_as_stored(model) -> dict[str, np.ndarray]:
    """The model's state_dict as float32 numpy, less the tied output embedding.

    With ``tie_word_embeddings`` the state_dict lists ``lm_head.weight`` as a second name for the input
    embedding; checkpoints store it once (safetensors: ``save_pretrained`` drops it; GGUF: no
    ``output.weight``), so the loader returns only the embedding. Checked here to really be shared.
    """
    weights = {name: tensor.float().numpy() for name, tensor in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
        del weights["lm_head.weight"]
    return weights


def assert_weights_equal(loaded: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(loaded) == sorted(expected)
    for name, values in expected.items():
        assert loaded[name].dtype == np.float32, name
        np.testing.assert_array_equal(loaded[name], values, err_msg=name)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_safetensors_match_state_dict(fixture, request):
    from transformers import AutoModelForCausalLM

    directory = request.getfixturevalue(fixture)
    config, weights = load_hf_weights(resolve_model(directory))
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
    assert config.model_type == model.config.model_type
    assert_weights_equal(weights, state_dict_as_stored(model))


def test_bf16_safetensors_upcast_exactly(tiny_llama, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, local_files_only=True).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="numpy") as checkpoint:
        assert checkpoint.get_tensor("model.embed_tokens.weight").dtype == ml_dtypes.bfloat16
    _, weights = load_hf_weights(resolve_model(str(tmp_path)))
    assert_weights_equal(weights, state_dict_as_stored(model))


def test_sharded_safetensors(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, local_files_only=True)
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1 and (tmp_path / "model.safetensors.index.json").exists()
    _, weights = load_hf_weights(resolve_model(str(tmp_path)))
    assert_weights_equal(weights, state_dict_as_stored(model))


def test_missing_safetensors_is_an_error(tiny_llama, tmp_path):
    shutil.copy(f"{tiny_llama}/config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_hf_weights(resolve_model(str(tmp_path)))


def test_gguf_tensor_names():
    names = gguf_hf_names("llama", 13)
    assert names["token_embd"] == "model.embed_tokens"
    assert names["blk.12.attn_output"] == "model.layers.12.self_attn.o_proj"
    assert names["blk.0.ffn_norm"] == "model.layers.0.post_attention_layernorm"
    assert names["output"] == "lm_head"
    assert "blk.0.ffn_gate_exps" not in names
    assert NON_PARAMETERS.fullmatch("rope_freqs.weight") and NON_PARAMETERS.fullmatch("blk.3.attn_rot_embd.weight")
    gemma2 = gguf_hf_names("gemma2", 2)
    assert gemma2["blk.1.ffn_norm"] == "model.layers.1.pre_feedforward_layernorm"
    assert gemma2["blk.1.post_attention_norm"] == "model.layers.1.post_attention_layernorm"
    assert "output" not in gemma2  # Gemma-2 GGUF files have no output tensor: the embedding is tied


@pytest.mark.parametrize("tensor", ["blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_k.bias"])
def test_rotary_unpermute_matches_transformers(tensor):
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    n_heads, n_kv_heads, head_dim, d_model = 4, 2, 8, 32
    rows = (n_heads if ".attn_q." in tensor else n_kv_heads) * head_dim
    shape = (rows, d_model) if tensor.endswith(".weight") else (rows,)
    values = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    processor = LlamaTensorProcessor(config={"num_attention_heads": n_heads, "num_key_value_heads": n_kv_heads})
    expected = processor.process(weights=values, name=tensor).weights
    ours = _unpermute_rotary_rows(values, n_heads if ".attn_q." in tensor else n_kv_heads)
    np.testing.assert_array_equal(ours, expected)


def test_unmapped_gguf_architecture_is_refused(tmp_path):
    import gguf

    path = tmp_path / "tiny-gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    refusal = "GGUF architecture 'gpt2' is not supported by jaxinterp's torch-free GGUF reader"
    with pytest.raises(NotImplementedError, match=refusal) as refused:
        load_hf_weights(resolve_model(str(path), convert_gguf=False))
    assert "install torch" in str(refused.value) and "\n" not in str(refused.value)


@pytest.fixture(scope="module")
def smollm2_transformers_model():
    """SmolLM2-135M as transformers loads the GGUF (float32), once for this module (~25 s)."""
    import torch
    from transformers import AutoModelForCausalLM

    files = resolve_model("smollm2", convert_gguf=False)
    return AutoModelForCausalLM.from_pretrained(
        files.directory, gguf_file=files.gguf_file, dtype=torch.float32, local_files_only=True
    )


@pytest.mark.real_model
def test_smollm2_gguf_matches_transformers(smollm2_transformers_model):
    model = smollm2_transformers_model
    config, weights = load_hf_weights(resolve_model("smollm2", convert_gguf=False))
    assert config.tie_word_embeddings and "lm_head.weight" not in weights
    assert weights["model.layers.0.self_attn.k_proj.weight"].shape == (
        config.num_key_value_heads * config.hidden_size // config.num_attention_heads, config.hidden_size)
    assert_weights_equal(weights, state_dict_as_stored(model))
