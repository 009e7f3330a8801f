"""circuit-tracer 0.5.0 computes attribution graphs with jaxinterp's exported transcoder set and CLT (tiny Llama, CPU).

One store of the tiny Llama's ``blocks.{0,1,2}.mlp.hook_in`` and ``blocks.{0,1,2}.hook_mlp_out`` (extracted by
jaxinterp's JAX backend) trains a transcoder set (one sweep run, three BatchTopK per-layer transcoders, inputs and
targets normalised so the export folds both scales) and a BatchTopK CLT over the three layers; both are exported
as circuit-tracer directories (bench/attribution_e2e.py's helpers, which run the same on SmolLM2-135M).
``bench/circuit_tracer_graph.py`` then runs, in a subprocess with circuit-tracer,
nnsight 0.7.0 and transformers 4.57.3 on ``PYTHONPATH``: it builds
``ReplacementModel.from_pretrained_and_transcoders(<model dir>, <loaded export>, backend="nnsight")`` (on
transformers 4.57.3's view of the transformers-5 model directory: ``transformers4_view``) and checks

* the model and hook semantics agree: its un-replaced forward's logits equal transformers' forward, its
  feature hooks (``post_attention_layernorm`` output, ``mlp`` output) equal jaxinterp's stored rows for the same
  context, and the transcoders' reconstruction (``compute_attribution_components``) equals jaxinterp's prediction;
* the replacement model's error: the error vectors' relative norm per layer and the error-free replacement
  model's KL / top-1 agreement with the real logits;
* ``circuit_tracer.attribute`` on the context's first 12 tokens: the graph's node layout (features, one error
  node per layer and position, one token node per position, logit nodes), circuit-tracer's own
  ``circuit_tracer.graph.compute_graph_scores`` (replacement and completeness scores), and the top logit's
  coverage: the split of its ``circuit_tracer.graph.normalize_matrix`` row into feature, error and token nodes.
"""

from pathlib import Path

import pytest

from bench.attribution_e2e import extract_store, run_graph, train_clt, train_set, write_reference
from jaxinterp.export import export_run
from tests.test_circuit_tracer_export import circuit_tracer_env
from tests.tiny_models import save_tiny_model

LAYERS, CONTEXT, PROMPT_TOKENS, N_PER_LAYER = 3, 64, 12, 128


def tiny_llama_with_mlp_signal(directory: Path) -> str:
    """The ``tiny_llama`` fixture's architecture and tokenizer with weights of std 0.1 (not 0.02) and random norm
    weights: at 0.02 its MLP outputs are ~300× smaller than their inputs, too small for a CLT, which trains on raw
    activations (its export refuses ``normalize``), and its logits are near uniform."""
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1,
                         eos_token_id=2, tie_word_embeddings=False, initializer_range=0.1)
    return save_tiny_model(config, directory, tokenizer=True, random_norms=True)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict:
    """The model, the store, both runs and both exports (``set``, ``clt``) under one directory."""
    root = tmp_path_factory.mktemp("attribution")
    store, model = str(root / "store"), tiny_llama_with_mlp_signal(root / "model")
    extract_store(model, store, LAYERS, tokens=8192, context=CONTEXT)
    train_set(store, root / "set_run", LAYERS, steps=300, latents=N_PER_LAYER, k=8)
    train_clt(store, root / "clt_run", LAYERS, steps=300, latents_per_layer=N_PER_LAYER, k=16)
    export_run(str(root / "set_run"), "circuit_tracer", str(root / "set"), sae="t0,t1,t2")
    export_run(str(root / "clt_run"), "circuit_tracer", str(root / "clt"))
    return {"root": root, "store": store, "model": model}


def graph_result(exports: dict, kind: str) -> dict:
    root = exports["root"]
    reference = write_reference(exports["store"], root / f"{kind}_run", kind, LAYERS, CONTEXT,
                                root / f"reference_{kind}.npz")
    return run_graph(exports["model"], root / kind, reference, root / f"result_{kind}.json", circuit_tracer_env(),
                     PROMPT_TOKENS, max_feature_nodes=0, batch_size=64, max_n_logits=5, timeout=600)


@pytest.mark.parametrize("kind", ["set", "clt"])
def test_circuit_tracer_builds_an_attribution_graph_from_the_export(exports, kind):
    result = graph_result(exports, kind)
    assert result["config"]["model_kind"] == ("transcoder_set" if kind == "set" else "cross_layer_transcoder")
    assert result["kind"] == ("TranscoderSet" if kind == "set" else "CrossLayerTranscoder")
    assert result["n_layers"] == LAYERS and result["d_transcoder"] == N_PER_LAYER
    c = result["consistency"]  # the replacement model is the model jaxinterp extracted from, hook for hook
    assert c["logits_vs_transformers"] < 1e-4 * max(c["logits_scale"], 1.0), c
    assert c["mlp_in_vs_jaxinterp"] < 1e-4 * max(c["mlp_in_scale"], 1.0), c
    assert c["mlp_out_vs_jaxinterp"] < 1e-4 * max(c["mlp_out_scale"], 1.0), c
    assert c["reconstruction_vs_jaxinterp"] < 1e-4 * max(c["pred_scale"], 1.0), c

    r = result["replacement"]  # trained dictionaries: far better than predicting zero, not exact
    assert len(r["relative_error_by_layer"]) == LAYERS
    assert all(0.0 < e < 0.9 for e in r["relative_error_by_layer"]), r
    assert 0.0 <= r["kl_last"] < 5.0 and 0.0 <= r["top1_agreement"] <= 1.0, r

    g = result["graph"]
    assert g["finite"] and g["n_nodes"] == g["expected_nodes"]
    assert g["n_token_nodes"] == PROMPT_TOKENS and g["n_error_nodes"] == LAYERS * PROMPT_TOKENS
    assert g["n_features"] == g["n_active_features"] > 0  # no max_feature_nodes: every active feature visited
    assert set(g["feature_layers"]) <= set(range(LAYERS)) and g["min_feature_pos"] >= 1  # BOS position zeroed
    assert 1 <= g["n_logits"] <= 5 and g["top_logit_is_argmax"]
    probabilities = g["logit_probabilities"]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-5
    assert 0.0 <= g["replacement_score"] <= 1.0 and 0.0 <= g["completeness_score"] <= 1.0
    coverage = g["top_logit_coverage"]  # a logit's direct inputs: features, errors and token embeddings
    assert coverage["logits"] == 0.0 and coverage["features"] > 0.0 and coverage["errors"] > 0.0
    assert sum(coverage.values()) == pytest.approx(1.0, abs=1e-5)
    print(f"{kind}: relative error {r['relative_error']:.3f} {[round(e, 3) for e in r['relative_error_by_layer']]}, "
          f"KL {r['kl_last']:.4f}, top-1 {r['top1_agreement']:.3f}; graph {g['n_nodes']} nodes "
          f"({g['n_features']} features), replacement score {g['replacement_score']:.3f}, completeness "
          f"{g['completeness_score']:.3f}, top-logit coverage {coverage}; consistency {c}")
