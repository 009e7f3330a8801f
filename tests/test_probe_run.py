"""`jaxinterp probe` end to end on a tiny model, and on the real SmolLM2 across layers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.cli import main
from jaxinterp.config import ConfigError, load_config
from jaxinterp.export.probe import read_probe
from jaxinterp.models import HookError
from jaxinterp.models.hooks import layer_count
from jaxinterp.probe import load_labelled, probe_features, run_probe

pytest.importorskip("matplotlib")


def probe_config(out, **fields):
    return load_config("configs/probe.py", {"out": str(out), **fields}, schemas.PROBE, "probe")


def test_probe_run_writes_results_probes_plot_and_steering(tiny_llama, tmp_path):
    cfg = probe_config(tmp_path / "p", model=tiny_llama, n_examples=120, families="logistic,ksparse,mlp",
                       k="1,4", C="0.01,1", pooling="mean", **{"mlp.steps": 50, "mlp.hidden": 16})
    summary = run_probe(cfg, progress=False)
    out = tmp_path / "p"
    results = json.loads((out / "results.json").read_text())
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in range(3)]  # hooks=all on a 3-layer model
    assert sorted({r["hook"] for r in results["results"]}) == hooks
    assert {(r["family"], r["k"]) for r in results["results"]} == {("logistic", None), ("mlp", None),
                                                                   ("ksparse", 1), ("ksparse", 4)}
    assert summary["kind"] == "binary" and summary["classes"] == ["0", "1"]
    assert (out / "layer_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| blocks.2.hook_resid_post | logistic |" in (out / "results.md").read_text()
    steering = json.loads((out / "steering" / "blocks.1.hook_resid_post.json").read_text())
    assert steering["layerNumber"] == 1 and steering["hookType"] == "hook_resid_post"
    assert abs(np.linalg.norm(steering["vector"]) - 1) < 1e-6 and len(steering["vector"]) == 64

    # the exported weights act on raw pooled activations and reproduce the recorded test accuracy
    data = probe_features(cfg, progress=False)
    for family in ("logistic", "ksparse_k4"):
        tensors, config = read_probe(out / "probes" / "blocks.2.hook_resid_post" / f"{family}.safetensors")
        x = data.features["blocks.2.hook_resid_post"]
        if family.startswith("ksparse"):
            x = x[:, config["latent_ids"]]
        predicted = (x @ tensors["W"] + tensors["b"])[:, 0] > 0
        accuracy = np.mean(predicted[data.splits.test] == data.targets[data.splits.test])
        assert abs(accuracy - config["test"]["accuracy"]) < 1e-6
        assert config["hook_name"] == "blocks.2.hook_resid_post" and config["pooling"] == "mean"

    with pytest.raises(FileExistsError):
        run_probe(cfg, progress=False)
    assert main(["probe", "--config", "configs/probe.py", f"--config.out={out}", f"--config.model={tiny_llama}"]) == 2


def test_token_level_labels_and_pooling_modes(tiny_llama, tmp_path):
    texts = ["def f(x): return x", "class A: pass", "import os", "x = [1, 2, 3]"] * 10
    from jaxinterp.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(tiny_llama))
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        labels = [None if i == 0 else int(tokenizer.decode(t).strip().isalpha()) for i, t in enumerate(ids)]
        rows.append({"text": text, "tokens": labels})
    path = tmp_path / "tokens.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = probe_config(tmp_path / "t", model=tiny_llama, data=str(path), token_label_field="tokens", pooling="token",
                       hooks="blocks.1.hook_resid_post", C="1")
    data = probe_features(cfg, progress=False)
    n_labelled = sum(sum(v is not None for v in r["tokens"]) for r in rows)
    assert len(data.targets) == n_labelled == len(data.features["blocks.1.hook_resid_post"])
    # rows of one text never straddle splits
    text_of_row = np.concatenate([[t] * sum(v is not None for v in r["tokens"]) for t, r in enumerate(rows)])
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not set(text_of_row[data.splits[a]]) & set(text_of_row[data.splits[b]])
    # pooled rows equal the model's own activations of each text run alone (right padding is inert)
    from jaxinterp.models import load_source_model
    from jaxinterp.probe import pool_activations, tokenize_texts

    model = load_source_model(tiny_llama, backend="jax")
    tokens = tokenize_texts(tokenizer, texts[:4], 64, prepend_bos=True)
    alone = [model.run(t[None], ["blocks.1.hook_resid_post"])["blocks.1.hook_resid_post"][0] for t in tokens]
    for pooling, expected in (("last", [a[-1] for a in alone]), ("mean", [a[1:].mean(0) for a in alone]),
                              ("max", [a[1:].max(0) for a in alone]), ("token", [a[1:] for a in alone])):
        pooled = pool_activations(model, tokens, ["blocks.1.hook_resid_post"], pooling, skip_first=True)
        got = pooled.features["blocks.1.hook_resid_post"]
        np.testing.assert_allclose(got, np.concatenate(expected) if pooling == "token" else np.stack(expected),
                                   rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="'token_label_field'.*pooling='token'"):
        probe_features(probe_config(tmp_path / "m", model=tiny_llama, data=str(path), token_label_field="tokens",
                                    pooling="mean"), progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x = 1", "labell": 1}))
    with pytest.raises(ConfigError, match="'label_field'.*row 0"):
        load_labelled(str(bad))


def test_ksparse_on_sae_latents_of_a_trained_run(tiny_llama, tiny_llama_run, tmp_path):
    hook = "blocks.1.hook_resid_post"
    cfg = probe_config(tmp_path / "p", model=tiny_llama, n_examples=120, features="sae",
                       sae_run=str(tiny_llama_run / "run"), families="ksparse", k="1,2,8", C="0.1,1", pooling="mean")
    data = probe_features(cfg, progress=False)
    latents = data.features[hook]
    assert latents.n_cols == 128 and latents.n_rows == 120
    assert np.all(np.diff(latents.indptr) >= 8)  # mean of per-token top-8 latents: at least 8 per text
    summary = run_probe(cfg, progress=False)
    assert {r["k"] for r in json.loads((tmp_path / "p" / "results.json").read_text())["results"]} == {1, 2, 8}
    assert summary["features"] == "sae"
    tensors, config = read_probe(tmp_path / "p" / "probes" / hook / "ksparse_k8.safetensors")
    assert tensors["W"].shape == (8, 1) and len(config["latent_ids"]) == 8
    assert config["sae_run"] == str(tiny_llama_run / "run")
    assert not (tmp_path / "p" / "steering").exists()  # latents have no activation-space direction


def test_probe_hooks_are_checked_against_the_models_config(tmp_path):
    """A hook the model does not have is refused before its weights are read, as extract refuses it."""
    from transformers import GPTNeoXConfig

    from tests.tiny_models import save_tiny_model

    neox = save_tiny_model(GPTNeoXConfig(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                         num_attention_heads=4, max_position_embeddings=512, bos_token_id=1,
                                         eos_token_id=2), tmp_path / "neox", tokenizer=True)
    cfg = probe_config(tmp_path / "p", model=neox, n_examples=40, hooks="blocks.0.hook_resid_mid")
    with pytest.raises(HookError, match="hook 'blocks.0.hook_resid_mid' does not exist: this GPT-NeoX model has a "
                                        "parallel residual") as refused:
        probe_features(cfg, model=_NoModel(), progress=False)
    assert "\n" not in str(refused.value)


class _NoModel:
    """A source model stand-in that fails if the probe runs it (the hooks must be refused first)."""

    def __getattr__(self, name):
        raise AssertionError(f"the model was used ({name}) before its hooks were checked")


def test_layer_count_reads_gpt2_and_llama_configs():
    from types import SimpleNamespace

    from transformers import GPT2Config, LlamaConfig

    assert layer_count(GPT2Config(n_layer=5)) == 5
    assert layer_count(LlamaConfig(num_hidden_layers=7)) == 7
    assert layer_count(SimpleNamespace(n_layer=2)) == 2  # a config without transformers' attribute alias


@pytest.mark.real_model
def test_smollm2_open_bracket_probe_finds_a_layer_well_above_chance(tmp_path):
    layers = (0, 3, 6, 9, 12, 18, 24, 29)
    cfg = probe_config(tmp_path / "p", n_examples=800, hooks=",".join(f"blocks.{n}.hook_resid_post" for n in layers),
                       C="0.001,0.01,0.1,1,10")
    summary = run_probe(cfg, progress=False)
    results = json.loads((tmp_path / "p" / "results.json").read_text())["results"]
    accuracy = {r["hook"]: r["test"]["accuracy"] for r in results}
    print({h.split(".")[1]: round(a, 3) for h, a in accuracy.items()})
    assert summary["rows"]["test"] == 160
    assert max(accuracy.values()) >= 0.85  # balanced binary task: chance is 0.5
    assert accuracy["blocks.0.hook_resid_post"] < max(accuracy.values())
