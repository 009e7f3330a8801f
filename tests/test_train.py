import json
import shutil

import jax
import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.config import ConfigError, load_config
from jaxinterp.export import export_run
from jaxinterp.mesh import make_mesh
from jaxinterp.runs import load_trained
from jaxinterp.store import open_store
from jaxinterp.train import RunExistsError, train
from tests.stores import small_sparse_store, sparse_activations, write_store

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    return small_sparse_store(str(tmp_path_factory.mktemp("store") / "s"), HOOK)


def train_config(store_url, out, **overrides):
    fields = {"store": store_url, "hook": HOOK, "out": str(out), "steps": 60, "batch_size": 256, "lr": 3e-3,
              "warmup_steps": 5, "sae.n_latents": 256, "sae.k": 8, "log_every": 10, "checkpoint_every": 20,
              "eval_tokens": 1024, "holdout_fraction": 0.1, "dead_tokens": 5000, "mixing_chunks": 4, **overrides}
    return load_config("configs/train.py", fields, schemas.TRAIN, "train")


SWEEP = "sae: ; batch: architecture=batch_topk; jump: architecture=jumprelu, l0_coefficient=0.05"


def test_one_device_equals_eight(store_url, tmp_path):
    assert jax.device_count() == 8
    one = train(train_config(store_url, tmp_path / "one", sweep=SWEEP, **{"mesh.data": 1, "mesh.model": 1}), progress=False)
    eight = train(train_config(store_url, tmp_path / "eight", sweep=SWEEP, **{"mesh.data": 4, "mesh.model": 2}), progress=False)
    assert eight["mesh"] == {"data": 4, "model": 2} and one["mesh"] == {"data": 1, "model": 1}
    for sae in ("sae", "batch", "jump"):
        a, b = load_trained(str(tmp_path / "one"), sae), load_trained(str(tmp_path / "eight"), sae)
        for name in a.state.params:
            np.testing.assert_allclose(a.state.params[name], b.state.params[name], rtol=2e-4, atol=2e-5, err_msg=sae)
        assert one["eval"][sae]["fvu"] == pytest.approx(eight["eval"][sae]["fvu"], rel=1e-3, abs=1e-5)
    assert one["eval"]["sae"]["fvu"] < 0.5 and one["eval"]["sae"]["l0"] <= 8


def test_sweep_equals_separate_runs(store_url, tmp_path):
    sweep = "k4: k=4; k8: k=8; bt: architecture=batch_topk, n_latents=128"
    together = train(train_config(store_url, tmp_path / "sweep", sweep=sweep, steps=30), progress=False)
    separate = {
        "k4": train(train_config(store_url, tmp_path / "k4", steps=30, **{"sae.k": 4}), progress=False),
        "k8": train(train_config(store_url, tmp_path / "k8", steps=30), progress=False),
        "bt": train(train_config(store_url, tmp_path / "bt", steps=30, **{"sae.architecture": "batch_topk",
                                                                            "sae.n_latents": 128}), progress=False),
    }
    for name, summary in separate.items():
        a, b = load_trained(str(tmp_path / "sweep"), name), load_trained(str(tmp_path / name))
        for key in a.state.params:
            np.testing.assert_allclose(a.state.params[key], b.state.params[key], rtol=1e-6, atol=1e-7, err_msg=name)
        assert together["eval"][name]["fvu"] == pytest.approx(summary["eval"]["sae"]["fvu"], rel=1e-5)
    with pytest.raises(ConfigError, match="holds 3 SAEs; choose one of bt, k4, k8"):
        load_trained(str(tmp_path / "sweep"))
    lines = [json.loads(line) for line in (tmp_path / "sweep" / "metrics.jsonl").read_text().splitlines()]
    assert {line["sae"] for line in lines} == {"k4", "k8", "bt"}
    assert {"fvu", "l0", "dead_fraction", "dense_fraction", "tokens_per_s", "loss", "auxk"} <= set(lines[0])
    assert any(line["split"] == "holdout" for line in lines)
    assert list((tmp_path / "sweep" / "tensorboard").glob("events.out.tfevents.*"))


def test_latents_are_sharded_over_model_axis(store_url):
    """A 'model' axis of size 4 cuts per-device parameter and optimizer memory by 4."""
    from functools import partial

    from jaxinterp.train import abstract_state, build_members, init_state
    from jaxinterp.train.state import state_shardings

    members = build_members(train_config(store_url, "unused"))
    abstract = abstract_state(members, {HOOK: 32})
    mesh = make_mesh(data=2, model=4)
    shardings = state_shardings(abstract, members, mesh)
    state = jax.jit(partial(init_state, members=members), out_shardings=shardings)(
        jax.random.key(0), {HOOK: np.ones((8, 32), np.float32)})
    sae = state.saes["sae"]
    assert sae.params["W_enc"].addressable_shards[0].data.shape == (32, 64)  # 256 latents / 4 model shards
    assert sae.opt_state[2][0].mu["W_dec"].addressable_shards[0].data.shape == (64, 32)
    assert sae.params["b_dec"].addressable_shards[0].data.shape == (32,)

    def device_bytes(tree):
        return sum(leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves(tree))

    unsharded = jax.jit(partial(init_state, members=members))(jax.random.key(0), {HOOK: np.ones((8, 32), np.float32)})
    latent_bytes = sum(x.nbytes for x in jax.tree.leaves(unsharded.saes["sae"]) if 256 in x.shape)
    other_bytes = sum(x.nbytes for x in jax.tree.leaves(unsharded.saes["sae"]) if 256 not in x.shape)
    assert device_bytes(sae) == latent_bytes // 4 + other_bytes


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


def test_resume_onto_a_different_device_count(store_url, tmp_path):
    straight = train(train_config(store_url, tmp_path / "straight", **{"mesh.data": 1}), progress=False)
    train(train_config(store_url, tmp_path / "moved", **{"mesh.data": 1}), progress=False)
    shutil.rmtree(tmp_path / "moved" / "checkpoints" / "60")  # as if preempted after step 40
    moved = train(train_config(store_url, tmp_path / "moved", **{"mesh.data": 4, "mesh.model": 2}), progress=False)
    assert moved["mesh"] == {"data": 4, "model": 2} and moved["steps"] == 60
    a, b = load_trained(str(tmp_path / "straight")), load_trained(str(tmp_path / "moved"))
    for name in a.state.params:
        np.testing.assert_allclose(a.state.params[name], b.state.params[name], rtol=2e-4, atol=2e-5)
    assert moved["eval"]["sae"]["fvu"] == pytest.approx(straight["eval"]["sae"]["fvu"], rel=1e-3)


def test_run_dir_with_other_config_is_refused(store_url, tmp_path):
    train(train_config(store_url, tmp_path / "r", steps=20), progress=False)
    with pytest.raises(RunExistsError, match="train.sae.k: 8 -> 4"):
        train(train_config(store_url, tmp_path / "r", steps=20, **{"sae.k": 4}), progress=False)


def test_saelens_export_matches_our_encoding(store_url, tmp_path):
    from safetensors.numpy import load_file

    from jaxinterp.sae import dense_from_sparse

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
    trained = load_trained(str(tmp_path / "r"))
    ours = dense_from_sparse(trained.architecture.encode(trained.state.params, {}, x), 256)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    with pytest.raises(FileExistsError, match="overwrite"):
        export_run(str(tmp_path / "r"), "saelens", str(tmp_path / "e"))
    assert export_run(str(tmp_path / "r"), "saelens", str(tmp_path / "e"), overwrite=True) == out


def test_normalised_run_exports_weights_for_raw_activations(store_url, tmp_path):
    from safetensors.numpy import load_file

    from jaxinterp.sae import dense_from_sparse

    summary = train(train_config(store_url, tmp_path / "r", steps=20, normalize=True, norm_tokens=2048), progress=False)
    trained = load_trained(str(tmp_path / "r"))
    scale, arch = trained.input_scale, trained.architecture
    assert scale != 1.0 and summary["eval"]["sae"]["input_scale"] == scale
    x = open_store(store_url).read(HOOK, 0, 64)
    assert np.mean(np.linalg.norm(x * scale, axis=1)) == pytest.approx(np.sqrt(32), rel=0.1)
    weights = load_file(str(export_run(str(tmp_path / "r"), "saelens", str(tmp_path / "e")) / "sae_weights.safetensors"))
    latents = arch.encode(weights, {}, x)
    ours = arch.encode(trained.state.params, {}, x * scale)
    np.testing.assert_allclose(dense_from_sparse(latents, 256), dense_from_sparse(ours, 256), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(arch.decode(weights, latents), arch.decode(trained.state.params, ours) / scale,
                               rtol=1e-4, atol=1e-4)


def test_store_of_another_width_is_refused_for_an_existing_run(store_url, tmp_path):
    train(train_config(store_url, tmp_path / "r", steps=10), progress=False)
    narrow = str(tmp_path / "narrow")
    write_store(narrow, {HOOK: sparse_activations(2048, 16)}, context_size=16, chunk_mib=2**-9, shard_mib=2**-6)
    with pytest.raises(RunExistsError, match="saes.sae.d_in: 32 -> 16"):
        train(train_config(narrow, tmp_path / "r", steps=10), progress=False)


@pytest.mark.parametrize("architecture", ["batch_topk", "jumprelu", "relu"])
def test_saelens_export_of_dense_architectures_matches_our_encoding(store_url, tmp_path, architecture):
    from safetensors.numpy import load_file

    train(train_config(store_url, tmp_path / "r", steps=20, normalize=True, norm_tokens=2048,
                       **{"sae.architecture": architecture}), progress=False)
    out = export_run(str(tmp_path / "r"), "saelens", str(tmp_path / "e"))
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == {"batch_topk": "jumprelu", "jumprelu": "jumprelu", "relu": "standard"}[architecture]
    weights = load_file(str(out / "sae_weights.safetensors"))
    x = open_store(store_url).read(HOOK, 0, 64)
    pre = (x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    # SAELens' encoders in numpy: jumprelu = relu(pre)·1[pre > threshold]; standard = relu(pre)
    theirs = np.maximum(pre, 0) * (pre > weights["threshold"]) if "threshold" in weights else np.maximum(pre, 0)
    trained = load_trained(str(tmp_path / "r"))
    ours = trained.architecture.encode(trained.state.params, trained.state.arch_state, x * trained.input_scale)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(theirs @ weights["W_dec"] + weights["b_dec"],
                               trained.architecture.decode(trained.state.params, ours) / trained.input_scale,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("source", ["run", "saelens"])
def test_init_from_continues_an_existing_sae(store_url, tmp_path, source):
    first = train(train_config(store_url, tmp_path / "a", normalize=True, norm_tokens=2048), progress=False)
    start = str(tmp_path / "a") if source == "run" else str(export_run(str(tmp_path / "a"), "saelens", str(tmp_path / "e")))
    # lr ~ 0: the warm-started SAE must compute what the one it came from computes
    frozen = train(train_config(store_url, tmp_path / "b", normalize=True, norm_tokens=2048, init_from=start,
                                steps=2, warmup_steps=1, lr=1e-12), progress=False)
    assert frozen["eval"]["sae"]["fvu"] == pytest.approx(first["eval"]["sae"]["fvu"], rel=1e-4)
    a, b = load_trained(str(tmp_path / "a")), load_trained(str(tmp_path / "b"))
    np.testing.assert_allclose(b.state.params["W_dec"], a.state.params["W_dec"], rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="'init_from'.*256.*run trains.*512"):
        train(train_config(store_url, tmp_path / "c", init_from=start, **{"sae.n_latents": 512}), progress=False)
