"""The JAX-native (flax.nnx) models against transformers' torch forward, on tiny and real weights."""

import numpy as np
import pytest
import torch

from jaxinterp import schemas
from jaxinterp.config import load_config
from jaxinterp.extract import extract, load_documents
from jaxinterp.mesh import make_mesh
from jaxinterp.models import choose_backend, load_source_model, resolve_model, valid_hook_names
from jaxinterp.models.jax_backend import JaxSourceModel
from jaxinterp.store import open_store


def relative_error(ours, theirs) -> float:
    theirs = np.asarray(theirs, np.float64)
    return float(np.abs(np.asarray(ours, np.float64) - theirs).max() / np.abs(theirs).max())


def compare_to_torch(files, tokens, n_layers):
    """Max relative error of logits and of every hook, plus greedy-token agreement."""
    ours = JaxSourceModel(files)
    theirs = load_source_model(files.directory if files.gguf_file is None else "smollm2", backend="torch")
    hooks = valid_hook_names(n_layers)
    logits, captured = ours.forward(tokens, capture=frozenset(hooks))
    reference = theirs.run(tokens, hooks)
    with torch.inference_mode():
        torch_logits = theirs.model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
    errors = {name: relative_error(captured[name], reference[name]) for name in hooks}
    errors["logits"] = relative_error(logits, torch_logits)
    same_greedy = bool((np.asarray(logits).argmax(-1) == torch_logits.argmax(-1)).all())
    return errors, same_greedy


@pytest.mark.parametrize("kind", ["tiny_llama", "tiny_gpt2"])
def test_tiny_models_match_torch(kind, request):
    files = resolve_model(request.getfixturevalue(kind))
    tokens = np.random.default_rng(0).integers(3, 500, size=(4, 48))
    errors, same_greedy = compare_to_torch(files, tokens, 3)
    assert max(errors.values()) <= 1e-4, errors
    assert same_greedy


@pytest.mark.real_model
def test_smollm2_matches_torch_on_a_real_prompt():
    from transformers import AutoTokenizer

    files = resolve_model("smollm2", convert_gguf=False)  # JAX reads the GGUF itself; torch the converted copy
    tokenizer = AutoTokenizer.from_pretrained(files.directory, gguf_file=files.gguf_file)
    text = load_documents("pydoc")[1][:400]
    tokens = np.asarray([[tokenizer.bos_token_id] + tokenizer(text)["input_ids"][:63]])
    errors, same_greedy = compare_to_torch(files, tokens, 30)
    assert max(errors.values()) <= 1e-4, sorted(errors.items(), key=lambda kv: -kv[1])[:3]
    assert same_greedy


def test_sharded_forward_matches_one_device(tiny_llama):
    files = resolve_model(tiny_llama)
    tokens = np.random.default_rng(1).integers(3, 500, size=(4, 32))
    one = JaxSourceModel(files, mesh=make_mesh(data=1, model=1))
    eight = JaxSourceModel(files, mesh=make_mesh(data=2, model=4))
    from jax.sharding import PartitionSpec as P

    assert eight.state["layers"][0]["q_proj"]["kernel"][...].sharding.spec == P(None, "model")
    assert eight.state["layers"][0]["down_proj"]["kernel"][...].sharding.spec == P("model", None)
    capture = frozenset({"blocks.2.hook_resid_post", "blocks.1.hook_mlp_out"})
    (logits_1, acts_1), (logits_8, acts_8) = one.forward(tokens, capture), eight.forward(tokens, capture)
    np.testing.assert_allclose(logits_8, logits_1, rtol=1e-5, atol=1e-5)
    for name in capture:
        np.testing.assert_allclose(acts_8[name], acts_1[name], rtol=1e-5, atol=1e-5)


def test_edit_replaces_activations(tiny_llama):
    model = JaxSourceModel(resolve_model(tiny_llama))
    tokens = np.random.default_rng(2).integers(3, 500, size=(2, 16))
    clean, _ = model.forward(tokens)
    identity = lambda name, x: x
    assert np.array_equal(model.forward(tokens, edit=identity)[0], clean)

    def zero_layer_1(name, x):
        return x * 0 if name == "blocks.1.hook_resid_post" else x

    ablated, captured = model.forward(tokens, capture=frozenset({"blocks.1.hook_resid_post"}), edit=zero_layer_1)
    assert not np.allclose(ablated, clean) and not np.asarray(captured["blocks.1.hook_resid_post"]).any()


def test_backend_choice():
    assert choose_backend("llama", "jax") == "jax" and choose_backend("llama", "torch") == "torch"
    with pytest.raises(NotImplementedError, match="no JAX-native implementation"):
        choose_backend("olmo2", "jax")
    # torch computes only the model types whose hooks tests/ compares with transformers (test_model_support.py)
    with pytest.raises(NotImplementedError, match="no backend computes it exactly"):
        choose_backend("olmo2", "auto")


def test_jax_store_equals_torch_store(tiny_llama, tmp_path):
    stores = {}
    for backend in ("jax", "torch"):
        fields = {"model": tiny_llama, "backend": backend, "out": str(tmp_path / backend), "max_tokens": 1024,
                  "context_size": 64, "hooks": "hook_embed,blocks.1.hook_attn_out,blocks.2.hook_resid_post",
                  "chunk_mib": 1 / 64, "shard_mib": 1 / 16}
        extract(load_config("configs/extract.py", fields, schemas.EXTRACT), progress=False)
        stores[backend] = open_store(str(tmp_path / backend))
    assert stores["jax"].manifest["backend"] == "jax" and stores["torch"].manifest["backend"] == "torch"
    for name in [*stores["jax"].hook_names, "tokens"]:
        a, b = stores["jax"].read(name, 0, 1024), stores["torch"].read(name, 0, 1024)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_bfloat16_forward_tracks_float32(tiny_llama):
    files = resolve_model(tiny_llama)
    tokens = np.random.default_rng(3).integers(3, 500, size=(2, 32))
    capture = frozenset({"blocks.2.hook_resid_post"})
    full = JaxSourceModel(files, dtype="float32").forward(tokens, capture)[1]["blocks.2.hook_resid_post"]
    half = JaxSourceModel(files, dtype="bfloat16").forward(tokens, capture)[1]["blocks.2.hook_resid_post"]
    assert half.dtype.name == "bfloat16"
    assert relative_error(np.asarray(half, np.float32), full) < 0.05


def test_extraction_needs_no_torch_for_safetensors_models(tiny_llama, tmp_path):
    """Runs `extract` in a Python whose path holds every installed package except torch."""
    import site
    import subprocess
    import sys
    from pathlib import Path

    overlay = tmp_path / "site-packages-without-torch"
    overlay.mkdir()
    for entry in Path(site.getsitepackages()[0]).iterdir():
        if not (entry.name.startswith(("torch", "functorch")) or entry.suffix == ".pth"):
            (overlay / entry.name).symlink_to(entry)
    repo = Path(__file__).resolve().parents[1]
    script = (
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('torch') is None\n"
        "from jaxinterp import schemas\nfrom jaxinterp.config import load_config\nfrom jaxinterp.extract import extract\n"
        f"cfg = load_config('configs/extract.py', {{'model': {tiny_llama!r}, 'out': {str(tmp_path / 's')!r}, "
        "'max_tokens': 512, 'context_size': 64, 'hooks': 'blocks.1.hook_resid_post'}, schemas.EXTRACT)\n"
        "result = extract(cfg, progress=False)\n"
        "print(result.manifest['backend'], result.tokens_written, 'torch' in sys.modules)\n"
    )
    env = {"PYTHONPATH": f"{overlay}:{repo}", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-S", "-c", script], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["jax", "512", "False"]
