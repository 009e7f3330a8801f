"""``jaxinterp interpret`` end to end with real SmolLM2-135M-Instruct as explainer and scorer (JAX backend, KV-cache
generation, next-token scoring) on the tiny Llama run's cache: every stage's files, and the numbers it gives."""

import json

import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.config import load_config
from jaxinterp.interpret import interpret
from jaxinterp.interpret.prompts import UNPARSED

pytestmark = pytest.mark.real_model


def test_smollm2_explains_and_scores_the_tiny_runs_latents(tiny_llama_run, tmp_path):
    out = tmp_path / "interpret"
    summary = interpret(load_config("configs/interpret.py", {
        "run": str(tiny_llama_run / "run"), "out": str(out), "n_tokens": 64 * 64, "min_examples": 20, "n_latents": 2,
        "n_examples_train": 4, "n_examples_test": 4, "n_non_activating": 4, "n_quantiles": 2, "max_new_tokens": 16,
        "generation_batch": 2, "score_batch": 8}, schemas.INTERPRET, "interpret"))
    print(json.dumps({k: v for k, v in summary.items() if k != "score"}, indent=1, default=str))
    print((out / "summary.md").read_text())
    records = [json.loads(line) for line in (out / "explanations.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["reply"].strip() for r in records)
    print([r["explanation"] for r in records])
    parsed = [r["explanation"] != UNPARSED for r in records]
    assert summary["generated_tokens"] > 0 and summary["generation_tokens_per_s"] > 0
    score = summary["score"]
    assert score["scored_prompt_tokens"] > 0 and score["latents"] == 2
    for kind in ("detection", "fuzz"):
        for which in ("true", "control"):
            value = score[f"{kind}_{which}_balanced_accuracy"]
            assert value is not None and 0 <= value <= 1
    assert (out / "dashboard" / "index.html").exists() and (out / "neuronpedia" / "features.json").exists()
    print("parsed explanations:", sum(parsed), "of", len(parsed))
    assert np.isfinite(score["score_tokens_per_s"])
