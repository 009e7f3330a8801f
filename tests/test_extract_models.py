"""Several models on one token stream in one store (model diffing): ``--config.model=a,b``."""

import shutil

import numpy as np
import pytest

from jaxinterp.config import ConfigError
from jaxinterp.extract import extract
from jaxinterp.store import open_store
from tests.test_extract import extract_config
from tests.tiny_models import _tokenizer

HOOKS = "blocks.0.hook_resid_post,blocks.2.hook_resid_post"


def test_two_models_share_one_token_stream_and_equal_their_own_stores(tiny_llama, tiny_gpt2, tmp_path):
    both = extract(extract_config(f"{tiny_llama},{tiny_gpt2}", tmp_path / "both", hooks=HOOKS), progress=False)
    assert both.manifest["hook_names"] == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post",
                                           "m1/blocks.0.hook_resid_post", "m1/blocks.2.hook_resid_post"]
    models = both.manifest["models"]
    assert [m["hook_prefix"] for m in models] == ["", "m1/"]
    assert [m["model_class"] for m in models] == ["LlamaForCausalLM", "GPT2LMHeadModel"]
    assert both.manifest["model_hash"] == models[0]["model_hash"] != models[1]["model_hash"]
    store = open_store(str(tmp_path / "both"))
    n = store.n_tokens
    for prefix, model in (("", tiny_llama), ("m1/", tiny_gpt2)):
        alone = extract(extract_config(model, tmp_path / f"alone{len(prefix)}", hooks=HOOKS), progress=False)
        single = open_store(str(tmp_path / f"alone{len(prefix)}"))
        assert "models" not in alone.manifest and single.n_tokens == n
        np.testing.assert_array_equal(store.read("tokens", 0, n), single.read("tokens", 0, n))
        for hook in HOOKS.split(","):
            np.testing.assert_array_equal(store.read(prefix + hook, 0, n), single.read(hook, 0, n))
    assert not np.allclose(store.read("blocks.2.hook_resid_post", 0, 64), store.read("m1/blocks.2.hook_resid_post", 0, 64))
    assert extract(extract_config(f"{tiny_llama},{tiny_gpt2}", tmp_path / "both", hooks=HOOKS),
                   progress=False).tokens_written == 0  # a finished store is left as it is


def test_a_model_with_another_tokenizer_is_refused_before_anything_is_written(tiny_llama, tmp_path):
    other = tmp_path / "other_tokenizer"
    shutil.copytree(tiny_llama, other)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (other / name).unlink(missing_ok=True)
    _tokenizer(300).save_pretrained(other)  # a smaller BPE vocabulary: the same text, other token ids
    with pytest.raises(ConfigError, match=r"config field 'model': the tokenizers of .* differ .*must be the same"):
        extract(extract_config(f"{tiny_llama},{other}", tmp_path / "s", hooks=HOOKS), progress=False)
    assert not (tmp_path / "s").exists()
    with pytest.raises(ConfigError, match="lists a model twice"):
        extract(extract_config(f"{tiny_llama},{tiny_llama}", tmp_path / "s", hooks=HOOKS), progress=False)


def test_an_sae_of_the_second_model_exports_under_that_model(tiny_llama, tiny_gpt2, tmp_path):
    import json

    from jaxinterp import schemas
    from jaxinterp.config import load_config
    from jaxinterp.export import export_run
    from jaxinterp.train import train

    extract(extract_config(f"{tiny_llama},{tiny_gpt2}", tmp_path / "both", hooks=HOOKS), progress=False)
    train(load_config("configs/train.py", {
        "store": str(tmp_path / "both"), "hook": "m1/blocks.2.hook_resid_post", "out": str(tmp_path / "run"),
        "steps": 4, "batch_size": 64, "sae.n_latents": 128, "sae.k": 4, "checkpoint_every": 4, "eval_tokens": 128,
        "mixing_chunks": 2, "mesh.data": 1}, schemas.TRAIN, "train"), progress=False)
    out = export_run(str(tmp_path / "run"), "saelens", str(tmp_path / "export"))
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post"  # its name in the model it came from
    assert cfg["metadata"]["model_name"] == open_store(str(tmp_path / "both")).manifest["models"][1]["model_name"]
