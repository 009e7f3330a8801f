import json
import shutil

import jax
import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.buffer import ActivationBuffer
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


def test_buffer_epoch_covers_train_rows_once_and_holdout_is_disjoint(tmp_path):
    n = 4096
    url = str(tmp_path / "ids")
    write_store(url, {"row": np.arange(n, dtype=np.float32)[:, None]}, context_size=16, chunk_mib=2**-12,
                shard_mib=2**-9)
    store = open_store(url)
    buffer = ActivationBuffer(store, "row", 64, seed=3, holdout_fraction=0.1, mixing_chunks=3, exclude_bos=True)
    per_chunk = store.layout.rows_per_chunk
    rows_of = lambda chunks: {r for c in chunks for r in range(c * per_chunk, (c + 1) * per_chunk) if r % 16 != 0}
    expected, holdout = rows_of(buffer.split.train), rows_of(buffer.split.holdout)
    assert expected.isdisjoint(holdout) and len(buffer.split.holdout) == round(n / per_chunk * 0.1)
    batches = buffer.batches()
    seen = np.concatenate([next(batches)[:, 0] for _ in range(len(expected) // 64)]).astype(int)
    assert len(set(seen)) == len(seen) and set(seen) <= expected and len(expected - set(seen)) < 64
    assert set(buffer.holdout(10**6)[:, 0].astype(int)) == holdout
    # the order is a function of (seed, step): a restarted iterator replays it
    again = buffer.batches(start_step=5)
    np.testing.assert_array_equal(next(again)[:, 0], seen[5 * 64: 6 * 64])


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
    with pytest.raises(RunExistsError, match="differs in: sae"):
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
