"""Run directories and outputs at URLs: ``s3://`` on a local S3 server (moto), ``file://`` on disk."""

import importlib.util
import json
import uuid

import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.config import ConfigError, load_config
from jaxinterp.eval.run import evaluate_run
from jaxinterp.export import export_run, load_sae
from jaxinterp.runs import load_trained
from jaxinterp.store.paths import location
from jaxinterp.train import train
from tests.stores import small_sparse_store

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    return small_sparse_store(str(tmp_path_factory.mktemp("store") / "s"), HOOK)


@pytest.fixture
def bucket(s3_env) -> str:
    """A fresh prefix in the test bucket, with the S3 server's variables in this process's environment."""
    return f"s3://jaxinterp-test/{uuid.uuid4().hex[:8]}"


def train_config(store_url, out, **overrides):
    fields = {"store": store_url, "hook": HOOK, "out": str(out), "steps": 40, "batch_size": 256, "lr": 3e-3,
              "warmup_steps": 5, "sae.n_latents": 256, "sae.k": 8, "log_every": 10, "checkpoint_every": 20,
              "eval_tokens": 1024, "holdout_fraction": 0.1, "dead_tokens": 5000, "mixing_chunks": 4, "mesh.data": 1,
              **overrides}
    return load_config("configs/train.py", fields, schemas.TRAIN, "train")


def assert_same_params(a, b):
    assert a.step == b.step
    for name, value in a.state.params.items():
        np.testing.assert_array_equal(b.state.params[name], value, err_msg=name)


def test_s3_run_resumes_and_exports_like_a_local_run(store_url, bucket, tmp_path):
    train(train_config(store_url, tmp_path / "run"), progress=False)
    run = f"{bucket}/run"
    train(train_config(store_url, run), progress=False)
    # As if killed while step 40 was being written: orbax marks a finished step with commit_success.txt.
    (location(run) / "checkpoints" / "40" / "commit_success.txt").unlink()
    resumed = train(train_config(store_url, run), progress=False)
    assert resumed["steps"] == 40 and resumed["run"] == run
    local, remote = load_trained(str(tmp_path / "run")), load_trained(run)
    assert_same_params(local, remote)  # bitwise: orbax wrote and read the S3 checkpoints, the buffer resumed
    assert json.loads((location(run) / "eval.json").read_text()) == json.loads((tmp_path / "run" / "eval.json").read_text())
    steps = [json.loads(line)["step"] for line in (location(run) / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 20, 30, 40]  # (20: train and holdout) the killed session's lines past step 20 were dropped
    assert list((location(run) / "tensorboard").iterdir())
    assert (location(run) / "checkpoints" / "40" / "jaxinterp_digest.json").exists()  # verified on S3 as well
    assert not (location(run) / ".lock").exists()  # released

    export_run(str(tmp_path / "run"), "saelens", str(tmp_path / "export"))
    expected = load_sae(tmp_path / "export")
    assert str(export_run(run, "saelens", f"{bucket}/export")) == f"{bucket}/export"
    assert str(export_run(run, "sparsify", f"{bucket}/sparsify")) == f"{bucket}/sparsify/layers.0"
    assert sorted(p.name for p in location(f"{bucket}/export").iterdir()) == sorted(
        p.name for p in (tmp_path / "export").iterdir())
    imported = load_sae(f"{bucket}/export")
    for name, value in expected.params.items():
        np.testing.assert_array_equal(imported.params[name], value, err_msg=name)
    x = np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32)
    sparsify = load_sae(f"{bucket}/sparsify")
    assert sparsify.format == "sparsify" and sparsify.sae.hook_name == HOOK
    np.testing.assert_allclose(np.asarray(sparsify.decode(sparsify.encode(x))),
                               np.asarray(expected.decode(expected.encode(x))), rtol=1e-5, atol=1e-5)
    with pytest.raises(FileExistsError, match=f"{bucket}/export exists"):
        export_run(run, "saelens", f"{bucket}/export")
    (location(f"{bucket}/export") / "stale.txt").write_text("from before")
    export_run(run, "saelens", f"{bucket}/export", overwrite=True)  # replaced as a whole
    assert "stale.txt" not in [p.name for p in location(f"{bucket}/export").iterdir()]


def test_eval_writes_its_output_to_s3(tiny_llama_run, bucket):
    out = f"{bucket}/eval"
    result = evaluate_run(load_config("configs/eval.py", {"run": str(tiny_llama_run / "run"), "eval_tokens": 1024,
                                                          "contexts": 8, "ce_contexts": 0, "latents": "0,5",
                                                          "out": out}, schemas.EVAL, "eval"))
    assert result["written_to"] == out
    written = location(out)
    assert json.loads((written / "eval.json").read_text())["fvu"] == result["fvu"]
    assert sorted(p.name for p in written.iterdir()) == [".jaxinterp-output.json", "eval.json", "feature_density.png",
                                                         "top_examples.html", "top_examples.json", "zf_plot.png"]
    (written / "notes.txt").write_text("not eval's")
    with pytest.raises(FileExistsError, match="not a eval output|refusing"):
        evaluate_run(load_config("configs/eval.py", {"run": str(tiny_llama_run / "run"), "eval_tokens": 1024,
                                                     "contexts": 8, "ce_contexts": 0, "out": f"{bucket}"},
                                 schemas.EVAL, "eval"))  # the bucket's root is no eval output: refused, kept
    assert (written / "notes.txt").read_text() == "not eval's"


def test_file_urls_work_like_paths(store_url, tmp_path):
    summary = train(train_config(store_url, f"file://{tmp_path}/run", steps=20), progress=False)
    assert summary["steps"] == 20 and (tmp_path / "run" / "checkpoints" / "20").is_dir()
    assert load_trained(f"file://{tmp_path}/run").step == 20
    written = export_run(f"file://{tmp_path}/run", "saelens", f"file://{tmp_path}/export")
    assert written == tmp_path / "export" and (tmp_path / "export" / "cfg.json").is_file()
    assert load_sae(f"file://{tmp_path}/export").format == "saelens"


def test_unknown_schemes_and_missing_filesystems_are_named(tmp_path):
    with pytest.raises(ConfigError, match="config field 'out' must be a string .*file://, gs:// or s3:// URL"):
        load_config("configs/export.py", {"run": str(tmp_path), "out": "ftp://host/x"}, schemas.EXPORT, "export")
    with pytest.raises(ConfigError, match="config field 'out': hdfs://x/y has the unsupported scheme"):
        location("hdfs://x/y", "out")
    if importlib.util.find_spec("gcsfs") is None:  # the cloud extra installs it; the test extra does not
        with pytest.raises(ImportError, match=r"gs://b/run needs the gcsfs package.*pip install 'jaxinterp\[cloud\]'"):
            location("gs://b/run", "out")
