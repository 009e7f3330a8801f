"""A real SIGKILL at a random step, and a SIGTERM, of `jaxinterp train` in a subprocess: the resumed
run ends bitwise equal to an uninterrupted one."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxinterp.runs import load_trained
from tests.stores import small_sparse_store

HOOK = "blocks.0.hook_resid_post"
STEPS = 300


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    return small_sparse_store(str(tmp_path_factory.mktemp("store") / "s"), HOOK)


def command(store_url, out):
    fields = {"store": store_url, "hook": HOOK, "out": str(out), "steps": STEPS, "batch_size": 256, "lr": 3e-3,
              "warmup_steps": 5, "sae.n_latents": 256, "sae.k": 8, "log_every": 5, "checkpoint_every": 25,
              "eval_tokens": 1024, "holdout_fraction": 0.1, "dead_tokens": 5000, "mixing_chunks": 4,
              "mesh.data": 1, "sweep": "sae: ; jump: architecture=jumprelu, l0_coefficient=0.05"}
    return [sys.executable, "-m", "jaxinterp.cli", "train", "--config", "configs/train.py",
            *(f"--config.{key}={value}" for key, value in fields.items())]


def env():
    return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def wait_for_step(process, metrics: Path, step: int, timeout: float = 240.0) -> int:
    """Waits until metrics.jsonl shows ``step`` (or later); returns the newest logged step."""
    began = time.time()
    while time.time() - began < timeout:
        if process.poll() is not None:
            pytest.fail(f"training exited early ({process.returncode}): {process.stderr.read().decode()[-2000:]}")
        if metrics.exists():
            steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.strip()]
            if steps and max(steps) >= step:
                return max(steps)
        time.sleep(0.005)
    pytest.fail(f"no step {step} within {timeout} s")


def logged_steps(run: Path) -> list[tuple]:
    return [(line["step"], line["sae"], line["split"]) for line in map(json.loads, (run / "metrics.jsonl").open())]


def assert_same_parameters(a_dir, b_dir):
    for sae in ("sae", "jump"):
        a, b = load_trained(str(a_dir), sae), load_trained(str(b_dir), sae)
        assert a.step == b.step == STEPS
        for name in a.state.params:
            np.testing.assert_array_equal(a.state.params[name], b.state.params[name], err_msg=f"{sae}.{name}")
        np.testing.assert_array_equal(a.state.fire_count, b.state.fire_count)


@pytest.fixture(scope="module")
def straight(store_url, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    subprocess.run(command(store_url, out), check=True, env=env(), capture_output=True)
    return out


def test_sigkill_at_a_random_step_then_resume_is_bitwise_exact(store_url, straight, tmp_path):
    out = tmp_path / "run"
    kill_at = random.Random().randrange(30, STEPS - 30)
    process = subprocess.Popen(command(store_url, out), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reached = wait_for_step(process, out / "metrics.jsonl", kill_at)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL and reached < STEPS, "killed too late to test anything"
    subprocess.run(command(store_url, out), check=True, env=env(), capture_output=True)
    assert_same_parameters(straight, out)
    assert logged_steps(out) == logged_steps(straight)  # the killed session's lines past its checkpoint are gone


def test_sigterm_saves_exits_zero_and_resumes_exactly(store_url, straight, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(command(store_url, out), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_step(process, out / "metrics.jsonl", 40)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr.decode()[-2000:]
    summary = json.loads(stdout)
    assert summary["preempted"] and 40 <= summary["steps"] < STEPS
    saved = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == summary["steps"]  # a checkpoint at the step it stopped at, not the last multiple of 25
    subprocess.run(command(store_url, out), check=True, env=env(), capture_output=True)
    assert_same_parameters(straight, out)
