"""Probe labels that are missing or of no clear type fail naming their lines (or are dropped and
counted), and SAE latents from a run trained on another model are refused (issue 20, items 4-5)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.cli import main
from jaxinterp.config import ConfigError, load_config
from jaxinterp.probe import encode_targets, load_labelled, probe_features, run_probe


def write_jsonl(path: Path, rows: list[dict | None]) -> str:
    """One JSON object per line; ``None`` writes a blank line (skipped, but it still counts as a line)."""
    path.write_text("".join(("" if row is None else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def binary_rows(n: int) -> list[dict]:
    return [{"text": f"text {i}", "label": i % 2} for i in range(n)]


def test_null_and_absent_jsonl_labels_fail_naming_their_lines_or_are_dropped(tmp_path):
    rows = binary_rows(10)
    rows[2]["label"] = None  # line 3
    del rows[5]["label"]  # line 7, after the blank line
    path = write_jsonl(tmp_path / "d.jsonl", rows[:5] + [None] + rows[5:])
    with pytest.raises(ConfigError, match=r"'label_field'.*'label' of .*d\.jsonl has no label at lines 3, 7 "
                                          r"\(2 of 10 rows: null\); .*missing_labels=drop"):
        load_labelled(path)
    data = load_labelled(path, missing_labels="drop")
    assert data.dropped == 2 and len(data.texts) == 8 and "text 2" not in data.texts
    targets, kind, classes = encode_targets(data.labels, places=data.lines)
    assert kind == "binary" and classes == ["0", "1"]  # not a third class "None"
    with pytest.raises(ConfigError, match="'label_field'.*no label at row 2"):
        encode_targets([0, None, 1])  # called directly, null is still no class


def test_empty_csv_cells_are_missing_not_a_class(tmp_path):
    lines = ["text,label"] + [f"t{i},{'pos' if i % 2 else 'neg'}" for i in range(8)]
    lines[3] = "t2,"  # line 4: empty cell
    lines[6] = "t5,  "  # line 7: blank cell
    lines[8] = "t7"  # line 9: no cell at all
    path = tmp_path / "d.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"'label_field'.*has no label at lines 4, 7, 9 \(3 of 8 rows"):
        load_labelled(str(path))
    data = load_labelled(str(path), missing_labels="drop")
    assert data.dropped == 3 and data.lines == ["line 2", "line 3", "line 5", "line 6", "line 8"]
    assert encode_targets(data.labels)[1:] == ("binary", ["neg", "pos"])


def test_float_target_with_a_stray_string_is_named_not_split_into_singleton_classes(tmp_path):
    rows = [{"text": f"t{i}", "y": round(0.37 * i + 0.01, 3)} for i in range(40)]
    rows[16]["y"] = "n/a"  # line 17: a missing number
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(ConfigError, match=r"'label_field'.*'y'.*no label at line 17 \(1 of 40 rows: 'n/a'\)"):
        load_labelled(path, label_field="y")
    data = load_labelled(path, label_field="y", missing_labels="drop")
    targets, kind, classes = encode_targets(data.labels)
    assert kind == "regression" and len(targets) == 39 and classes == []
    # a non-number that is no missing spelling: named, with the count of numbers beside it
    labels = [r["y"] for r in rows]
    labels[16], labels[30] = "abc", "12,5"
    with pytest.raises(ConfigError, match=r"\(column 'y'\): rows 17, 31 \(2 labels: 'abc', '12,5'\) are not numbers "
                                          r"while 38 other labels are; .*target=multiclass"):
        encode_targets(labels, column="y")
    # "n/a" among class names is a class name
    assert encode_targets(["n/a", "pos", "neg"] * 3)[1:] == ("multiclass", ["n/a", "neg", "pos"])


def test_auto_target_refuses_a_column_of_mostly_single_row_classes():
    with pytest.raises(ConfigError, match=r"'label_field': 100 classes, 100 of them a single row.*target=regression"):
        encode_targets(list(range(100)))  # an integer id/count column, not 100 classes
    targets, kind, classes = encode_targets(list(range(100)), target="multiclass")  # asked for: kept
    assert kind == "multiclass" and len(classes) == 100
    # clean inputs keep today's types and class order
    assert encode_targets([1, 0, 2, 10] * 5)[1:] == ("multiclass", ["0", "1", "2", "10"])
    assert encode_targets([0.5, 1.5] * 10)[1:] == ("binary", ["0.5", "1.5"])
    assert encode_targets([str(0.1 * i) for i in range(30)])[1] == "regression"
    assert encode_targets(["b", "a"] * 3)[2] == ["a", "b"]


def test_spellings_of_one_number_are_one_class_and_booleans_are_classes():
    targets, kind, classes = encode_targets(["1", "1.0", "0", " 0", 1, 0.0])
    assert kind == "binary" and classes == ["0", "1"] and targets.tolist() == [1, 1, 0, 0, 1, 0]
    targets, kind, classes = encode_targets([True, False, True])  # float(True) used to crash the sort
    assert kind == "binary" and classes == ["False", "True"] and targets.tolist() == [1, 0, 1]


def test_per_token_null_means_unlabelled_but_other_missing_spellings_are_named(tmp_path):
    rows = [{"text": "a b c", "tokens": [None, 0.5, 1.25]}, {"text": "d e f", "tokens": [None, "n/a", 2.0]},
            {"text": "g h", "tokens": [None, float("nan")]}]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))  # json writes NaN, Python's reader reads it back
    with pytest.raises(ConfigError, match=r"'token_label_field'.*lines 2 token 2, 3 token 2 \(2 of 5 labels"):
        load_labelled(str(path), token_label_field="tokens")
    data = load_labelled(str(path), token_label_field="tokens", missing_labels="drop")
    assert data.dropped_tokens == 2 and data.dropped == 0
    assert data.token_labels == [[None, 0.5, 1.25], [None, None, 2.0], [None, None]]
    # a text whose whole token-label cell is null or not a list: named, not a TypeError
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"text": "x", "tokens": None}) + "\n")
    with pytest.raises(ConfigError, match=r"'token_label_field'.*no per-token labels at line 2"):
        load_labelled(str(path), token_label_field="tokens")
    path.write_text(json.dumps({"text": "x", "tokens": "oops"}) + "\n")
    with pytest.raises(ConfigError, match=r"'token_label_field': line 1 has no JSON list"):
        load_labelled(str(path), token_label_field="tokens")


def test_a_null_text_is_named_not_probed_as_the_text_none(tmp_path):
    rows = binary_rows(4)
    rows[1]["text"] = None
    with pytest.raises(ConfigError, match=r"'text_field'.*at line 2 \(1 of 4 rows\)"):
        load_labelled(write_jsonl(tmp_path / "d.jsonl", rows))


def test_cli_names_missing_labels_in_one_line_and_drop_counts_them(tiny_llama, tmp_path, capsys):
    rows = binary_rows(40)
    rows[2]["label"] = None
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    base = ["probe", "--config", "configs/probe.py", f"--config.model={tiny_llama}", f"--config.data={path}",
            "--config.hooks=blocks.1.hook_resid_post", "--config.C=1"]
    assert main([*base, f"--config.out={tmp_path / 'p'}"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "'label_field'" in error and "line 3" in error and "missing_labels=drop" in error
    cfg = load_config("configs/probe.py", {"model": tiny_llama, "data": path, "hooks": "blocks.1.hook_resid_post",
                                           "C": "1", "missing_labels": "drop", "out": str(tmp_path / "d")},
                      schemas.PROBE, "probe")
    summary = run_probe(cfg, progress=False)
    assert summary["kind"] == "binary" and summary["dropped_missing_labels"] == 1
    assert sum(summary["rows"].values()) == 39
    assert json.loads((tmp_path / "d" / "results.json").read_text())["dropped_missing_labels"] == 1


def sae_probe_config(tiny_llama: str, sae_run: Path, out: Path, **fields):
    return load_config("configs/probe.py", {"model": tiny_llama, "n_examples": 40, "features": "sae",
                                            "sae_run": str(sae_run), "families": "ksparse", "k": "2", "C": "1",
                                            "pooling": "mean", "out": str(out), **fields}, schemas.PROBE, "probe")


def test_sae_run_trained_on_another_model_is_refused_unless_allowed(tiny_llama, tiny_llama_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_llama_run / "run", run)
    cfg_json = json.loads((run / "cfg.json").read_text())
    ours = cfg_json["source"]["model_hash"]
    cfg_json["source"].update(model_hash="0123456789abcdef", model_name="other-model")
    (run / "cfg.json").write_text(json.dumps(cfg_json))
    with pytest.raises(ConfigError, match=rf"'sae_run': .*'other-model' \(fingerprint 0123456789abcdef\), not on "
                                          rf".* \(fingerprint {ours}\).*allow_other_model=true"):
        probe_features(sae_probe_config(tiny_llama, run, tmp_path / "p"), progress=False)
    data = probe_features(sae_probe_config(tiny_llama, run, tmp_path / "p", allow_other_model=True), progress=False)
    assert data.features["blocks.1.hook_resid_post"].n_rows == 40
    # an export carries its run's fingerprint: the same model's, so accepted
    from jaxinterp.export import export_run

    export = export_run(str(tiny_llama_run / "run"), "saelens", str(tmp_path / "saelens"))
    data = probe_features(sae_probe_config(tiny_llama, export, tmp_path / "p"), progress=False)
    assert np.all(np.diff(data.features["blocks.1.hook_resid_post"].indptr) >= 8)
