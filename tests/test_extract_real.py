"""Extraction on the real SmolLM2-135M weights: every stored row checked against transformers."""

import numpy as np
import pytest
import torch

from jaxinterp import schemas
from jaxinterp.config import load_config
from jaxinterp.extract import extract, load_documents
from jaxinterp.models import load_source_model
from jaxinterp.store import open_store

pytestmark = pytest.mark.real_model
HOOKS = "blocks.4.hook_mlp_out,blocks.12.hook_resid_post"


@pytest.fixture(scope="module")
def smollm2():
    return load_source_model("smollm2")


@pytest.fixture(scope="module")
def short_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "assert.txt"
    path.write_text(load_documents("pydoc")[1][:6000])  # a real, short text from the language reference
    return str(path)


def config(out, data, **overrides):
    fields = {"model": "smollm2", "hooks": HOOKS, "data": data, "out": str(out), "context_size": 128,
              "batch_size": 4, "chunk_mib": 0.25, "shard_mib": 0.5, **overrides}
    return load_config("configs/extract.py", fields, schemas.EXTRACT, "extract")


def reference(model, tokens: np.ndarray):
    """transformers' own hidden_states (resid_post of block 12) and the MLP module output of block 4."""
    captured = {}
    handle = model.model.model.layers[4].mlp.register_forward_hook(lambda m, a, out: captured.__setitem__("mlp", out))
    with torch.inference_mode():
        hidden = model.model(torch.as_tensor(tokens, dtype=torch.long), output_hidden_states=True).hidden_states
    handle.remove()
    return {"blocks.12.hook_resid_post": hidden[13].numpy(), "blocks.4.hook_mlp_out": captured["mlp"].numpy()}


def test_every_row_matches_transformers_fp32_and_bf16(smollm2, short_text, tmp_path):
    fp32 = extract(config(tmp_path / "fp32", short_text), progress=False, model=smollm2)
    bf16 = extract(config(tmp_path / "bf16", short_text, dtype="bfloat16"), progress=False, model=smollm2)
    assert fp32.manifest["n_tokens"] == bf16.manifest["n_tokens"] >= 1024
    stores = open_store(str(tmp_path / "fp32")), open_store(str(tmp_path / "bf16"))
    n = stores[0].n_tokens
    tokens = stores[0].read("tokens", 0, n).reshape(-1, 128)
    expected = {name: np.concatenate([reference(smollm2, tokens[i: i + 4])[name] for i in range(0, len(tokens), 4)])
                for name in HOOKS.split(",")}
    for name, values in expected.items():
        values = values.reshape(n, 576)
        np.testing.assert_array_equal(stores[0].read(name, 0, n), values)  # exact for fp32 stores
        bf16_rows = stores[1].read(name, 0, n)
        assert bf16_rows.dtype.name == "bfloat16"
        np.testing.assert_array_equal(bf16_rows, values.astype(bf16_rows.dtype))  # = fp32 rounded to bf16
    np.testing.assert_array_equal(stores[1].read("tokens", 0, n), stores[0].read("tokens", 0, n))
