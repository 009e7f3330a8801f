"""End to end: jaxinterp extracts, trains and exports; circuit-tracer 0.5.0 builds attribution graphs with the exports.

    .venv/bin/python bench/attribution_e2e.py [--model smollm2] [--tokens 16384] [--steps 300] [--latents 1024]
        [--k 32] [--clt-latents-per-layer 256] [--clt-k 64] [--prompt-tokens 12] [--max-feature-nodes 512]

One store of every layer's ``blocks.ℓ.mlp.hook_in`` and ``blocks.ℓ.hook_mlp_out`` (SmolLM2-135M: 30 layers, pydoc
corpus), a transcoder set (one sweep run, one BatchTopK per-layer transcoder per layer, normalised inputs and
targets) and a BatchTopK CLT over all layers (raw activations: its export refuses ``normalize``), both exported as
circuit-tracer directories. Then, per export, ``bench/circuit_tracer_graph.py`` in a subprocess with circuit-tracer
(nnsight backend, CPU) on the store's first context: the hook/logit consistency checks, the replacement model's
error (relative error norm; the error-free replacement's KL and top-1 agreement with the real model), and
``circuit_tracer.attribute`` on its first ``--prompt-tokens`` tokens (graph size, circuit-tracer's replacement and
completeness scores, the top logit's incoming attribution split into feature / error / token nodes). Prints a table;
writes ``bench/results/attribution_e2e.json``. The work directory (``--work``) holds the store, runs and exports.
tests/test_attribution_graph.py runs the same helpers on a tiny Llama.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxinterp import schemas  # noqa: E402
from jaxinterp.config import load_config  # noqa: E402
from jaxinterp.export import export_run, loaded_from_trained  # noqa: E402
from jaxinterp.extract import extract  # noqa: E402
from jaxinterp.runs import load_trained  # noqa: E402
from jaxinterp.store import open_store  # noqa: E402
from jaxinterp.train import train  # noqa: E402

GRAPH_SCRIPT = ROOT / "bench" / "circuit_tracer_graph.py"
CT_ENV = ROOT / ".venv-circuit-tracer"


def mlp_hooks(n_layers: int) -> tuple[list[str], list[str]]:
    """Every layer's transcoder input and target hook."""
    return ([f"blocks.{layer}.mlp.hook_in" for layer in range(n_layers)],
            [f"blocks.{layer}.hook_mlp_out" for layer in range(n_layers)])


def extract_store(model: str, store: str, n_layers: int, tokens: int, context: int, batch_size: int = 8) -> None:
    inputs, targets = mlp_hooks(n_layers)
    extract(load_config("configs/extract.py", {
        "model": model, "hooks": ",".join(inputs + targets), "data": "pydoc", "out": store, "context_size": context,
        "max_tokens": tokens, "batch_size": batch_size, "chunk_mib": 0.05 if tokens <= 8192 else 1.0,
        "shard_mib": 0.5 if tokens <= 8192 else 16.0}, schemas.EXTRACT, "extract"), progress=False)


def train_fields(store: str, out: Path, steps: int, batch_size: int = 256, lr: float = 3e-3) -> dict:
    return {"store": store, "out": str(out), "steps": steps, "batch_size": batch_size, "lr": lr, "warmup_steps": 5,
            "eval_tokens": 1024, "holdout_fraction": 0.1, "checkpoint_every": steps, "mixing_chunks": 4,
            "mesh.data": 1}


def train_set(store: str, out: Path, n_layers: int, steps: int, latents: int, k: int, **fields) -> dict:
    """One sweep run of BatchTopK transcoders ``t<ℓ>``, ``mlp.hook_in`` → ``hook_mlp_out`` of each layer ℓ."""
    inputs, targets = mlp_hooks(n_layers)
    sweep = "; ".join(f"t{layer}: hook={inputs[layer]}, target_hook={targets[layer]}" for layer in range(n_layers))
    return train(load_config("configs/train.py", {
        **train_fields(store, out, steps), "hook": inputs[0], "target_hook": targets[0], "sweep": sweep,
        "normalize": True, "norm_tokens": 2048, "sae.architecture": "batch_topk", "sae.n_latents": latents,
        "sae.k": k, **fields}, schemas.TRAIN, "train"), progress=False)


def train_clt(store: str, out: Path, n_layers: int, steps: int, latents_per_layer: int, k: int, **fields) -> dict:
    """A BatchTopK CLT over every layer (``k``: active latents per token and layer, on average over the batch)."""
    return train(load_config("configs/train.py", {
        **train_fields(store, out, steps), "hook": "blocks.*.mlp.hook_in", "target_hook": "blocks.*.hook_mlp_out",
        "dead_tokens": 5000, "sae.architecture": "clt", "sae.activation": "batch_topk",
        "sae.n_latents": n_layers * latents_per_layer, "sae.k": k, **fields}, schemas.TRAIN, "train"), progress=False)


def write_reference(store_url: str, run: Path, kind: str, n_layers: int, context: int, path: Path) -> Path:
    """jaxinterp's side of the store's first context: tokens, stored hooks, the trained dictionaries' prediction."""
    import jax.numpy as jnp

    from jaxinterp.sae import clt

    inputs, targets = mlp_hooks(n_layers)
    store = open_store(store_url)
    tokens = store.read("tokens", 0, context)
    mlp_in = np.stack([store.read(hook, 0, context) for hook in inputs]).astype(np.float32)
    mlp_out = np.stack([store.read(hook, 0, context) for hook in targets]).astype(np.float32)
    if kind == "set":
        pred = np.stack([np.asarray(loaded_from_trained(load_trained(str(run), f"t{layer}")).predict(mlp_in[layer]))
                         for layer in range(n_layers)])
    else:
        trained = load_trained(str(run))
        rows = jnp.asarray(np.swapaxes(mlp_in, 0, 1))  # [T, L, d], jaxinterp's CLT layout
        latents, _ = clt.encode(trained.state.params, rows, "batch_topk", trained.config["k"],
                                threshold=trained.state.arch_state["threshold"])
        pred = np.swapaxes(np.asarray(clt.decode(trained.state.params, latents)), 0, 1)
    np.savez(path, tokens=tokens, mlp_in=mlp_in, mlp_out=mlp_out, pred=pred.astype(np.float32))
    return path


def run_graph(model: str, export: Path, reference: Path, result: Path, env_dir: Path, prompt_tokens: int,
              max_feature_nodes: int = 0, batch_size: int = 64, max_n_logits: int = 5, timeout: int = 3600) -> dict:
    """``bench/circuit_tracer_graph.py`` in a subprocess with ``env_dir`` (circuit-tracer's directory) on
    ``PYTHONPATH``; its ``RESULT.json``."""
    env = {**os.environ, "PYTHONPATH": str(env_dir), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(GRAPH_SCRIPT), model, str(export), str(reference), str(result),
                           "--prompt-tokens", str(prompt_tokens), "--max-feature-nodes", str(max_feature_nodes),
                           "--batch-size", str(batch_size), "--max-n-logits", str(max_n_logits)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{GRAPH_SCRIPT.name} failed on {export}:\n{done.stderr[-6000:]}")
    return json.loads(result.read_text())


def table(results: dict) -> str:
    """One row per export: replacement error and top-logit coverage."""
    header = (f"{'export':<6} {'rel err':>8} {'KL last':>8} {'top-1':>6} {'nodes':>6} {'features':>8} "
              f"{'repl':>6} {'compl':>6} {'top logit: feat':>15} {'err':>6} {'tok':>6} {'graph s':>8}")
    rows = [header, "-" * len(header)]
    for kind, r in results.items():
        rep, g = r["replacement"], r["graph"]
        c = g["top_logit_coverage"]
        rows.append(f"{kind:<6} {rep['relative_error']:>8.3f} {rep['kl_last']:>8.3f} {rep['top1_agreement']:>6.3f} "
                    f"{g['n_nodes']:>6} {g['n_features']:>8} {g['replacement_score']:>6.3f} "
                    f"{g['completeness_score']:>6.3f} {c['features']:>15.3f} {c['errors']:>6.3f} {c['tokens']:>6.3f} "
                    f"{g['seconds']:>8.1f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="'smollm2' or an HF directory (Llama family)")
    parser.add_argument("--tokens", type=int, default=16384, help="store tokens (every layer's 2 hooks, float32)")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300, help="training steps of the set and of the CLT")
    parser.add_argument("--latents", type=int, default=1024, help="latents of each per-layer transcoder")
    parser.add_argument("--k", type=int, default=32, help="per-layer transcoders' BatchTopK k")
    parser.add_argument("--clt-latents-per-layer", type=int, default=256)
    parser.add_argument("--clt-k", type=int, default=16, help="CLT's BatchTopK k (per token and layer)")
    parser.add_argument("--prompt-tokens", type=int, default=12, help="attributed prompt: the context's first tokens")
    parser.add_argument("--max-feature-nodes", type=int, default=512, help="0 = every active feature")
    parser.add_argument("--batch-size", type=int, default=64, help="attribution rows per backward pass")
    parser.add_argument("--work", default=str(ROOT / "bench" / "results" / "attribution_e2e_work"))
    args = parser.parse_args(argv)

    from jaxinterp.models import resolve_model
    from tests.test_circuit_tracer_export import circuit_tracer_env

    model = resolve_model(args.model).directory
    n_layers = json.loads((Path(model) / "config.json").read_text())["num_hidden_layers"]
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)  # a fresh store and runs: extract and train refuse stale ones
    work.mkdir(parents=True)
    store, seconds = str(work / "store"), {}
    started = time.time()
    extract_store(model, store, n_layers, args.tokens, args.context)
    seconds["extract"] = time.time() - started
    started = time.time()
    set_summary = train_set(store, work / "set_run", n_layers, args.steps, args.latents, args.k)
    seconds["train_set"] = time.time() - started
    started = time.time()
    clt_summary = train_clt(store, work / "clt_run", n_layers, args.steps, args.clt_latents_per_layer, args.clt_k)
    seconds["train_clt"] = time.time() - started
    export_run(str(work / "set_run"), "circuit_tracer", str(work / "set"),
               sae=",".join(f"t{layer}" for layer in range(n_layers)))
    export_run(str(work / "clt_run"), "circuit_tracer", str(work / "clt"))
    env_dir, results = circuit_tracer_env(), {}
    for kind in ("set", "clt"):
        reference = write_reference(store, work / f"{kind}_run", kind, n_layers, args.context,
                                    work / f"reference_{kind}.npz")
        started = time.time()
        results[kind] = run_graph(model, work / kind, reference, work / f"result_{kind}.json", env_dir,
                                  args.prompt_tokens, args.max_feature_nodes, args.batch_size)
        seconds[f"graph_{kind}"] = time.time() - started
    fvu = {"set": float(np.mean([set_summary["eval"][f"t{layer}"]["fvu"] for layer in range(n_layers)])),
           "clt": float(clt_summary["eval"]["sae"]["fvu"])}
    print(table(results))
    print(f"holdout FVU (jaxinterp eval): set mean {fvu['set']:.3f}, CLT {fvu['clt']:.3f}; seconds "
          + ", ".join(f"{key} {value:.0f}" for key, value in seconds.items()))
    out = {"settings": vars(args), "model": model, "n_layers": n_layers, "holdout_fvu": fvu, "seconds": seconds,
           "results": results}
    path = ROOT / "bench" / "results" / "attribution_e2e.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str))
    return out


if __name__ == "__main__":
    main()
