"""bench/finetune_pair.py: a fine-tuned copy that the two-model extraction accepts as the base's pair."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxinterp.extract import extract
from jaxinterp.store import open_store
from tests.test_extract import extract_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import finetune_pair  # noqa: E402


def test_rot13_is_its_own_inverse_and_keeps_everything_but_letters():
    assert finetune_pair.rot13(["Hello, World 42!"]) == ["Uryyb, Jbeyq 42!"]
    assert finetune_pair.rot13(finetune_pair.rot13(["def f(x): return x"])) == ["def f(x): return x"]


def test_a_fine_tuned_tiny_model_pairs_with_its_base(tiny_llama, tmp_path):
    out = tmp_path / "tuned"
    result = finetune_pair.main(["--model", tiny_llama, "--out", str(out), "--steps", "12", "--batch", "4",
                                 "--context", "32", "--lr", "3e-3", "--warmup", "2", "--eval-batches", "2"])
    assert result["held_out_loss_after"] < result["held_out_loss_before"]  # it learnt the cipher's statistics
    assert json.loads((out / "finetune.json").read_text())["steps"] == 12
    base, tuned = load_file(str(Path(tiny_llama) / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(base) <= set(tuned) and any(not np.array_equal(base[k], tuned[k]) for k in base)
    with pytest.raises(SystemExit, match="exists"):
        finetune_pair.main(["--model", tiny_llama, "--out", str(out), "--steps", "1"])
    lines = (out / "mix.jsonl").read_text().splitlines()
    assert finetune_pair.rot13([json.loads(lines[0])["text"]]) == [json.loads(lines[1])["text"]]
    cfg = extract_config(f"{tiny_llama},{out}", tmp_path / "pair", hooks="blocks.1.hook_resid_post",
                         data=str(out / "mix.jsonl"))
    extract(cfg, progress=False)  # the same tokenizer: accepted
    store = open_store(str(tmp_path / "pair"))
    assert store.manifest["hook_names"] == ["blocks.1.hook_resid_post", "m1/blocks.1.hook_resid_post"]
