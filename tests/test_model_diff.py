"""Model diffing end to end on tiny models: a two-model store, a crosscoder over both, its eval and export.

A tiny Llama and its own fine-tuned copy (bench/finetune_pair.py, a few steps) share nearly everything, so an
L1 crosscoder (Lindsey et al. 2024's decoder-norm-weighted penalty) over the pair keeps its latents shared:
relative decoder norms between 0.1 and 0.9. (Two unrelated random models do not make an "exclusive" control:
their residual streams are both mostly functions of the current token, which a shared latent reconstructs
in both; measured 5 of 128 latents exclusive. tests/test_crosscoder.py checks that exclusive features are
found on a store built to have them.)
"""

import json
import sys
from pathlib import Path

import numpy as np


from jaxinterp import schemas
from jaxinterp.cli import main
from jaxinterp.config import load_config
from jaxinterp.export import export_run, load_sae
from jaxinterp.extract import extract
from jaxinterp.train import train
from tests.test_extract import extract_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import finetune_pair  # noqa: E402

HOOK = "blocks.2.hook_resid_post"
SOURCES = f"{HOOK},m1/{HOOK}"
LATENTS = 128


def diff_run(model_a: str, model_b: str, root: Path) -> Path:
    """A two-model store of ``HOOK`` and an L1 crosscoder trained over both models' ``HOOK``."""
    extract(extract_config(f"{model_a},{model_b}", root / "store", hooks=HOOK, max_tokens=16384), progress=False)
    run = root / "run"
    train(load_config("configs/train.py", {
        "store": str(root / "store"), "hook": SOURCES, "out": str(run), "steps": 300, "batch_size": 256,
        "lr": 1e-2, "sae.architecture": "crosscoder", "sae.activation": "relu", "sae.sparsity_coefficient": 0.01,
        "sae.n_latents": LATENTS, "checkpoint_every": 300, "eval_tokens": 1024, "holdout_fraction": 0.1,
        "mixing_chunks": 4, "mesh.data": 1}, schemas.TRAIN, "train"), progress=False)
    return run


def sharing(run: Path, out: Path) -> dict:
    assert main(["eval", f"--config.run={run}", f"--config.out={out}", "--config.ce_contexts=0"]) == 0
    got = json.loads((out / "eval.json").read_text())
    assert (out / "relative_norms_0_1.png").is_file()
    (pair,) = got["relative_norms"]
    assert (pair["a"], pair["b"]) == (HOOK, f"m1/{HOOK}")
    assert pair["exclusive_a"] + pair["exclusive_b"] + pair["shared"] + pair["no_norm"] == LATENTS
    relative = np.load(out / "relative_norms_0_1.npy")
    assert relative.shape == (LATENTS,)
    assert pair["latents_only_a"] == np.flatnonzero(relative < 0.1).tolist()
    assert pair["latents_only_b"] == np.flatnonzero(relative > 0.9).tolist()
    return {**pair, "fvu_per_source": got["fvu_per_source"]}


def test_a_crosscoder_over_a_model_and_its_fine_tune(tiny_llama, tmp_path, capsys):
    tuned = tmp_path / "tuned"
    finetune_pair.main(["--model", tiny_llama, "--out", str(tuned), "--steps", "4", "--batch", "4", "--context", "32",
                        "--lr", "1e-4", "--warmup", "1", "--eval-batches", "1"])
    pair_run = diff_run(tiny_llama, str(tuned), tmp_path / "p")
    paired = sharing(pair_run, tmp_path / "p_eval")
    print(f"fine-tuned pair: {paired}")
    assert paired["shared"] > paired["exclusive_a"] + paired["exclusive_b"], paired
    assert max(paired["fvu_per_source"]) < 0.5

    # A store whose primary model is the fine-tune is another model's: refused in one line unless allowed.
    extract(extract_config(str(tuned), tmp_path / "other", hooks=HOOK, max_tokens=2048), progress=False)
    args = ["eval", f"--config.run={pair_run}", f"--config.store={tmp_path / 'other'}", "--config.ce_contexts=0",
            f"--config.out={tmp_path / 'other_eval'}"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config field 'store': the crosscoder was trained on" in err[0], err
    assert not (tmp_path / "other_eval").exists()

    written = export_run(str(pair_run), "crosscoder", str(tmp_path / "export"))
    cfg = json.loads((written / "cfg.json").read_text())
    sources = cfg["metadata"]["sources"]
    assert [s["hook_name"] for s in sources] == [HOOK, HOOK]  # each one's name in its own model
    assert sources[0]["model_name"] == Path(tiny_llama).name and sources[1]["model_name"] == tuned.name
    assert cfg["hook_names"] == SOURCES.split(",")
    assert load_sae(str(written)).sae.d_sae == LATENTS
