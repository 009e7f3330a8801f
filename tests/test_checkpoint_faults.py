"""Faults of run directories (issue 20): damaged or half-written checkpoints, two writer jobs, a failed
first attempt, and a resume after a kill. Each is detected or repaired, never restored silently."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.config import load_config
from jaxinterp.runs import CheckpointError, load_trained
from jaxinterp.train import train
from tests.stores import small_sparse_store

HOOK = "blocks.0.hook_resid_post"
STEPS = 60  # checkpoints every 20: steps 40 and 60 are kept
DIGEST = "jaxinterp_digest.json"


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    return small_sparse_store(str(tmp_path_factory.mktemp("store") / "s"), HOOK)


def fields(store_url, out, **overrides):
    return {"store": store_url, "hook": HOOK, "out": str(out), "steps": STEPS, "batch_size": 256, "lr": 3e-3,
            "warmup_steps": 5, "sae.n_latents": 256, "sae.k": 8, "log_every": 10, "checkpoint_every": 20,
            "eval_tokens": 1024, "holdout_fraction": 0.1, "dead_tokens": 5000, "mixing_chunks": 4, "mesh.data": 1,
            **overrides}


def train_config(store_url, out, **overrides):
    return load_config("configs/train.py", fields(store_url, out, **overrides), schemas.TRAIN, "train")


@pytest.fixture(scope="module")
def straight(store_url, tmp_path_factory) -> Path:
    """An uninterrupted run: what every repaired run must equal bitwise."""
    out = tmp_path_factory.mktemp("straight") / "run"
    train(train_config(store_url, out), progress=False)
    return out


def copy_run(straight, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    return run


def data_files(run: Path, step: int) -> list[Path]:
    """The step's array data files, largest first."""
    files = (run / "checkpoints" / str(step) / "state" / "ocdbt.process_0" / "d").iterdir()
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def full_state(run: Path):
    """``(step, state)`` of a run's newest intact step, optimizer state included (what a resume restores)."""
    import jax

    from jaxinterp.runs import read_run_config, restore_latest
    from jaxinterp.train import abstract_state, build_members

    run_config = read_run_config(str(run))
    d_in = {sae["hook_name"]: sae["d_in"] for sae in run_config["saes"].values()}
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                          abstract_state(build_members(run_config["train"]), d_in))
    step, state, _ = restore_latest(str(run), target)
    return step, state


def assert_same_params(a_dir, b_dir):
    (a_step, a), (b_step, b) = full_state(a_dir), full_state(b_dir)
    assert a_step == b_step == STEPS
    for name in a.saes["sae"].params:
        np.testing.assert_array_equal(a.saes["sae"].params[name], b.saes["sae"].params[name], err_msg=name)
    for a_leaf, b_leaf in zip(*(jax_leaves(x.saes["sae"].opt_state) for x in (a, b)), strict=True):
        np.testing.assert_array_equal(a_leaf, b_leaf)


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def logged(run: Path) -> list[tuple]:
    return [(line["step"], line["sae"], line["split"]) for line in map(json.loads, (run / "metrics.jsonl").open())]


def warnings_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("jaxinterp: warning:")]


# Case 1: checksums.

def test_flipped_byte_is_detected_and_training_falls_back_bitwise(store_url, straight, tmp_path, capfd):
    run = copy_run(straight, tmp_path)
    damaged = data_files(run, 60)[0]
    flip_a_byte(damaged)
    capfd.readouterr()

    loaded = load_trained(str(run))  # eval/export/load_sae read through this
    assert loaded.step == 40
    (warning,) = warnings_in(capfd.readouterr().err)
    assert f"{run}/checkpoints/60" in warning and damaged.name in warning and "step 40" in warning

    summary = train(train_config(store_url, run), progress=False)  # the same command, rerun
    (warning,) = warnings_in(capfd.readouterr().err)
    assert f"{run}/checkpoints/60" in warning and "resuming from step 40" in warning
    assert summary["steps"] == STEPS
    assert_same_params(straight, run)  # replayed from step 40's buffer state, the same batches
    assert logged(run) == logged(straight)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["40", "60"]
    assert (run / "checkpoints" / "60" / DIGEST).is_file()


def test_missing_files_fall_back_and_no_intact_step_is_one_line_naming_each(store_url, straight, tmp_path, capfd):
    run = copy_run(straight, tmp_path)
    missing = data_files(run, 60)[-1]
    missing.unlink()
    assert load_trained(str(run)).step == 40  # not a TensorStore traceback
    assert "missing" in capfd.readouterr().err
    (run / "checkpoints" / "40" / DIGEST).unlink()  # as if the job died before verifying it
    with pytest.raises(CheckpointError) as error:
        load_trained(str(run))
    message = str(error.value)
    assert "\n" not in message and isinstance(error.value, FileNotFoundError)
    assert f"{run}/checkpoints/60" in message and f"{run}/checkpoints/40" in message and missing.name in message

    with pytest.raises(CheckpointError, match="remove .*checkpoints to train it afresh"):
        train(train_config(store_url, run), progress=False)  # it had verified steps: not taken over silently
    assert missing.parent.exists() and (run / "metrics.jsonl").exists()  # nothing deleted
    shutil.rmtree(run / "checkpoints")  # the user's choice: start afresh
    capfd.readouterr()
    train(train_config(store_url, run), progress=False)
    assert_same_params(straight, run)
    assert logged(run) == logged(straight)  # the damaged attempt's lines went with it


def test_rotation_keeps_the_last_verified_step_until_a_newer_one_is(store_url, straight, tmp_path, monkeypatch,
                                                                     capfd):
    from jaxinterp.train import checkpoint

    class Killed(Exception):
        pass

    write_digest = checkpoint.write_digest

    def killed_at_60(step_dir, step):
        if step == 60:  # orbax has finished step 60; the job dies before it is verified
            raise Killed
        write_digest(step_dir, step)

    monkeypatch.setattr(checkpoint, "write_digest", killed_at_60)
    run = tmp_path / "run"
    with pytest.raises(Killed):
        train(train_config(store_url, run), progress=False)
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir())
    assert steps == [20, 40, 60] and not (run / "checkpoints" / "60" / DIGEST).exists()
    assert not (run / ".lock").exists()  # released on the exception

    monkeypatch.undo()
    capfd.readouterr()
    assert load_trained(str(run)).step == 40
    assert "no jaxinterp_digest.json" in capfd.readouterr().err
    train(train_config(store_url, run), progress=False)
    assert_same_params(straight, run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["40", "60"]


def test_legacy_steps_without_digest_are_restored_with_a_warning(straight, tmp_path, capfd):
    run = copy_run(straight, tmp_path)
    for step in (40, 60):  # as an older jaxinterp wrote them: no digest, no marker in orbax's metadata
        step_dir = run / "checkpoints" / str(step)
        (step_dir / DIGEST).unlink(missing_ok=True)
        metadata = json.loads((step_dir / "_CHECKPOINT_METADATA").read_text())
        metadata["custom_metadata"] = {}
        (step_dir / "_CHECKPOINT_METADATA").write_text(json.dumps(metadata))
    capfd.readouterr()
    assert load_trained(str(run)).step == 60
    (warning,) = warnings_in(capfd.readouterr().err)
    assert "checkpoints/60 was written without a digest" in warning


def test_load_trained_builds_no_optimizer_and_restores_the_final_values_bitwise(straight, monkeypatch):
    import optax

    import jaxinterp.train.members

    step, final = full_state(straight)  # the optimizer is built here, before it is forbidden

    def forbidden(*args, **kwargs):
        raise AssertionError("load_trained built an optimizer")

    monkeypatch.setattr(optax, "adam", forbidden)
    monkeypatch.setattr(jaxinterp.train.members, "make_optimizer", forbidden)
    monkeypatch.setattr(jaxinterp.train.members, "build_members", forbidden)
    trained = load_trained(str(straight))
    assert trained.step == step == STEPS
    assert not hasattr(trained.state, "opt_state")
    expected = final.saes["sae"]
    assert set(trained.state.params) == set(expected.params)
    for name, value in expected.params.items():
        np.testing.assert_array_equal(trained.state.params[name], value, err_msg=name)
        assert trained.state.params[name].dtype == value.dtype
    for field in ("tokens_since_fired", "fire_count"):
        np.testing.assert_array_equal(getattr(trained.state, field), getattr(expected, field), err_msg=field)
    assert set(trained.state.arch_state) == set(expected.arch_state)
    for a, b in zip(jax_leaves(trained.state.arch_state), jax_leaves(expected.arch_state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert trained.tokens_seen == float(final.tokens_seen) > 0
    assert trained.architecture.name == trained.config["architecture"] == "topk"


def test_load_trained_names_every_corrupted_step(straight, tmp_path, capfd):
    run = copy_run(straight, tmp_path)
    damaged = {step: data_files(run, step)[0] for step in (40, 60)}
    for path in damaged.values():
        flip_a_byte(path)
    capfd.readouterr()
    with pytest.raises(CheckpointError) as error:
        load_trained(str(run))
    message = str(error.value)
    assert "\n" not in message and "no intact checkpoint" in message
    for step, path in damaged.items():
        assert f"{run}/checkpoints/{step}" in message and path.name in message and "changed since" in message


# Case 2: one writer job per run directory.

def write_lock(run: Path, host: str, pid: int, heartbeat: float | None = None) -> dict:
    run.mkdir(parents=True, exist_ok=True)
    now = time.time()
    record = {"host": host, "pid": pid, "started": now, "heartbeat": now if heartbeat is None else heartbeat,
              "token": uuid.uuid4().hex}
    (run / ".lock").write_text(json.dumps(record))
    return record


def test_second_train_job_is_refused_at_once_naming_the_holder(store_url, tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        write_lock(run, socket.gethostname(), holder.pid)
        command = [sys.executable, "-m", "jaxinterp.cli", "train", "--config", "configs/train.py",
                   *(f"--config.{key}={value}" for key, value in fields(store_url, run).items())]
        began = time.time()
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300,
                                env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
        elapsed = time.time() - began
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert f"host {socket.gethostname()}" in line and f"pid {holder.pid}" in line and str(run / ".lock") in line
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # refused before it wrote anything
    assert elapsed < 120


def test_lock_rules_for_dead_pids_other_hosts_and_release(tmp_path, capfd):
    from jaxinterp.train import RunLockedError
    from jaxinterp.train.run_lock import STALE_AFTER_S, RunLock

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    write_lock(run, socket.gethostname(), dead.pid)
    with RunLock(run):  # a killed job's lock does not block the rerun
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):  # a second job, even in this process
            RunLock(run).acquire()
    assert not (run / ".lock").exists()
    assert f"pid {dead.pid} no longer runs on this host" in capfd.readouterr().err

    write_lock(run, "elsewhere", 1234)  # another host, heartbeat fresh: it may well be running
    with pytest.raises(RunLockedError, match="host elsewhere, pid 1234"):
        RunLock(run).acquire()
    write_lock(run, "elsewhere", 1234, heartbeat=time.time() - STALE_AFTER_S - 60)  # its machine died
    with RunLock(run):
        pass
    assert "last heartbeat was" in capfd.readouterr().err


# Case 3: only a run with a checkpoint is a run.

def test_failed_first_attempt_does_not_block_the_corrected_rerun(store_url, straight, tmp_path, capfd):
    from jaxinterp.train import RunExistsError

    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="no-such-sae"):  # fails before its first step, after cfg.json
        train(train_config(store_url, run, init_from=str(tmp_path / "no-such-sae")), progress=False)
    assert (run / "cfg.json").exists() and not (run / ".lock").exists()
    # As if the attempt had also logged a few steps before it was SIGKILLed (lock left behind).
    (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "sae": "sae", "split": "train", "fvu": 9.0}) + "\n")
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.stale").write_text("")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_lock(run, socket.gethostname(), dead.pid)

    train(train_config(store_url, run), progress=False)
    assert json.loads((run / "cfg.json").read_text())["train"]["init_from"] == ""
    assert logged(run) == logged(straight)
    assert not (run / "tensorboard" / "events.out.tfevents.stale").exists()
    assert_same_params(straight, run)
    with pytest.raises(RunExistsError, match="train.sae.k: 8 -> 4"):  # now it has a checkpoint
        train(train_config(store_url, run, **{"sae.k": 4}), progress=False)


# Case 4: metrics after a resume.

def test_resume_logs_every_step_once(store_url, straight, tmp_path):
    run = copy_run(straight, tmp_path)
    shutil.rmtree(run / "checkpoints" / "60")  # killed between steps 40 and 60, after logging 50 and 60
    with (run / "metrics.jsonl").open("a") as metrics:
        metrics.write('{"step": 70, "sae": "sae", "spl')  # and in the middle of a line
    train(train_config(store_url, run), progress=False)
    assert logged(run) == logged(straight)
    assert_same_params(straight, run)
