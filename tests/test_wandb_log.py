"""Weights & Biases logging, offline: the logged history read back from wandb's own ``.wandb`` files
(its protobuf ``Record``s) equals ``metrics.jsonl``; a resumed run continues the same wandb run; without
``wandb.project`` nothing imports wandb; `jaxinterp eval` of such a run adds its metrics and density plot."""

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxinterp import wandb_log
from jaxinterp.train import train
from tests.test_train import store_url, train_config  # noqa: F401  (store_url is a fixture)

pytest.importorskip("wandb")

_BLOCK, _HEADER = 32768, 7  # wandb's transaction log: LevelDB log blocks of records behind a 7-byte file header


def wandb_records(path: Path) -> list:
    """The ``wandb.proto.wandb_internal_pb2.Record``s of one ``.wandb`` file (wandb 0.31 ships no Python
    reader, only the protobufs; the framing is LevelDB's log format: crc32, length, type per chunk)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:_HEADER]
    position, pending, records = _HEADER, b"", []
    while position + _HEADER <= len(data):
        left = _BLOCK - position % _BLOCK
        if left < _HEADER:  # a block's zero-padded tail
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + _HEADER])
        if length == 0 and kind == 0:
            position += left
            continue
        if position + _HEADER + length > len(data):  # still being written
            break
        pending += data[position + _HEADER:position + _HEADER + length]
        position += _HEADER + length
        if kind in (1, 4):  # FULL, or LAST of FIRST/MIDDLE/LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def finished_records(path: Path, timeout_s: float = 60.0) -> list:
    """The records of a run's ``.wandb`` file once it holds the run's exit record (wandb-core writes
    the file in the background; ``run.finish()`` may return before the last records are on disk)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = wandb_records(path)
        if any(record.WhichOneof("record_type") == "exit" for record in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def offline_runs(wandb_dir: Path) -> list[dict]:
    """Every offline run directory's id, config, history ``{step: row}`` and summary, oldest first."""
    runs = []
    for directory in sorted((wandb_dir / "wandb").glob("offline-run-*")):
        (file,) = directory.glob("*.wandb")
        run = {"id": None, "config": {}, "history": {}, "summary": {}, "dir": directory}
        for record in finished_records(file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run["id"] = record.run.run_id
                run["config"] = {item.key: json.loads(item.value_json) for item in record.run.config.update}
            elif kind == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                run["history"][record.history.step.num] = {k: v for k, v in row.items() if not k.startswith("_")}
            elif kind == "summary":
                for item in record.summary.update:
                    run["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        runs.append(run)
    return runs


def jsonl_rows(run_dir: Path) -> dict[int, dict]:
    """``metrics.jsonl`` as wandb history rows: ``{step: {"<sae>/<split>/<metric>": value}}``."""
    rows: dict[int, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        values = json.loads(line)
        step, prefix = values.pop("step"), f"{values.pop('sae')}/{values.pop('split')}"
        rows.setdefault(step, {}).update({f"{prefix}/{key}": value for key, value in values.items()
                                          if isinstance(value, (int, float)) and not isinstance(value, bool)})
    return rows


@pytest.fixture
def offline(tmp_path, monkeypatch):
    directory = tmp_path / "wandb_dir"
    directory.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(directory))
    monkeypatch.setenv("WANDB_SILENT", "true")
    import wandb

    wandb.teardown()  # wandb's process-wide setup keeps the WANDB_DIR it first saw: start afresh per test
    yield directory
    wandb.teardown()


WANDB = {"wandb.project": "jaxinterp-test", "wandb.mode": "offline", "wandb.tags": "ci, tiny",
         "wandb.name": "tiny-topk"}


def test_history_equals_metrics_jsonl_and_a_resumed_run_continues_it(store_url, tmp_path, monkeypatch,  # noqa: F811
                                                                     offline):
    run_dir = tmp_path / "run"
    sweep = "a: ; b: k=4"
    polls = iter(range(1, 100))
    with monkeypatch.context() as patch:  # a SIGTERM seen at step 30: checkpoint there and stop
        patch.setattr("jaxinterp.train.loop._Preemption.agreed", lambda self: next(polls) == 30)
        stopped = train(train_config(store_url, run_dir, sweep=sweep, **WANDB), progress=False)
    assert stopped["preempted"] and stopped["steps"] == 30
    first_id = json.loads((run_dir / wandb_log.RECORD).read_text())["id"]
    # A rerun may change the wandb fields (resumable keys) and still continues the same run; mode ''
    # is wandb's default, here WANDB_MODE=offline.
    resumed = train(train_config(store_url, run_dir, sweep=sweep, **{**WANDB, "wandb.name": "renamed", "wandb.mode": ""}),
                    progress=False)
    assert resumed["steps"] == 60 and not resumed["preempted"]
    assert json.loads((run_dir / wandb_log.RECORD).read_text())["id"] == first_id

    runs = offline_runs(offline)
    assert [run["id"] for run in runs] == [first_id, first_id]
    assert runs[0]["config"]["wandb"]["project"] == "jaxinterp-test"
    assert runs[0]["config"]["steps"] == 60 and runs[0]["config"]["sweep"] == sweep
    assert sorted(runs[0]["history"]) == [10, 20, 30] and sorted(runs[1]["history"]) == [40, 50, 60]

    history = {**runs[0]["history"], **runs[1]["history"]}
    expected = jsonl_rows(run_dir)
    assert sorted(history) == sorted(expected) == list(range(10, 61, 10))
    assert history == expected  # the same keys and the same values at the same steps
    assert {"a/train/fvu", "b/train/l0", "a/holdout/fvu", "b/holdout/fvu"} <= set(history[20])

    evaluation = json.loads((run_dir / "eval.json").read_text())
    for sae in ("a", "b"):
        assert runs[1]["summary"][f"{sae}/eval/fvu"] == evaluation[sae]["fvu"]
        assert runs[1]["summary"][f"{sae}/eval/dead_fraction"] == evaluation[sae]["dead_fraction"]

    # `jaxinterp eval` of the run adds its metrics and the density plot to the same wandb run.
    from jaxinterp.eval.plots import plot_feature_density

    plot = plot_feature_density(np.array([0, 3, 10, 50]), 100, tmp_path / "feature_density.png", "a")
    wandb_log.log_evaluation(run_dir, "a", {"fvu": 0.25, "step": 60}, plot)
    *_, last = offline_runs(offline)
    assert last["id"] == first_id and last["summary"]["a/eval_run/fvu"] == 0.25
    (row,) = last["history"].values()
    assert row["a/feature_density/_type"] == "image-file"  # wandb flattens the image's fields
    assert (last["dir"] / "files" / row["a/feature_density/path"]).read_bytes() == plot.read_bytes()


def test_only_process_zero_logs(store_url, tmp_path, monkeypatch, offline):  # noqa: F811
    monkeypatch.setattr("jaxinterp.wandb_log.jax.process_index", lambda: 1)
    cfg = train_config(store_url, tmp_path / "run", **WANDB)
    assert wandb_log.start_wandb(cfg, Path(tmp_path)) is None
    wandb_log.log_evaluation(tmp_path, "sae", {"fvu": 0.1}, tmp_path / "missing.png")
    assert not list(offline.iterdir())


def test_unset_project_never_imports_wandb(store_url, tmp_path):  # noqa: F811
    script = (
        "import sys\n"
        "from tests.test_train import train_config\n"
        "from jaxinterp.train import train\n"
        f"summary = train(train_config({store_url!r}, {str(tmp_path / 'run')!r}, steps=20), progress=False)\n"
        "assert summary['steps'] == 20\n"
        "assert 'wandb' not in sys.modules, 'wandb was imported'\n"
        "import jaxinterp.eval.run\n"
        "assert 'wandb' not in sys.modules, 'jaxinterp.eval imported wandb'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600,
                          cwd=str(Path(__file__).parents[1]))
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "run" / wandb_log.RECORD).exists()


def test_eval_of_a_run_that_logs_to_wandb_adds_its_metrics_and_density_plot(tiny_llama_run, tmp_path, offline):
    import shutil

    from jaxinterp.eval.run import evaluate_run
    from tests.test_eval import eval_config

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_llama_run / "run", run_dir)
    (run_dir / wandb_log.RECORD).write_text(json.dumps({"id": "evalrun1", "project": "p", "entity": "", "mode": ""}))
    result = evaluate_run(eval_config(run_dir, ce_contexts=0, out=str(tmp_path / "e")))
    (run,) = offline_runs(offline)
    assert run["id"] == "evalrun1"
    assert run["summary"]["sae/eval_run/fvu"] == result["fvu"] and run["summary"]["sae/eval_run/step"] == 40
    (row,) = run["history"].values()
    image = run["dir"] / "files" / row["sae/feature_density/path"]
    assert image.read_bytes() == (tmp_path / "e" / "feature_density.png").read_bytes()
