"""An attribution graph by circuit-tracer 0.5.0 for a jaxinterp export; run under circuit-tracer's environment.

    PYTHONPATH=.venv-circuit-tracer .venv/bin/python bench/circuit_tracer_graph.py MODEL_DIR EXPORT_DIR \
        REFERENCE.npz RESULT.json [--prompt-tokens 12] [--max-feature-nodes N] [--batch-size 64] [--max-n-logits 5]

It imports circuit-tracer, nnsight and transformers 4.57.3 only (not jaxinterp, whose .venv has transformers 5),
so tests/test_attribution_graph.py and bench/attribution_e2e.py run it in a subprocess. ``REFERENCE.npz`` holds
jaxinterp's side for one context: ``tokens [T]`` (BOS first), ``mlp_in``, ``mlp_out`` and ``pred`` ``[L, T, d]``
(the stored ``blocks.ℓ.mlp.hook_in`` / ``blocks.ℓ.hook_mlp_out`` rows and jaxinterp's transcoder prediction from
``mlp_in``). Written to ``RESULT.json``:

* ``consistency``: max abs differences of the nnsight ``ReplacementModel``'s un-replaced forward against
  transformers' forward (logits) and against jaxinterp's stored hooks (MLP input and output), and of the loaded
  transcoders' reconstruction (``compute_attribution_components``) against jaxinterp's prediction.
* ``replacement``: the replacement model's error: per-layer relative norm of the error vectors
  (``‖mlp_out − reconstruction‖ / ‖mlp_out‖`` over positions ≥ 1, what the error nodes carry), and the
  error-free replacement model (every MLP replaced by the transcoders, errors dropped) against the real model:
  KL(real ‖ replaced) at the last position and top-1 agreement over positions ≥ 1.
* ``graph``: ``circuit_tracer.attribute`` on the first ``--prompt-tokens`` tokens: its node counts, circuit-tracer's
  ``compute_graph_scores`` (replacement score, completeness score), and the top logit's coverage: its incoming
  edge weights (``normalize_matrix``, |A| row-normalised) split into feature, error and token-embedding nodes.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from circuit_tracer import ReplacementModel, attribute
from circuit_tracer.graph import compute_graph_scores, normalize_matrix
from circuit_tracer.transcoder import TranscoderSet
from circuit_tracer.utils.caching import load_transcoders_from_cache
from nnsight import save

CPU = torch.device("cpu")
# model_type → the class circuit-tracer's nnsight mapping is keyed by (a GGUF-derived config names none)
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM", "gemma2": "Gemma2ForCausalLM",
                 "gemma3_text": "Gemma3ForCausalLM"}


def transformers4_view(model: str, work: Path) -> str:
    """``model`` as transformers 4.57.3 reads it: a directory saved by transformers 5 (jaxinterp's .venv) names
    its tokenizer class ``TokenizersBackend`` and nests ``rope_theta`` in ``rope_parameters``, which 4.57 ignores
    (silently defaulting θ); a GGUF-derived config has no ``architectures``. Returns ``model`` itself when none
    applies, else a directory of links to its files with those two JSON files rewritten."""
    source = Path(model)
    config = json.loads((source / "config.json").read_text())
    tokenizer = json.loads((source / "tokenizer_config.json").read_text())
    rope = config.get("rope_parameters")
    if "architectures" in config and tokenizer.get("tokenizer_class") != "TokenizersBackend" and not rope:
        return model
    if rope:
        if rope.get("rope_type", "default") != "default" or set(rope) - {"rope_theta", "rope_type"}:
            raise ValueError(f"{model}: rope_parameters {rope} have no transformers-4 equivalent here")
        config["rope_theta"] = rope["rope_theta"]
    config.setdefault("architectures", [ARCHITECTURES[config["model_type"]]])
    if tokenizer.get("tokenizer_class") == "TokenizersBackend":
        tokenizer["tokenizer_class"] = "PreTrainedTokenizerFast"  # the same tokenizer.json, 4.57's class for it
    view = work / "model_transformers4"
    view.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        if file.name not in ("config.json", "tokenizer_config.json"):
            (view / file.name).unlink(missing_ok=True)  # a link left by an earlier view of another model
            (view / file.name).symlink_to(file.absolute())
    (view / "config.json").write_text(json.dumps(config, indent=2))
    (view / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=2))
    return str(view)


def scale(array: np.ndarray) -> float:
    return float(np.abs(array).max())


def max_diff(a: torch.Tensor, b: np.ndarray) -> float:
    return float((a.detach().float() - torch.from_numpy(np.asarray(b, dtype=np.float32))).abs().max())


def hooked_forward(model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``mlp_in``, ``mlp_out`` ``[L, T, d]`` and logits ``[T, V]`` at circuit-tracer's own feature hooks (nnsight)."""
    with torch.no_grad(), model.trace(tokens):
        ins, outs = [], []
        for layer in range(model.cfg.n_layers):  # in execution order: nnsight requires it
            ins.append(model.get_feature_input_loc(layer).output)
            outs.append(model.get_feature_output_loc(layer).output)
        mlp_in, mlp_out = save(torch.cat(ins, dim=0)), save(torch.cat(outs, dim=0))
        logits = save(model.output.logits)
    return mlp_in, mlp_out, logits[0]


def replaced_logits(hf_model, transcoders, tokens: torch.Tensor) -> torch.Tensor:
    """Logits ``[T, V]`` with every layer's MLP output replaced by the transcoders' output (no error terms)."""
    acts: list[torch.Tensor] = []  # a CLT's earlier layers' activations, decoded into later layers too

    def replace(layer: int):
        def hook(module, inputs, output):
            x = inputs[0]
            if isinstance(transcoders, TranscoderSet):
                return transcoders[layer](x)
            acts.append(transcoders.encode_layer(x, layer))
            out = transcoders.b_dec[layer].expand_as(x).clone()
            for source, a in enumerate(acts):  # W_dec_s [n, L − s, d]: source s into target s + j
                out = out + a @ transcoders._get_decoder_vectors(source)[:, layer - source]
            return out
        return hook

    handles = [block.mlp.register_forward_hook(replace(layer)) for layer, block in enumerate(hf_model.model.layers)]
    try:
        with torch.no_grad():
            return hf_model(tokens[None]).logits[0]
    finally:
        for handle in handles:
            handle.remove()


def graph_summary(graph, n_layers: int) -> dict:
    """Node counts, circuit-tracer's scores and the top logit's incoming-attribution split."""
    n_features, n_pos, n_logits = len(graph.selected_features), graph.n_pos, len(graph.logit_targets)
    errors_end = n_features + n_layers * n_pos
    n_nodes = graph.adjacency_matrix.shape[0]
    replacement_score, completeness_score = compute_graph_scores(graph)
    top = normalize_matrix(graph.adjacency_matrix)[n_nodes - n_logits]  # rows sorted by probability: the top logit
    active = graph.active_features
    return {
        "n_nodes": n_nodes, "n_features": n_features, "n_active_features": int(active.shape[0]),
        "n_error_nodes": n_layers * n_pos, "n_token_nodes": n_pos, "n_logits": n_logits,
        "expected_nodes": n_features + (n_layers + 1) * n_pos + n_logits,
        "feature_layers": sorted({int(v) for v in active[:, 0]}), "min_feature_pos": int(active[:, 1].min()),
        "logit_tokens": [int(t.vocab_idx) for t in graph.logit_targets],
        "logit_probabilities": [float(p) for p in graph.logit_probabilities],
        "finite": bool(torch.isfinite(graph.adjacency_matrix).all()),
        "replacement_score": replacement_score, "completeness_score": completeness_score,
        "top_logit_coverage": {"features": float(top[:n_features].sum()),
                               "errors": float(top[n_features:errors_end].sum()),
                               "tokens": float(top[errors_end:errors_end + n_pos].sum()),
                               "logits": float(top[n_nodes - n_logits:].sum())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model"), parser.add_argument("export"), parser.add_argument("reference")
    parser.add_argument("result")
    parser.add_argument("--prompt-tokens", type=int, default=12)
    parser.add_argument("--max-feature-nodes", type=int, default=0, help="0 = every active feature")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-n-logits", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    reference, export = np.load(args.reference), Path(args.export).absolute()
    transcoders, config = load_transcoders_from_cache(export.name, cache_dir=str(export.parent), device=CPU,
                                                      dtype=torch.float32, lazy_encoder=False, lazy_decoder=False)
    started = time.time()
    model_dir = transformers4_view(args.model, Path(args.result).parent)
    model = ReplacementModel.from_pretrained_and_transcoders(model_dir, transcoders, backend="nnsight", device=CPU)
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    tokens = torch.from_numpy(reference["tokens"].astype(np.int64))
    n_layers = model.cfg.n_layers

    mlp_in, mlp_out, logits = hooked_forward(model, tokens)
    with torch.no_grad():
        hf_logits = hf_model(tokens[None]).logits[0]
        recon = transcoders.compute_attribution_components(mlp_in, zero_positions=slice(0, 0))["reconstruction"]
        replaced = replaced_logits(hf_model, transcoders, tokens)
    consistency = {"logits_vs_transformers": float((logits - hf_logits).abs().max()),
                   "mlp_in_vs_jaxinterp": max_diff(mlp_in, reference["mlp_in"]),
                   "mlp_out_vs_jaxinterp": max_diff(mlp_out, reference["mlp_out"]),  # scales: for relative tolerances
                   "reconstruction_vs_jaxinterp": max_diff(recon, reference["pred"]),
                   "logits_scale": float(hf_logits.abs().max()), "mlp_in_scale": scale(reference["mlp_in"]),
                   "mlp_out_scale": scale(reference["mlp_out"]), "pred_scale": scale(reference["pred"])}
    error = (mlp_out - recon)[:, 1:].norm(dim=(1, 2)) / mlp_out[:, 1:].norm(dim=(1, 2))
    real_logp, replaced_logp = hf_logits.log_softmax(-1), replaced.log_softmax(-1)
    replacement = {"relative_error_by_layer": [float(e) for e in error],
                   "relative_error": float((mlp_out - recon)[:, 1:].norm() / mlp_out[:, 1:].norm()),
                   "kl_last": float((real_logp[-1].exp() * (real_logp[-1] - replaced_logp[-1])).sum()),
                   "top1_agreement": float((hf_logits[1:].argmax(-1) == replaced[1:].argmax(-1)).float().mean())}

    prompt = tokens[:args.prompt_tokens]
    graph_started = time.time()
    graph = attribute(prompt, model, max_n_logits=args.max_n_logits, batch_size=args.batch_size,
                      max_feature_nodes=args.max_feature_nodes or None)
    summary = graph_summary(graph, n_layers)
    summary["top_logit_is_argmax"] = summary["logit_tokens"][0] == int(hf_logits[len(prompt) - 1].argmax())
    summary["seconds"] = time.time() - graph_started
    result = {"config": config, "n_layers": n_layers, "d_transcoder": transcoders.d_transcoder,
              "kind": type(transcoders).__name__, "consistency": consistency, "replacement": replacement,
              "graph": summary, "seconds": time.time() - started}
    Path(args.result).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
