"""``jaxinterp interpret``: its stages, their reuse and refusals (the stages' own math has its own tests)."""

import json

import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.config import ConfigError, load_config
from jaxinterp.export import load_sae
from jaxinterp.interpret import interpret, latent_cache, read_latent_cache
from jaxinterp.store import open_store

HOOK = "blocks.1.hook_resid_post"


def interpret_config(**fields):
    return load_config("configs/interpret.py", fields, schemas.INTERPRET, "interpret")


def cache_config(**fields):
    return interpret_config(**{"stages": "cache", **fields})


def test_the_cache_stage_writes_reuses_and_refuses(tiny_llama_run, tmp_path):
    run, out = str(tiny_llama_run / "run"), tmp_path / "out"
    summary = interpret(cache_config(run=run, out=str(out), n_tokens=64 * 12, batch_contexts=4, n_splits=2))
    module = out / "cache" / HOOK
    assert summary["cache"]["directory"] == str(module) and not summary["cache"]["reused"]
    sae = load_sae(run)
    direct = latent_cache(sae.encode, sae.sae.d_sae, open_store(str(tiny_llama_run / "store")), HOOK,
                          str(tmp_path / "direct"), HOOK, n_tokens=64 * 12, n_splits=2)
    ours, reference = read_latent_cache(str(module)), read_latent_cache(str(direct / HOOK))
    np.testing.assert_array_equal(ours.locations, reference.locations)
    np.testing.assert_array_equal(ours.activations, reference.activations)
    assert summary["cache"]["live_latents"] == int((np.load(module / "firing_counts.npy") > 0).sum()) > 0
    assert json.loads((module / "config.json").read_text())["jaxinterp_dictionary"].endswith("#sae@40")

    again = interpret(cache_config(run=run, out=str(out), n_tokens=64 * 12, n_splits=2))
    assert again["cache"]["reused"]
    with pytest.raises(ConfigError, match="config field 'n_tokens': .* was cached with n_tokens=768, not 1024"):
        interpret(cache_config(run=run, out=str(out), n_tokens=64 * 16, n_splits=2))
    redone = interpret(cache_config(run=run, out=str(out), n_tokens=64 * 16, n_splits=2, overwrite=True))
    assert not redone["cache"]["reused"] and read_latent_cache(str(module)).tokens.shape == (16, 64)


def test_refusals_name_the_field(tiny_llama_run, tmp_path):
    run = str(tiny_llama_run / "run")
    with pytest.raises(ConfigError, match="config field 'stages': unknown stage 'explian'; choose from cache, explain, score, dashboard"):
        interpret(cache_config(run=run, out=str(tmp_path / "o"), stages="cache,explian"))
    export = tmp_path / "saelens"
    from jaxinterp.export import export_run

    export_run(run, "saelens", str(export))
    with pytest.raises(ConfigError, match="config field 'store': .* is an imported SAE; name the store"):
        interpret(cache_config(run=str(export), out=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def scripted_model(name="scripted"):
    """A LanguageModel whose replies and logits are fixed functions of the prompt: the pipeline's wiring, fast."""
    from jaxinterp.interpret.llm import LanguageModel, Timer
    from jaxinterp.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model("smollm2"))
    one, zero = tokenizer.encode("1", add_special_tokens=False)[0], tokenizer.encode("0", add_special_tokens=False)[0]

    def chat(conversations, reply_prefix=""):
        return [f"Thinking.\n[EXPLANATION]: pattern {len(c[-1]['content']) % 97}" for c in conversations]

    def next_token_logits(rows):
        logits = np.zeros((len(rows), len(tokenizer)), np.float32)
        logits[:, one] = [len(row) % 7 - 3 for row in rows]  # p("1") depends on the prompt only
        logits[:, zero] = 0.0
        return logits

    return LanguageModel(name, tokenizer, chat, next_token_logits, Timer(), Timer())


def test_every_stage_writes_its_files_and_is_reused(tiny_llama_run, tmp_path, monkeypatch):
    import jaxinterp.interpret.pipeline as pipeline

    loads = []
    monkeypatch.setattr(pipeline, "load_language_model", lambda *args, **kw: loads.append(args[0]) or scripted_model())
    run, out = str(tiny_llama_run / "run"), tmp_path / "out"
    fields = dict(run=run, out=str(out), n_tokens=64 * 64, min_examples=20, n_latents=5, n_examples_train=6,
                  n_examples_test=4, n_non_activating=4, n_quantiles=2, dashboard_examples=3)
    summary = interpret(interpret_config(**fields))
    assert summary["latents"] == 5 and summary["eligible_latents"] >= 5 and loads == ["smollm2"]  # one model, both roles
    explanations = [json.loads(line) for line in (out / "explanations.jsonl").read_text().splitlines()]
    latents = [r["latent"] for r in explanations]
    assert len(latents) == 5 and latents == sorted(latents) and all(r["explanation"].startswith("pattern") for r in explanations)
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [r["latent"] for r in scores] == latents
    for record in scores:
        assert record["control_explanation"] != record["explanation"] or len(set(r["explanation"] for r in explanations)) < 5
        for kind in ("detection", "fuzz"):
            for which in ("true", "control"):
                metrics = record[kind][which]
                assert len(metrics["probabilities"]) == metrics["n_positive"] + metrics["n_negative"] > 0
                assert 0 <= metrics["balanced_accuracy"] <= 1
    table = (out / "summary.md").read_text()
    assert "| detection | the latent's own |" in table and "| fuzz | shuffled (control) |" in table
    assert summary["score"]["detection_true_accuracy"] == pytest.approx(
        np.mean([r["detection"]["true"]["accuracy"] for r in scores]))
    pages = sorted(p.name for p in (out / "dashboard" / "latents").iterdir())
    assert pages == sorted(f"{latent}.html" for latent in latents)
    assert explanations[0]["explanation"] in (out / "dashboard" / "latents" / f"{latents[0]}.html").read_text()
    features = json.loads((out / "neuronpedia" / "features.json").read_text())
    assert [int(f["index"]) for f in features] == latents and features[0]["explanations"]

    again = interpret(interpret_config(**fields))  # every stage's output is reused; no model is loaded
    assert again["cache"]["reused"] and again["explain"]["reused"] and again["score"]["reused"]
    assert again["dashboard"]["reused"] and loads == ["smollm2"]
    with pytest.raises(ConfigError, match="config field 'max_new_tokens': .*explanations.jsonl was made with "
                                          "max_new_tokens=64, not 32"):
        interpret(interpret_config(**fields, max_new_tokens=32))
    with pytest.raises(ConfigError, match="config field 'scorers'"):
        interpret(interpret_config(**fields, scorers="detection,simulation"))
    with pytest.raises(ConfigError, match="config field 'latents': \\[9999\\] have fewer than min_examples"):
        interpret(interpret_config(**fields, latents="9999"))
    with pytest.raises(ConfigError, match="config field 'n_examples_test': 1 quantile draws over n_quantiles=2 "
                                          "is none per quantile"):
        interpret(interpret_config(**{**fields, "n_examples_test": 1}))
    with pytest.raises(ConfigError, match="config field 'n_non_activating': .*scores.jsonl was made with "
                                          "n_non_activating=4, not 3"):
        interpret(interpret_config(**{**fields, "n_non_activating": 3}))
    # rescoring alone: the explanations (made from the train examples only) stay as they are
    rescored = interpret(interpret_config(**{**fields, "n_non_activating": 3, "stages": "score", "overwrite": True}))
    assert not rescored["score"]["reused"] and "explain" not in rescored and loads == ["smollm2"] * 2
    interpret(interpret_config(**{**fields, "n_non_activating": 3, "stages": "explain"}))  # reused, not refused
    (out / "stages.json").unlink()  # outputs whose record is lost are never replaced silently
    with pytest.raises(FileExistsError, match="explanations.jsonl exists, and .*stages.json does not say what made it"):
        interpret(interpret_config(**fields))
