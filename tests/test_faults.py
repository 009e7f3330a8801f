"""Faults a hostile user or a flaky machine causes, each reproduced: outputs that would replace what
they must not, an SAE applied to another model's activations, disk full, read-only directories, and
errors that must be one line (exit 2), not a traceback."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.atomic import OUTPUT_MARKER, ForeignDirectoryError, atomic_directory
from jaxinterp.cli import main
from jaxinterp.config import ConfigError, load_config
from jaxinterp.eval.run import evaluate_run
from jaxinterp.export import export_run, load_sae
from jaxinterp.faults import machine_error

HOOK = "blocks.1.hook_resid_post"


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def run_copy(tiny_llama_run, tmp_path) -> Path:
    """A private copy of the shared tiny run (tests here point outputs at it)."""
    shutil.copytree(tiny_llama_run / "run", tmp_path / "run")
    return tmp_path / "run"


def eval_args(run, *extra):
    return ["eval", "--config", "configs/eval.py", f"--config.run={run}", "--config.eval_tokens=1024",
            "--config.contexts=8", "--config.ce_contexts=0", "--config.n_latents=2", *extra]


PROGRESS_BAR = re.compile(r"^\s*(train|extract|eval|ce-loss|restore|features): +\d+%\|")  # tqdm's, not errors


def one_line_error(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS_BAR.match(line)]
    assert "Traceback" not in err and len(lines) == 1, err[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- 1. outputs never replace what they did not write ---------------------------------------------


def test_eval_out_naming_the_run_itself_is_refused_and_the_run_survives(run_copy, capsys):
    before = tree(run_copy)
    assert main(eval_args(run_copy, f"--config.out={run_copy}")) == 2
    one_line_error(capsys, str(run_copy), "not a eval output")
    assert tree(run_copy) == before


def test_eval_out_naming_a_store_or_a_users_directory_is_refused(run_copy, tiny_llama_run, tmp_path, capsys):
    store = tmp_path / "store"
    shutil.copytree(tiny_llama_run / "store", store)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for target in (store, mine):
        before = tree(target)
        assert main(eval_args(run_copy, f"--config.out={target}")) == 2
        one_line_error(capsys, str(target), "refusing to replace")
        assert tree(target) == before


def test_eval_replaces_its_own_earlier_output_marked_or_from_before_markers(run_copy, tmp_path, capsys):
    out = tmp_path / "e"
    assert main(eval_args(run_copy, f"--config.out={out}")) == 0
    assert json.loads((out / OUTPUT_MARKER).read_text()) == {"kind": "eval"}
    assert main(eval_args(run_copy, f"--config.out={out}", "--config.latents=3")) == 0  # marked: replaced
    (out / OUTPUT_MARKER).unlink()  # as written before markers existed: only eval's own names
    assert main(eval_args(run_copy, f"--config.out={out}")) == 0
    assert (out / OUTPUT_MARKER).exists()
    (out / "extra.txt").write_text("not eval's")
    (out / OUTPUT_MARKER).unlink()
    assert main(eval_args(run_copy, f"--config.out={out}")) == 2
    one_line_error(capsys, "extra.txt")


def test_export_overwrite_never_replaces_a_run_or_another_kind_of_output(run_copy, tmp_path):
    before = tree(run_copy)
    with pytest.raises(ForeignDirectoryError, match="refusing"):
        export_run(str(run_copy), "saelens", str(run_copy), overwrite=True)
    assert tree(run_copy) == before
    saelens = export_run(str(run_copy), "saelens", str(tmp_path / "s"))
    with pytest.raises(ForeignDirectoryError, match="saelens output, not a probe output"):
        atomic_directory(str(saelens), True, lambda d: None, "probe", ("results.json",))
    assert load_sae(str(saelens)).format == "saelens"  # the marker does not disturb the readers


def test_atomic_directory_takes_an_empty_directory_and_refuses_a_file(tmp_path):
    (tmp_path / "empty").mkdir()
    atomic_directory(str(tmp_path / "empty"), False, lambda d: (d / "a.json").write_text("{}"), "k", ("a.json",))
    assert (tmp_path / "empty" / "a.json").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ForeignDirectoryError, match="is a file"):
        atomic_directory(str(tmp_path / "file"), True, lambda d: None, "k", ())
    assert (tmp_path / "file").read_text() == "x"


def test_train_out_naming_an_export_is_refused_and_the_export_survives(run_copy, tmp_path, capsys):
    exported = export_run(str(run_copy), "saelens", str(tmp_path / "saelens"))
    before = tree(exported)
    store = json.loads((run_copy / "cfg.json").read_text())["train"]["store"]
    args = ["train", "--config", "configs/train.py", f"--config.store={store}", f"--config.hook={HOOK}",
            f"--config.out={exported}", "--config.steps=2", "--config.warmup_steps=1", "--config.mesh.data=1"]
    assert main(args) == 2
    one_line_error(capsys, str(exported), "not a jaxinterp run")
    assert tree(exported) == before


# --- 4. an SAE on another model's activations -----------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_store(tiny_gpt2, tmp_path_factory) -> str:
    """A tiny GPT-2 store with the tiny Llama run's hook and width (64): only the model differs."""
    from jaxinterp.extract import extract

    out = str(tmp_path_factory.mktemp("gpt2_store") / "store")
    extract(load_config("configs/extract.py", {"model": tiny_gpt2, "hooks": HOOK, "data": "pydoc", "out": out,
                                                "context_size": 64, "max_tokens": 4096, "chunk_mib": 0.05},
                        schemas.EXTRACT, "extract"), progress=False)
    return out


def test_eval_refuses_a_store_of_another_model_unless_allowed(tiny_llama_run, gpt2_store, tmp_path):
    fields = {"run": str(tiny_llama_run / "run"), "store": gpt2_store, "eval_tokens": 1024, "contexts": 4,
              "ce_contexts": 2, "n_latents": 1}
    with pytest.raises(ConfigError, match="'store'.*trained on .*fingerprint.*allow_other_model"):
        evaluate_run(load_config("configs/eval.py", {**fields, "out": str(tmp_path / "a")}, schemas.EVAL, "eval"))
    assert not (tmp_path / "a").exists()
    exported = export_run(str(tiny_llama_run / "run"), "saelens", str(tmp_path / "saelens"))
    with pytest.raises(ConfigError, match="allow_other_model"):  # an export carries the model's fingerprint too
        evaluate_run(load_config("configs/eval.py", {**fields, "run": str(exported), "out": str(tmp_path / "b")},
                                 schemas.EVAL, "eval"))
    allowed = evaluate_run(load_config("configs/eval.py", {**fields, "out": str(tmp_path / "c"),
                                                            "allow_other_model": True}, schemas.EVAL, "eval"))
    assert allowed["store"] == gpt2_store and "ce_loss_recovered" in allowed


def test_train_init_from_an_sae_of_another_model_is_refused_unless_allowed(tiny_llama_run, gpt2_store, tmp_path):
    from jaxinterp.train import train

    fields = {"store": gpt2_store, "hook": HOOK, "steps": 2, "warmup_steps": 1, "batch_size": 256,
              "sae.n_latents": 128, "sae.k": 8, "mesh.data": 1, "holdout_fraction": 0.25, "eval_tokens": 256,
              "init_from": str(tiny_llama_run / "run")}
    with pytest.raises(ConfigError, match="'init_from'.*allow_other_model"):
        train(load_config("configs/train.py", {**fields, "out": str(tmp_path / "a")}, schemas.TRAIN, "train"),
              progress=False)
    summary = train(load_config("configs/train.py", {**fields, "out": str(tmp_path / "a"),
                                                           "allow_other_model": True}, schemas.TRAIN, "train"),
                    progress=False)  # the refused attempt left no checkpoint, so it does not block this one
    assert summary["steps"] == 2


# --- 7. disk full, read-only output: one line, exit 2 ---------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A mounted tmpfs of 1,400 KiB (root only); yields (its path, remount(size))."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1400k", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")

    def remount(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)

    try:
        yield disk, remount
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_disk_full_during_train_is_one_line_and_the_rerun_resumes_exactly(small_disk, tmp_path):
    from jaxinterp.runs import load_trained
    from tests.stores import small_sparse_store

    disk, remount = small_disk
    hook = "blocks.0.hook_resid_post"
    store = small_sparse_store(str(tmp_path / "store"), hook)

    def command(out):
        fields = {"store": store, "hook": hook, "out": out, "steps": 50, "warmup_steps": 2, "batch_size": 256,
                  "sae.n_latents": 256, "sae.k": 8, "checkpoint_every": 10, "mesh.data": 1}
        return [sys.executable, "-m", "jaxinterp.cli", "train", "--config", "configs/train.py",
                *(f"--config.{key}={value}" for key, value in fields.items())]

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    full = subprocess.run(command(str(disk / "run")), env=env, capture_output=True, text=True)
    assert full.returncode == 2, full.stderr[-3000:]
    lines = [line for line in full.stderr.replace("\r", "\n").splitlines() if line.strip() and
             not line.startswith("train:")]  # the tqdm bar
    assert len(lines) == 1 and "no space left on device" in lines[0] and str(disk) in lines[0], full.stderr[-3000:]
    assert sorted(p.name for p in (disk / "run" / "checkpoints").iterdir()) == ["10"]  # no half-written step
    remount("20m")  # space freed: the same command resumes from step 10
    subprocess.run(command(str(disk / "run")), env=env, check=True, capture_output=True)
    subprocess.run(command(str(tmp_path / "straight")), env=env, check=True, capture_output=True)
    resumed, straight = load_trained(str(disk / "run")), load_trained(str(tmp_path / "straight"))
    assert resumed.step == straight.step == 50
    for name in straight.state.params:
        np.testing.assert_array_equal(resumed.state.params[name], straight.state.params[name], err_msg=name)
    steps = [json.loads(line)["step"] for line in (disk / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # every logged step once


def test_machine_errors_name_the_path_through_chains():
    full = OSError(28, "No space left on device", "/data/run/metrics.jsonl")
    assert machine_error(full).startswith("no space left on device at /data/run/metrics.jsonl; free space")
    tensorstore = ValueError('RESOURCE_EXHAUSTED: Error writing local file "/r/checkpoints/20/x": Failed writing: '
                             '"/r/checkpoints/20/x/d/ab": No space left on device [os_error_code=\'28\']')
    assert machine_error(tensorstore) == ("no space left on device at /r/checkpoints/20/x/d/ab; free space there and "
                                          "rerun the same command (an interrupted run resumes from its last checkpoint)")
    try:
        try:
            raise tensorstore
        finally:
            raise RuntimeError("cleanup failed")
    except RuntimeError as error:
        assert "no space left" in machine_error(error)  # the cause, found behind the cleanup's own error
    try:
        try:
            raise FileNotFoundError(2, "No such file or directory", "/x")
        except FileNotFoundError:
            raise KeyError("a bug while handling it")
    except KeyError as error:
        assert machine_error(error) is None  # a bug keeps its traceback
    assert machine_error(RuntimeError("plain bug")) is None


def test_eval_into_a_read_only_directory_is_one_line(run_copy, tmp_path, capsys):
    readonly = tmp_path / "ro"
    readonly.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)]).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        assert main(eval_args(run_copy, f"--config.out={readonly / 'eval'}")) == 2
        one_line_error(capsys, "read-only file system", str(readonly))
    finally:
        subprocess.run(["umount", str(readonly)], check=True)


def test_debug_switch_shows_the_traceback(run_copy, capsys):
    with pytest.raises(ForeignDirectoryError):
        main([*eval_args(run_copy, f"--config.out={run_copy}"), "--debug"])


# --- 10. corrupt JSON a run or an export carries ---------------------------------------------------


def test_corrupt_run_config_is_named(run_copy, capsys):
    (run_copy / "cfg.json").write_text('{"saes": {"sae": ')
    assert main(eval_args(run_copy)) == 2
    one_line_error(capsys, str(run_copy / "cfg.json"), "corrupt")


def test_export_whose_cfg_has_a_wrong_d_in_is_one_line(run_copy, tmp_path, capsys):
    exported = export_run(str(run_copy), "saelens", str(tmp_path / "saelens"))
    cfg = json.loads((exported / "cfg.json").read_text())
    (exported / "cfg.json").write_text(json.dumps({**cfg, "d_in": cfg["d_in"] + 1}))
    store = str(run_copy.parent / "store")
    shutil.copytree(Path(json.loads((run_copy / "cfg.json").read_text())["train"]["store"]), store)
    assert main(eval_args(exported, f"--config.store={store}")) == 2
    one_line_error(capsys, str(exported), "d_in")
