"""Evaluation on a tiny real model: spliced forward passes on both backends, CE metrics, held-out
contexts, top-activating examples, and the whole `jaxinterp eval` output."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.config import ConfigError, load_config
from jaxinterp.eval.contexts import heldout_context_ids, read_contexts
from jaxinterp.eval.run import evaluate_run
from jaxinterp.eval.splice import ce_loss_recovered, kl_divergence, next_token_loss, zero_ablation
from jaxinterp.models import HookEdit, resolve_model
from jaxinterp.models.jax_backend import JaxSourceModel
from jaxinterp.models.torch_backend import TorchSourceModel
from jaxinterp.store import open_store

HOOK = "blocks.1.hook_resid_post"


def _shift(operand, x):
    return x + operand  # not a rescale: RMSNorm would undo that before the last layer's logits


@pytest.mark.parametrize("hook", ["hook_embed", "blocks.1.hook_resid_pre", "blocks.1.hook_attn_out",
                                  "blocks.1.hook_mlp_out", "blocks.2.hook_resid_post"])
def test_spliced_logits_agree_across_backends(tiny_llama, hook):
    files = resolve_model(tiny_llama)
    jax_model, torch_model = JaxSourceModel(files), TorchSourceModel(files)
    tokens = np.random.default_rng(0).integers(3, 500, size=(2, 24))
    clean = np.asarray(jax_model.logits(tokens))
    np.testing.assert_allclose(torch_model.logits(tokens), clean, rtol=1e-4, atol=1e-4)
    edit = HookEdit(hook, _shift, jnp.float32(1.0))
    edited_jax, edited_torch = np.asarray(jax_model.logits(tokens, edit)), torch_model.logits(tokens, edit)
    assert np.abs(edited_jax - clean).max() > 1e-2  # the edit changes the output ...
    np.testing.assert_allclose(edited_torch, edited_jax, rtol=1e-4, atol=1e-4)  # ... the same way on both
    kept = np.asarray(jax_model.logits(tokens, zero_ablation(hook, keep_first=True)))
    np.testing.assert_allclose(kept[:, 0], clean[:, 0], rtol=1e-5, atol=1e-5)  # position 0 untouched (causal)


def test_ce_and_kl_definitions():
    rng = np.random.default_rng(1)
    logits, tokens = rng.normal(size=(2, 5, 7)).astype(np.float32), rng.integers(0, 7, size=(2, 5))
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_p[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(next_token_loss(jnp.asarray(logits), jnp.asarray(tokens)), expected, rtol=1e-5)
    assert np.allclose(kl_divergence(logits, logits), 0, atol=1e-6)
    other = rng.normal(size=logits.shape).astype(np.float32)
    log_q = other - np.log(np.exp(other).sum(-1, keepdims=True))
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)[:, :-1]
    np.testing.assert_allclose(kl_divergence(logits, other), kl, rtol=1e-5)
    assert ce_loss_recovered(2.0, 2.0, 5.0) == 1.0 and ce_loss_recovered(2.0, 5.0, 5.0) == 0.0
    assert ce_loss_recovered(2.0, 2.75, 5.0) == pytest.approx(0.75)


def test_heldout_contexts_lie_in_holdout_chunks(tiny_llama_run):
    from jaxinterp.buffer import split_chunks

    store = open_store(str(tiny_llama_run / "store"))
    rows_per_chunk, context = store.layout.rows_per_chunk, store.manifest["context_size"]
    split = split_chunks(-(-store.n_tokens // rows_per_chunk), 0.25, 0)
    ids = heldout_context_ids(store, split.holdout)
    assert len(ids) > 0
    for i in ids:
        chunks = set(range(i * context // rows_per_chunk, ((i + 1) * context - 1) // rows_per_chunk + 1))
        assert chunks <= set(split.holdout.tolist())
    read = read_contexts(store, ids[:5], [HOOK])
    assert read.tokens.shape == (5, context) and read.activations[HOOK].shape == (5, context, 64)
    np.testing.assert_array_equal(read.activations[HOOK][2], store.read(HOOK, int(ids[2]) * context, int(ids[2] + 1) * context))
    assert (read.tokens[:, 0] == store.manifest["bos_token_id"]).all()


def eval_config(run, **overrides):
    fields = {"run": str(run), "eval_tokens": 2048, "contexts": 16, "ce_contexts": 4, "n_latents": 3,
              "examples_per_latent": 4, **overrides}
    return load_config("configs/eval.py", fields, schemas.EVAL, "eval")


def test_eval_writes_every_output_and_backends_agree(tiny_llama_run, tmp_path, capsys):
    results = {}
    for backend in ("jax", "torch"):
        results[backend] = evaluate_run(eval_config(tiny_llama_run / "run", backend=backend, out=str(tmp_path / backend)),
                                        progress=backend == "jax")
    bars = capsys.readouterr().err  # the reconstruction and CE-loss passes each show tokens/s
    assert "eval: 100%" in bars and "ce-loss: 100%" in bars and "tok/s" in bars
    jax_result, torch_result = results["jax"], results["torch"]
    for key in ("ce_loss_clean", "ce_loss_spliced", "ce_loss_zero_ablated", "kl_spliced"):
        assert jax_result[key] == pytest.approx(torch_result[key], rel=1e-4, abs=1e-5), key
    r = jax_result
    assert r["kl_zero_ablated"] > 0 and r["kl_spliced"] > 0  # a random-weight model: CE itself is near log(vocab)
    assert r["ce_loss_recovered"] == pytest.approx(ce_loss_recovered(r["ce_loss_clean"], r["ce_loss_spliced"],
                                                                     r["ce_loss_zero_ablated"]))
    assert 0 < r["relative_reconstruction_bias"] < 2 and 0 < r["fvu"] < 1 and r["l0"] <= 8
    out = tmp_path / "jax"
    assert json.loads((out / "eval.json").read_text())["ce_tokens_predicted"] == 4 * 63
    assert (out / "feature_density.png").stat().st_size > 1000
    assert (out / "zf_plot.png").stat().st_size > 1000
    # TopK with k of 256 latents on these rows: the code's norm is near, and at most about, the AFA
    assert 0.2 < r["zf_median_ratio"] < 1.5
    examples = json.loads((out / "top_examples.json").read_text())["latents"]
    assert len(examples) == 3
    for record in examples:
        acts = [e["activation"] for e in record["examples"]]
        assert acts == sorted(acts, reverse=True) and all(a > 0 for a in acts)
        for e in record["examples"]:
            assert e["position"] > 0  # BOS is never an example: the SAE was not trained on it
            assert e["activations"][e["marked"]] == pytest.approx(e["activation"], abs=1e-3)
    html = (out / "top_examples.html").read_text()
    assert f"latent {examples[0]['latent']}" in html and "outline" in html


def test_eval_chosen_latents_and_errors(tiny_llama_run, tmp_path):
    result = evaluate_run(eval_config(tiny_llama_run / "run", latents="0,5", ce_contexts=0, out=str(tmp_path / "e")))
    assert "ce_loss_recovered" not in result
    assert [r["latent"] for r in json.loads((tmp_path / "e" / "top_examples.json").read_text())["latents"]] == [0, 5]
    with pytest.raises(ValueError, match="'latents'.*outside"):
        evaluate_run(eval_config(tiny_llama_run / "run", latents="999", ce_contexts=0, out=str(tmp_path / "f")))
    with pytest.raises(ConfigError, match="'model'.*not the model"):
        evaluate_run(eval_config(tiny_llama_run / "run", model="smollm2", out=str(tmp_path / "g")))


def test_an_imported_sae_evaluates_like_its_run(tiny_llama_run, tmp_path):
    from jaxinterp.export import export_run

    store = str(tiny_llama_run / "store")
    exported = export_run(str(tiny_llama_run / "run"), "saelens", str(tmp_path / "saelens"))
    with pytest.raises(ConfigError, match="'store'.*imported"):
        evaluate_run(eval_config(exported, out=str(tmp_path / "x")))
    fields = dict(store=store, ce_contexts=2, latents="1,2", backend="jax")
    ours = evaluate_run(eval_config(tiny_llama_run / "run", out=str(tmp_path / "run_eval"), **fields))
    imported = evaluate_run(eval_config(exported, out="", **fields))
    assert imported["format"] == "saelens" and ours["format"] == "run"
    assert imported["written_to"] == str(tmp_path / "saelens_eval")
    for key in ("fvu", "l0", "relative_reconstruction_bias", "ce_loss_spliced", "kl_spliced"):
        assert imported[key] == pytest.approx(ours[key], rel=1e-4, abs=1e-6), key
