"""Multi-process runs through launch/local.py: 2 processes x 4 CPU devices against 1 process x 8.

Every stage runs as the CLI does, in subprocesses (JAX's multi-controller runtime needs one
process per controller), with the cross-process collectives over gloo.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxinterp.runs import load_trained
from jaxinterp.store import open_store
from jaxinterp.store.paths import location

LAUNCH = str(Path(__file__).parents[1] / "launch" / "local.py")
HOOK = "blocks.1.hook_resid_post"
STEPS = 48


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "jaxinterp.cli", *args]


def on_processes(n: int, command: list[str]) -> list[str]:
    """``command`` on ``n`` processes x (8 / n) devices (one process: plain, with the tests' 8 devices)."""
    return command if n == 1 else [sys.executable, LAUNCH, "-n", str(n), "-d", str(8 // n), "--", *command]


def run(command: list[str], timeout: float = 600) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def extract_args(model: str, out: Path) -> list[str]:
    return cli("extract", "--config", "configs/extract.py", f"--config.model={model}", f"--config.hooks={HOOK}",
               "--config.max_tokens=16384", "--config.context_size=64", "--config.chunk_mib=0.015625",
               "--config.shard_mib=0.0625", f"--config.out={out}")


def train_args(store: Path, out: Path) -> list[str]:
    # streams=2: the same batches whether one process reads both streams or each reads one.
    return cli("train", "--config", "configs/train.py", f"--config.store={store}", f"--config.hook={HOOK}",
               f"--config.steps={STEPS}", "--config.batch_size=256", "--config.sae.n_latents=256", "--config.sae.k=8",
               "--config.warmup_steps=5", "--config.checkpoint_every=16", "--config.log_every=4",
               "--config.eval_tokens=512", "--config.mixing_chunks=4", "--config.streams=2", "--config.lr=0.003",
               f"--config.out={out}")


@pytest.fixture(scope="module")
def pipelines(tiny_llama, tmp_path_factory):
    """extract → train → export (SAELens) on 1 process x 8 devices and on 2 processes x 4."""
    root = tmp_path_factory.mktemp("multiprocess")
    outputs = {}
    for n in (1, 2):
        store, runs, export = root / f"store{n}", root / f"run{n}", root / f"export{n}"
        run(on_processes(n, extract_args(tiny_llama, store)))
        run(on_processes(n, train_args(store, runs)))
        printed = run(on_processes(n, cli("export", "--config", "configs/export.py", f"--config.run={runs}",
                                          "--config.format=saelens", f"--config.out={export}")))
        outputs[n] = {"store": store, "run": runs, "export": export, "printed": printed}
    return outputs


def test_two_processes_extract_train_and_export_like_one(pipelines):
    one, two = pipelines[1], pipelines[2]
    store_one, store_two = open_store(str(one["store"])), open_store(str(two["store"]))
    assert store_one.manifest == store_two.manifest
    for name in (HOOK, "tokens", "doc", "pos"):  # the same bytes, each process having written its own shards
        assert store_one.read(name, 0, store_one.n_tokens).tobytes() == store_two.read(name, 0, store_two.n_tokens).tobytes()

    trained_one, trained_two = load_trained(str(one["run"])), load_trained(str(two["run"]))
    assert trained_one.step == trained_two.step == STEPS
    for name, value in trained_one.state.params.items():
        # gloo's cross-process all-reduce sums in another order than XLA's in-process one: float
        # noise that TopK selections amplify a little over the steps.
        difference = np.linalg.norm(np.asarray(trained_two.state.params[name]) - value) / np.linalg.norm(value)
        assert difference < 1e-4, (name, difference)
    assert json.loads((two["run"] / "eval.json").read_text())["sae"]["fvu"] == pytest.approx(
        json.loads((one["run"] / "eval.json").read_text())["sae"]["fvu"], rel=1e-4)

    # One export: both processes report the same directory, process 0 wrote it, nothing else beside it.
    assert two["printed"].count(f'"exported": "{two["export"]}"') == 2
    assert sorted(p.name for p in two["export"].parent.iterdir() if p.name.startswith(("export2", ".export2"))) == ["export2"]
    from safetensors.numpy import load_file

    weights_one = load_file(one["export"] / "sae_weights.safetensors")
    weights_two = load_file(two["export"] / "sae_weights.safetensors")
    for name, value in weights_one.items():
        assert np.linalg.norm(weights_two[name] - value) <= 1e-4 * np.linalg.norm(value), name


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_sigterm_to_one_process_checkpoints_all_and_the_relaunch_resumes(pipelines, tmp_path):
    store, out = pipelines[2]["store"], tmp_path / "run"
    command = on_processes(2, train_args(store, out))
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics, deadline = out / "metrics.jsonl", time.time() + 300
    while time.time() < deadline and launcher.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 4:  # past step 16, before step 48
            break
        time.sleep(0.05)
    children = _children(launcher.pid)
    assert len(children) == 2 and launcher.poll() is None
    os.kill(children[1], signal.SIGTERM)  # only process 1 is told; process 0 learns it at the next step
    printed, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, printed[-3000:]
    assert printed.count('"preempted": true') == 2, printed[-3000:]
    saved = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert 16 <= saved[-1] < STEPS

    shutil.copytree(out, tmp_path / "elsewhere")
    run(command)  # the relaunch resumes from that checkpoint and finishes
    resumed, straight = load_trained(str(out)), load_trained(str(pipelines[2]["run"]))
    assert resumed.step == STEPS
    for name, value in straight.state.params.items():
        np.testing.assert_array_equal(resumed.state.params[name], value, err_msg=name)

    # The same checkpoint also resumes on 1 process x 8 devices (streams=2 keeps the batches).
    run(on_processes(1, train_args(store, tmp_path / "elsewhere")))
    moved = load_trained(str(tmp_path / "elsewhere"))
    for name, value in straight.state.params.items():
        assert np.linalg.norm(np.asarray(moved.state.params[name]) - value) < 1e-4 * np.linalg.norm(value), name


def test_a_barrier_some_process_never_reaches_fails_with_its_name():
    script = ("import time, jax; from jaxinterp.distributed import initialize, barrier; initialize(); "
              "barrier('all-here', timeout_s=3) if jax.process_index() == 0 else time.sleep(8)")
    result = subprocess.run(on_processes(2, [sys.executable, "-c", script]), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "not every process reached barrier 'all-here' within 3 s" in result.stdout, result.stdout[-3000:]


def test_explicit_distributed_config_must_be_complete(monkeypatch):
    from jaxinterp.config import ConfigError
    from jaxinterp.distributed import initialize

    for name in ("JAXINTERP_COORDINATOR", "JAXINTERP_NUM_PROCESSES", "JAXINTERP_PROCESS_ID", "SLURM_STEP_NUM_TASKS",
                 "JAX_COORDINATOR_ADDRESS", "JAXINTERP_DISTRIBUTED", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(name, raising=False)
    assert initialize({"coordinator": "", "num_processes": -1, "process_id": -1, "timeout_s": 5}) == 1  # nothing set
    with pytest.raises(ConfigError, match="distributed.coordinator"):
        initialize({"coordinator": "127.0.0.1:1", "num_processes": 2, "process_id": 2, "timeout_s": 5})
    monkeypatch.setenv("JAXINTERP_NUM_PROCESSES", "4")
    with pytest.raises(ConfigError, match="JAXINTERP_COORDINATOR"):
        initialize({"coordinator": "", "num_processes": -1, "process_id": -1, "timeout_s": 5})


def test_extract_to_s3_with_two_processes_then_train_from_it(pipelines, s3_env, tiny_llama):
    # The store and the run directory both on S3: both processes write their checkpoint shards there,
    # process 0 cfg.json, metrics and eval.json.
    url, run_url = "s3://jaxinterp-test/stores/tiny", "s3://jaxinterp-test/runs/from-s3"
    for command in (on_processes(2, extract_args(tiny_llama, url)), on_processes(2, train_args(url, run_url))):
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=s3_env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    remote, local = open_store(url), open_store(str(pipelines[1]["store"]))
    assert remote.manifest == local.manifest
    for name in (HOOK, "tokens", "doc", "pos"):  # the bytes the local 1-process extraction wrote
        assert remote.read(name, 0, remote.n_tokens).tobytes() == local.read(name, 0, local.n_tokens).tobytes()
    from_s3, from_disk = load_trained(run_url), load_trained(str(pipelines[2]["run"]))
    for name, value in from_disk.state.params.items():  # same data, same processes and devices: the same run
        np.testing.assert_array_equal(from_s3.state.params[name], value, err_msg=name)
    run_dir = location(run_url)
    assert json.loads((run_dir / "eval.json").read_text()) == json.loads((pipelines[2]["run"] / "eval.json").read_text())
    logged = [[json.loads(line)["step"] for line in (where / "metrics.jsonl").read_text().splitlines()]
              for where in (run_dir, pipelines[2]["run"])]
    assert logged[0] == logged[1] and logged[0][-1] == STEPS  # metrics uploaded from the local mirror


def test_eval_and_probe_on_two_processes_write_one_output_like_one_process(pipelines, tiny_llama, tmp_path):
    # Both are small next to training: each process computes the whole result, process 0 writes it.
    run_dir = pipelines[2]["run"]
    evaluate = ["--config", "configs/eval.py", f"--config.run={run_dir}", "--config.eval_tokens=1024",
                "--config.contexts=16", "--config.ce_contexts=4", "--config.n_latents=3"]
    probe = ["--config", "configs/probe.py", f"--config.model={tiny_llama}", "--config.n_examples=120",
             "--config.C=0.01,1", "--config.families=logistic", "--config.pooling=mean"]
    results = {}
    for n in (1, 2):
        run(on_processes(n, cli("eval", *evaluate, f"--config.out={tmp_path / f'eval{n}'}")))
        run(on_processes(n, cli("probe", *probe, f"--config.out={tmp_path / f'probe{n}'}")))
        results[n] = (json.loads((tmp_path / f"eval{n}" / "eval.json").read_text()),
                      json.loads((tmp_path / f"probe{n}" / "results.json").read_text()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval1", "eval2", "probe1", "probe2"]  # no staging left
    (eval_one, probe_one), (eval_two, probe_two) = results[1], results[2]
    for metric in ("fvu", "l0", "ce_loss_clean", "ce_loss_spliced", "ce_loss_recovered"):
        assert eval_two[metric] == pytest.approx(eval_one[metric], rel=1e-6), metric
    accuracies = [[r["test"]["accuracy"] for r in probes["results"]] for probes in (probe_one, probe_two)]
    np.testing.assert_allclose(accuracies[1], accuracies[0], atol=1e-6)


def test_slurm_environment_is_detected():
    # What srun sets for 2 tasks on one node: jaxinterp sees a step of 2 tasks, JAX derives the rest.
    script = ("import jax; from jaxinterp.distributed import initialize; n = initialize(); "
              "print('joined', jax.process_index(), n, jax.device_count())")
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=dict(os.environ, SLURM_JOB_ID=str(1000 + os.getpid() % 3000), SLURM_NTASKS="2", SLURM_STEP_NUM_TASKS="2",
                                       SLURM_PROCID=str(i), SLURM_LOCALID=str(i), SLURM_STEP_NODELIST="localhost",
                                       SLURM_NODELIST="localhost", XLA_FLAGS="--xla_force_host_platform_device_count=2"))
             for i in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    for i, output in enumerate(outputs):
        assert f"joined {i} 2 4" in output, output[-2000:]


def test_latent_cache_on_two_processes_writes_the_bytes_of_one(pipelines, tmp_path):
    # Process p encodes batches p, p + 2, ... over its 4 devices; process 0 streams every spill into the files.
    written = {}
    for n in (1, 2):
        run(on_processes(n, cli("interpret", "--config", "configs/interpret.py", f"--config.run={pipelines[1]['run']}",
                                "--config.stages=cache", "--config.n_tokens=4096", "--config.batch_contexts=5",
                                "--config.n_splits=3",
                                f"--config.out={tmp_path / f'i{n}'}")))
        module = tmp_path / f"i{n}" / "cache" / HOOK
        written[n] = {p.name: p.read_bytes() for p in sorted(module.iterdir()) if p.suffix in (".safetensors", ".npy")}
    assert len(written[1]) == 4 and written[1] == written[2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i1", "i2"]  # no spill directory left
