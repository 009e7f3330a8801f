"""Cross-layer transcoders through `jaxinterp train`: layer wildcards, the mesh, resume, refusals."""

import json
import shutil

import jax
import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.cli import main
from jaxinterp.config import ConfigError, load_config
from jaxinterp.mesh import make_mesh
from jaxinterp.runs import load_trained
from jaxinterp.sae import clt
from jaxinterp.train import abstract_state, build_members, train
from jaxinterp.train.state import state_shardings
from tests.stores import sparse_activations, write_store

LAYERS, D = 3, 16
INPUTS, TARGETS = "blocks.*.mlp.hook_in", "blocks.*.hook_mlp_out"


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    """Three layers whose MLP output L is a fixed linear map of the MLP inputs of layers 0..L (what a CLT models)."""
    rng = np.random.default_rng(3)
    x = [sparse_activations(8192, D, n_features=48, active=3, seed=layer) for layer in range(LAYERS)]
    maps = rng.normal(size=(LAYERS, LAYERS, D, D)).astype(np.float32) / np.sqrt(2 * D)
    hooks = {}
    for layer in range(LAYERS):
        hooks[f"blocks.{layer}.mlp.hook_in"] = x[layer]
        hooks[f"blocks.{layer}.hook_mlp_out"] = sum(x[source] @ maps[source, layer] for source in range(layer + 1))
    url = str(tmp_path_factory.mktemp("clt_store") / "s")
    write_store(url, hooks, context_size=16, chunk_mib=2**-9, shard_mib=2**-6)
    return url


def clt_config(store_url, out, **overrides):
    fields = {"store": store_url, "hook": INPUTS, "target_hook": TARGETS, "out": str(out), "steps": 60,
              "batch_size": 256, "lr": 3e-3, "sae.architecture": "clt", "sae.activation": "topk",
              "sae.n_latents": LAYERS * 64, "sae.k": 4, "log_every": 10, "checkpoint_every": 20, "eval_tokens": 1024,
              "holdout_fraction": 0.1, "dead_tokens": 5000, "mixing_chunks": 4, "mesh.data": 1, **overrides}
    return load_config("configs/train.py", fields, schemas.TRAIN, "train")


@pytest.mark.parametrize("activation", ["topk", "batch_topk", "jumprelu"])
def test_a_clt_trains_from_layer_wildcards(store_url, tmp_path, activation):
    extra = {"sae.sparsity_coefficient": 0.01} if activation == "jumprelu" else {}
    summary = train(clt_config(store_url, tmp_path / "clt", **{"sae.activation": activation, **extra}), progress=False)
    cfg = json.loads((tmp_path / "clt" / "cfg.json").read_text())["saes"]["sae"]
    assert cfg["hook_names"] == [f"blocks.{layer}.mlp.hook_in" for layer in range(LAYERS)]
    assert cfg["target_hooks"] == [f"blocks.{layer}.hook_mlp_out" for layer in range(LAYERS)]
    lines = [json.loads(line) for line in (tmp_path / "clt" / "metrics.jsonl").read_text().splitlines()]
    first, last = next(line["fvu"] for line in lines if line["split"] == "train"), summary["eval"]["sae"]["fvu"]
    assert last < 0.5 * first and last < 0.6, (first, last)
    trained = load_trained(str(tmp_path / "clt"))
    assert sorted(trained.state.params) == sorted(
        ["W_enc", "b_enc", "b_dec", *(clt.decoder_key(s) for s in range(LAYERS))]
        + (["log_threshold"] if activation == "jumprelu" else []))
    assert trained.state.params["W_dec_1"].shape == (64, LAYERS - 1, D)  # targets 1..L-1 only
    if activation == "topk":
        assert summary["eval"]["sae"]["l0"] == pytest.approx(LAYERS * 4)


def test_a_clt_on_a_2x4_mesh_equals_one_device_and_shards_its_latents(store_url, tmp_path):
    one = train(clt_config(store_url, tmp_path / "one", steps=40), progress=False)
    cfg = clt_config(store_url, tmp_path / "mesh", steps=40, **{"mesh.data": 2, "mesh.model": 4})
    mesh = train(cfg, progress=False)
    assert mesh["mesh"] == {"data": 2, "model": 4}
    a, b = load_trained(str(tmp_path / "one")), load_trained(str(tmp_path / "mesh"))
    for name in a.state.params:
        np.testing.assert_allclose(a.state.params[name], b.state.params[name], rtol=2e-4, atol=2e-5)
    assert mesh["eval"]["sae"]["fvu"] == pytest.approx(one["eval"]["sae"]["fvu"], rel=1e-3)
    members = build_members(cfg, [f"blocks.{l}.{h}" for l in range(LAYERS) for h in ("mlp.hook_in", "hook_mlp_out")])
    shardings = state_shardings(abstract_state(members, dict.fromkeys(members[0].input_hooks + members[0].target_hooks,
                                                                     D)), members, make_mesh(2, 4)).saes["sae"]
    for name, shape in [("W_enc", (LAYERS, D, 192)), ("W_dec_0", (192, LAYERS, D)), ("b_enc", (LAYERS, 192))]:
        per_device = shardings.params[name].shard_shape(shape)
        assert np.prod(per_device) * 4 == np.prod(shape), (name, per_device)  # the latent axis over 'model'
    assert shardings.params["b_dec"].shard_shape((LAYERS, D)) == (LAYERS, D)


def test_a_killed_clt_run_resumes_exactly(store_url, tmp_path):
    cfg = {"sae.activation": "batch_topk"}  # its running threshold is architecture state, resumed too
    train(clt_config(store_url, tmp_path / "straight", **cfg), progress=False)
    train(clt_config(store_url, tmp_path / "resumed", **cfg), progress=False)
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "60")  # as if killed between step 40 and 60
    assert train(clt_config(store_url, tmp_path / "resumed", **cfg), progress=False)["steps"] == 60
    a, b = load_trained(str(tmp_path / "straight")), load_trained(str(tmp_path / "resumed"))
    for name in a.state.params:
        np.testing.assert_array_equal(a.state.params[name], b.state.params[name])
    np.testing.assert_array_equal(a.state.arch_state["threshold"], b.state.arch_state["threshold"])
    assert float(a.state.arch_state["threshold"]) > 0


@pytest.mark.parametrize("overrides, message", [
    ({"sae.architecture": "topk"}, "a layer wildcard"),
    ({"hook": "blocks.0.mlp.hook_in", "target_hook": "blocks.0.hook_mlp_out"}, "reads every layer"),
    ({"sae.n_latents": 100}, "do not split evenly over 3 layers"),
    ({"target_hook": "blocks.*.hook_resid_post"}, "no hook matches 'blocks.*.hook_resid_post'"),
    ({"normalize": True}, "normalize"),
])
def test_clt_config_mistakes_are_refused_naming_the_field(store_url, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(clt_config(store_url, tmp_path / "bad", **overrides), progress=False)
    assert not (tmp_path / "bad").exists()


def test_clt_export_is_refused_in_one_line(store_url, tmp_path, capsys):
    train(clt_config(store_url, tmp_path / "clt", steps=20), progress=False)
    assert main(["export", f"--config.run={tmp_path / 'clt'}", f"--config.out={tmp_path / 'x'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cross-layer transcoder" in err[0] and "format=circuit_tracer only" in err[0], err
    # eval of a CLT run works (tests/test_clt_eval.py); its top-activating examples are refused in one line
    assert main(["eval", f"--config.run={tmp_path / 'clt'}", "--config.ce_contexts=0", "--config.latents=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'latents'" in err[0] and "not implemented yet" in err[0], err
    assert jax.device_count() == 8
