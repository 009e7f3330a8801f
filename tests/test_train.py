import json
import shutil

import jax
import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.config import load_config
from jaxinterp.export import export_run
from jaxinterp.mesh import SAE_RULES, make_mesh, tree_shardings
from jaxinterp.store import open_store
from jaxinterp.train import RunExistsError, train
from jaxinterp.train.trained import load_trained
from tests.stores import sparse_activations, write_store

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("store") / "s")
    write_store(url, {HOOK: sparse_activations(8192, 32, n_features=96, active=4)}, context_size=16,
                chunk_mib=2**-9, shard_mib=2**-6)
    return url


def train_config(store_url, out, **overrides):
    fields = {"store": store_url, "hook": HOOK, "out": str(out), "steps": 60, "batch_size": 256, "lr": 3e-3,
              "warmup_steps": 5, "sae.n_latents": 256, "sae.k": 8, "log_every": 10, "checkpoint_every": 20,
              "eval_tokens": 1024, "holdout_fraction": 0.1, "dead_tokens": 5000, "mixing_chunks": 4, **overrides}
    return load_config("configs/train_topk.py", fields, schemas.TRAIN, "train")


def test_one_device_equals_eight(store_url, tmp_path):
    assert jax.device_count() == 8
    one = train(train_config(store_url, tmp_path / "one", **{"mesh.data": 1, "mesh.model": 1}), progress=False)
    eight = train(train_config(store_url, tmp_path / "eight", **{"mesh.data": 4, "mesh.model": 2}), progress=False)
    assert eight["mesh"] == {"data": 4, "model": 2} and one["mesh"] == {"data": 1, "model": 1}
    a, b = load_trained(str(tmp_path / "one")), load_trained(str(tmp_path / "eight"))
    for name in a.state.params:
        np.testing.assert_allclose(a.state.params[name], b.state.params[name], rtol=2e-4, atol=2e-5)
    assert one["eval"]["fvu"] == pytest.approx(eight["eval"]["fvu"], rel=1e-3)
    assert one["eval"]["fvu"] < 0.5 and one["eval"]["l0"] <= 8


def test_latents_are_sharded_over_model_axis(store_url):
    from functools import partial

    from jaxinterp.train import init_state, make_optimizer

    cfg = train_config(store_url, "unused")
    init = partial(init_state, d_in=32, d_sae=256, optimizer=make_optimizer(cfg))
    abstract = jax.eval_shape(init, jax.random.key(0), np.zeros(32, np.float32))
    mesh = make_mesh(data=2, model=4)
    state = jax.jit(init, out_shardings=tree_shardings(abstract, SAE_RULES, mesh))(jax.random.key(0), np.zeros(32, np.float32))
    W_enc = state.params["W_enc"]
    assert W_enc.addressable_shards[0].data.shape == (32, 64)  # 256 latents / 4 model shards
    assert state.opt_state[2][0].mu["W_dec"].addressable_shards[0].data.shape == (64, 32)
    assert state.params["b_dec"].addressable_shards[0].data.shape == (32,)


def test_killed_run_resumes_exactly(store_url, tmp_path):
    train(train_config(store_url, tmp_path / "straight"), progress=False)
    train(train_config(store_url, tmp_path / "resumed"), progress=False)
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "60")  # as if killed between step 40 and 60
    summary = train(train_config(store_url, tmp_path / "resumed"), progress=False)
    assert summary["steps"] == 60
    a, b = load_trained(str(tmp_path / "straight")), load_trained(str(tmp_path / "resumed"))
    assert a.step == b.step == 60
    for name in a.state.params:
        np.testing.assert_array_equal(a.state.params[name], b.state.params[name])


def test_run_dir_with_other_config_is_refused(store_url, tmp_path):
    train(train_config(store_url, tmp_path / "r", steps=20), progress=False)
    with pytest.raises(RunExistsError, match="train.sae.k: 8 -> 4"):
        train(train_config(store_url, tmp_path / "r", steps=20, **{"sae.k": 4}), progress=False)


def test_saelens_export_matches_our_encoding(store_url, tmp_path):
    from safetensors.numpy import load_file

    from jaxinterp.sae import topk

    train(train_config(store_url, tmp_path / "r", steps=20), progress=False)
    out = export_run(str(tmp_path / "r"), "saelens", str(tmp_path / "e"))
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 8 and cfg["d_sae"] == 256 and cfg["d_in"] == 32
    assert cfg["metadata"]["hook_name"] == HOOK and cfg["metadata"]["sae_lens_version"] >= "6.0.0"
    weights = load_file(str(out / "sae_weights.safetensors"))
    assert {k: v.shape for k, v in weights.items()} == {"W_enc": (32, 256), "b_enc": (256,), "W_dec": (256, 32), "b_dec": (32,)}
    sparsity = load_file(str(out / "sparsity.safetensors"))["sparsity"]
    assert sparsity.shape == (256,) and (sparsity <= 0).all()
    # SAELens' TopK encode in numpy: topk over (x - b_dec) W_enc + b_enc, then ReLU
    x = open_store(store_url).read(HOOK, 0, 64)
    pre = (x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    kth = np.sort(pre, axis=-1)[:, -8][:, None]
    theirs = np.where(pre >= kth, np.maximum(pre, 0), 0)
    ours = topk.dense_latents(topk.encode(load_trained(str(tmp_path / "r")).state.params, x, 8), 256)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    with pytest.raises(FileExistsError, match="overwrite"):
        export_run(str(tmp_path / "r"), "saelens", str(tmp_path / "e"))
    assert export_run(str(tmp_path / "r"), "saelens", str(tmp_path / "e"), overwrite=True) == out


def test_normalised_run_exports_weights_for_raw_activations(store_url, tmp_path):
    from safetensors.numpy import load_file

    from jaxinterp.sae import topk

    summary = train(train_config(store_url, tmp_path / "r", steps=20, normalize=True, norm_tokens=2048), progress=False)
    trained = load_trained(str(tmp_path / "r"))
    scale = trained.input_scale
    assert scale != 1.0 and summary["eval"]["input_scale"] == scale
    x = open_store(store_url).read(HOOK, 0, 64)
    assert np.mean(np.linalg.norm(x * scale, axis=1)) == pytest.approx(np.sqrt(32), rel=0.1)
    weights = load_file(str(export_run(str(tmp_path / "r"), "saelens", str(tmp_path / "e")) / "sae_weights.safetensors"))
    latents = topk.encode(weights, x, 8)
    ours = topk.encode(trained.state.params, x * scale, 8)
    np.testing.assert_allclose(topk.dense_latents(latents, 256), topk.dense_latents(ours, 256), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(topk.decode(weights, latents), topk.decode(trained.state.params, ours) / scale,
                               rtol=1e-4, atol=1e-4)


def test_store_of_another_width_is_refused_for_an_existing_run(store_url, tmp_path):
    train(train_config(store_url, tmp_path / "r", steps=10), progress=False)
    narrow = str(tmp_path / "narrow")
    write_store(narrow, {HOOK: sparse_activations(2048, 16)}, context_size=16, chunk_mib=2**-9, shard_mib=2**-6)
    with pytest.raises(RunExistsError, match="d_in: 32 -> 16"):
        train(train_config(narrow, tmp_path / "r", steps=10), progress=False)
