"""An architecture defined only in tests/ (tests/custom_architecture.py), named by dotted path, goes
through the real trainer, checkpoints, resume, SAELens export and jaxinterp's importer."""

import shutil

import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.config import ConfigError, load_config
from jaxinterp.export import export_run, load_sae
from jaxinterp.runs import load_trained
from jaxinterp.sae import dense_latents
from jaxinterp.train import member_configs, train
from tests.stores import small_sparse_store, sparse_activations

HOOK = "blocks.0.hook_resid_post"
CUSTOM = "tests.custom_architecture"


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    return small_sparse_store(str(tmp_path_factory.mktemp("store") / "s"), HOOK)


def custom_config(store_url, out, overrides=()):
    base = {"store": store_url, "hook": HOOK, "out": str(out), "steps": 40, "batch_size": 256, "lr": 3e-3,
            "warmup_steps": 5, "sae.n_latents": 128, "sae.k": 8, "log_every": 10, "checkpoint_every": 20,
            "eval_tokens": 512, "holdout_fraction": 0.1, "dead_tokens": 5000, "mixing_chunks": 4}
    args = [f"--config.{key}={value}" for key, value in base.items()]
    return load_config("configs/train.py", [*args, f"--config.sae.architecture={CUSTOM}", *overrides],
                       schemas.TRAIN, "train")


def test_custom_fields_are_accepted_defaulted_and_checked(store_url, tmp_path):
    cfg = custom_config(store_url, tmp_path / "r", ["--config.sae.gain_init=0.5"])
    assert cfg.sae.architecture == CUSTOM and cfg.sae.gain_init == 0.5 and cfg.sae.gain_l1 == 0.5  # default
    with pytest.raises(ConfigError, match=r"config field 'sae.gain_init' must be a float >= 1e-06"):
        custom_config(store_url, tmp_path / "r", ["--config.sae.gain_init=-1"])
    with pytest.raises(ConfigError, match="unknown config field 'sae.gain_init'"):  # a built-in has no such field
        load_config("configs/train.py", ["--config.sae.gain_init=0.5"], schemas.TRAIN, "train")
    with pytest.raises(ConfigError, match="'sae.architecture'.*'topk', 'batch_topk', 'matryoshka', 'jumprelu', 'relu'"):
        load_config("configs/train.py", ["--config.sae.architecture=no_such_sae"], schemas.TRAIN, "train")
    # a sweep member switching to it gets its fields; a bad value names the sweep field
    topk = load_config("configs/train.py", [f"--config.sweep=c: architecture={CUSTOM}, gain_l1=0.25; t: k=4"],
                       schemas.TRAIN, "train")
    members = member_configs(topk)
    assert members["c"]["sae"]["gain_l1"] == 0.25 and members["c"]["sae"]["gain_init"] == 1.0
    assert "gain_l1" not in members["t"]["sae"]
    with pytest.raises(ConfigError, match="'sweep.gain_l1'"):
        member_configs(load_config("configs/train.py", [f"--config.sweep=c: architecture={CUSTOM}, gain_l1=-2"],
                                   schemas.TRAIN, "train"))
    with pytest.raises(ConfigError, match="unknown member field 'gain_l1'"):
        member_configs(load_config("configs/train.py", ["--config.sweep=t: gain_l1=0.25"], schemas.TRAIN, "train"))


def test_trains_resumes_bitwise_and_exports_to_saelens(store_url, tmp_path):
    overrides = ["--config.sae.gain_init=0.5", "--config.normalize=true", "--config.mesh.data=2",
                 "--config.mesh.model=4"]
    summary = train(custom_config(store_url, tmp_path / "straight", overrides), progress=False)
    assert summary["eval"]["sae"]["fvu"] < 0.9
    train(custom_config(store_url, tmp_path / "resumed", overrides), progress=False)
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "40")  # as if killed between step 20 and 40
    assert train(custom_config(store_url, tmp_path / "resumed", overrides), progress=False)["steps"] == 40
    a, b = load_trained(str(tmp_path / "straight")), load_trained(str(tmp_path / "resumed"))
    assert a.step == b.step == 40 and a.architecture.name == CUSTOM
    assert set(a.state.params) == {"W_enc", "b_enc", "W_dec", "b_dec", "log_gain"}
    assert not np.all(np.asarray(a.state.params["log_gain"]) == np.log(0.5))  # its own parameter trained
    for name in a.state.params:
        np.testing.assert_array_equal(a.state.params[name], b.state.params[name], err_msg=name)

    written = export_run(str(tmp_path / "straight"), "saelens", str(tmp_path / "saelens"))
    loaded = load_sae(str(written))
    assert loaded.sae.architecture == "relu" and loaded.format == "saelens"
    x = sparse_activations(256, 32, n_features=96, seed=1)
    assert a.input_scale != 1.0  # the export folds the normalisation in
    ours = dense_latents(a.architecture.encode(a.state.params, a.state.arch_state, a.input_scale * x), 128)
    theirs = dense_latents(loaded.encode(x), 128)
    assert np.count_nonzero(ours) > 0
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="'sparsify' cannot hold a 'tests.custom_architecture' SAE"):
        export_run(str(tmp_path / "straight"), "sparsify", str(tmp_path / "sparsify"))
