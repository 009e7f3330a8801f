"""circuit-tracer 0.5.0 computes attribution graphs with jaxinterp's exported transcoder set and CLT (tiny Llama, CPU).

One store of the tiny Llama's ``blocks.{0,1,2}.mlp.hook_in`` and ``blocks.{0,1,2}.hook_mlp_out`` (extracted by
jaxinterp's JAX backend) trains a transcoder set (one sweep run, three BatchTopK per-layer transcoders, inputs and
targets normalised so the export folds both scales) and a BatchTopK CLT over the three layers; both are exported
as circuit-tracer directories. ``bench/circuit_tracer_graph.py`` then runs, in a subprocess with circuit-tracer,
nnsight 0.7.0 and transformers 4.57.3 on ``PYTHONPATH``: it builds
``ReplacementModel.from_pretrained_and_transcoders(<model dir>, <loaded export>, backend="nnsight")`` and checks

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

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.config import load_config
from jaxinterp.export import export_run, loaded_from_trained
from jaxinterp.extract import extract
from jaxinterp.runs import load_trained
from jaxinterp.sae import clt
from jaxinterp.store import open_store
from jaxinterp.train import train
from tests.test_circuit_tracer_export import circuit_tracer_env
from tests.tiny_models import save_tiny_model

ROOT = Path(__file__).resolve().parents[1]
GRAPH_SCRIPT = ROOT / "bench" / "circuit_tracer_graph.py"
LAYERS, CONTEXT, PROMPT_TOKENS, N_PER_LAYER = 3, 64, 12, 128
INPUTS = [f"blocks.{layer}.mlp.hook_in" for layer in range(LAYERS)]
TARGETS = [f"blocks.{layer}.hook_mlp_out" for layer in range(LAYERS)]


def train_config(store: str, out: Path, **fields) -> dict:
    return load_config("configs/train.py", {
        "store": store, "out": str(out), "steps": 300, "batch_size": 256, "lr": 3e-3, "warmup_steps": 5,
        "eval_tokens": 1024, "holdout_fraction": 0.1, "checkpoint_every": 300, "mixing_chunks": 4, "mesh.data": 1,
        **fields}, schemas.TRAIN, "train")


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
    extract(load_config("configs/extract.py", {
        "model": model, "hooks": ",".join(INPUTS + TARGETS), "data": "pydoc", "out": store,
        "context_size": CONTEXT, "max_tokens": 8192, "batch_size": 8, "chunk_mib": 0.05, "shard_mib": 0.5},
        schemas.EXTRACT, "extract"), progress=False)
    sweep = "; ".join(f"t{layer}: hook={INPUTS[layer]}, target_hook={TARGETS[layer]}" for layer in range(LAYERS))
    train(train_config(store, root / "set_run", hook=INPUTS[0], target_hook=TARGETS[0], sweep=sweep, normalize=True,
                       norm_tokens=2048, **{"sae.architecture": "batch_topk", "sae.n_latents": N_PER_LAYER,
                                            "sae.k": 8}), progress=False)
    train(train_config(store, root / "clt_run", hook="blocks.*.mlp.hook_in", target_hook="blocks.*.hook_mlp_out",
                       dead_tokens=5000, **{"sae.architecture": "clt", "sae.activation": "batch_topk",
                                            "sae.n_latents": LAYERS * N_PER_LAYER, "sae.k": 16}), progress=False)
    export_run(str(root / "set_run"), "circuit_tracer", str(root / "set"), sae="t0,t1,t2")
    export_run(str(root / "clt_run"), "circuit_tracer", str(root / "clt"))
    return {"root": root, "store": store, "model": model}


def reference(exports: dict, kind: str) -> Path:
    """jaxinterp's side of the store's first context: tokens, stored hooks and the trained dictionary's prediction."""
    store = open_store(exports["store"])
    tokens = store.read("tokens", 0, CONTEXT)
    mlp_in = np.stack([store.read(hook, 0, CONTEXT) for hook in INPUTS]).astype(np.float32)
    mlp_out = np.stack([store.read(hook, 0, CONTEXT) for hook in TARGETS]).astype(np.float32)
    if kind == "set":
        pred = np.stack([np.asarray(loaded_from_trained(load_trained(str(exports["root"] / "set_run"), f"t{layer}"))
                                    .predict(mlp_in[layer])) for layer in range(LAYERS)])
    else:
        trained = load_trained(str(exports["root"] / "clt_run"))
        rows = jnp.asarray(np.swapaxes(mlp_in, 0, 1))  # [T, L, d], jaxinterp's CLT layout
        latents, _ = clt.encode(trained.state.params, rows, "batch_topk", trained.config["k"],
                                threshold=trained.state.arch_state["threshold"])
        pred = np.swapaxes(np.asarray(clt.decode(trained.state.params, latents)), 0, 1)
    path = exports["root"] / f"reference_{kind}.npz"
    np.savez(path, tokens=tokens, mlp_in=mlp_in, mlp_out=mlp_out, pred=pred.astype(np.float32))
    return path


def run_graph(exports: dict, kind: str) -> dict:
    result = exports["root"] / f"result_{kind}.json"
    env = {**os.environ, "PYTHONPATH": str(circuit_tracer_env()), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(GRAPH_SCRIPT), exports["model"], str(exports["root"] / kind),
                           str(reference(exports, kind)), str(result), "--prompt-tokens", str(PROMPT_TOKENS),
                           "--batch-size", "64", "--max-n-logits", "5"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-6000:]
    return json.loads(result.read_text())


@pytest.mark.parametrize("kind", ["set", "clt"])
def test_circuit_tracer_builds_an_attribution_graph_from_the_export(exports, kind):
    result = run_graph(exports, kind)
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
