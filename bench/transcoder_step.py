"""TopK transcoder training-step speed: jaxinterp vs EleutherAI sparsify vs the floor; per-layer sweeps.

    python bench/transcoder_step.py [--d-in 576 --n-latents 9216 --k 32 --batch 4096 --steps 5]
    python bench/transcoder_step.py --store bench/results/quality_store_tc_12 --layer 12   # real SmolLM2 pairs
    python bench/transcoder_step.py --batch 1024 --n-latents 2048 --steps 2 --sweep-steps 8   # a quick check

Every row trains on the same float32 batch: input ``x`` and a different target ``y`` of the same
width (``--store``: a store's ``blocks.L.mlp.hook_in`` → ``blocks.L.hook_mlp_out`` rows, else
synthetic: Gaussian ``x`` and ``y = relu(x W₁) W₂``, a fixed random MLP of it):
  floor               one jitted ``top_k(x @ W_enc)``, as bench/sae_step.py defines it: the encoder
                      matmul and selection alone
  jaxinterp           our transcoder train step (``target_hook`` ≠ ``hook``: sparse custom-VJP
                      kernels, AuxK, Adam, decoder projection and renormalisation, latent counters)
  sparsify            its ``SparseCoder`` with ``transcode=True`` stepped as its ``Trainer`` does with
                      its Adam option (bench/peers.py), torch on as many threads as JAX's cores
Then end to end (``jaxinterp train`` itself, compile and store reads included) on a synthetic
8-layer store: 8 per-layer transcoders (``blocks.L.mlp.hook_in`` → ``blocks.L.hook_mlp_out``) in
one sweep run, reading the data once, vs 8 separate runs of one transcoder each.
Ratios are against rows of this same run. Results also go to bench/results/transcoder_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from sae_step import PRESETS, seconds_per_call  # noqa: E402

N_LAYERS = 8


def mlp_target(x: np.ndarray, seed: int = 1) -> np.ndarray:
    """``relu(x W₁) W₂`` with fixed random weights (hidden 4·d): a synthetic MLP output for input ``x``."""
    rng = np.random.default_rng(seed)
    d = x.shape[1]
    W_1 = rng.normal(size=(d, 4 * d)).astype(np.float32) / np.sqrt(d)
    W_2 = rng.normal(size=(4 * d, d)).astype(np.float32) / np.sqrt(4 * d)
    return (np.maximum(x @ W_1, 0.0) @ W_2).astype(np.float32)


def transcoder_step_seconds(x: jax.Array, y: jax.Array, n_latents: int, k: int, steps: int) -> float:
    """Seconds per jaxinterp transcoder train step (state donated, as in training) on ``(x, y)``."""
    from jaxinterp.schemas import sae_config
    from jaxinterp.train import build_members, init_state, train_step

    cfg = {"hook": "x", "target_hook": "y", "lr": 0.0, "sweep": "", "steps": 10_000, "warmup_steps": 10,
           "decay_fraction": 0.2, "grad_clip": 1.0, "sae": sae_config("topk", n_latents=n_latents, k=k)}
    members = build_members(cfg)
    assert members[0].transcoder
    state = jax.jit(partial(init_state, members=members))(jax.random.key(0), {"x": x[:256], "y": y[:256]})
    step = jax.jit(partial(train_step, members=members, dead_tokens=10**9), donate_argnums=0)
    holder = [state]

    def run():
        holder[0], metrics = step(holder[0], {"x": x, "y": y})
        return metrics

    return seconds_per_call(run, steps=steps)


def per_layer_sweep_seconds(args) -> dict[str, float]:
    """Wall seconds of ``jaxinterp train``: 8 per-layer transcoders in one sweep run vs 8 separate runs."""
    from jaxinterp import schemas
    from jaxinterp.config import load_config
    from jaxinterp.train import train
    from tests.stores import write_store

    def hooks(layer: int) -> tuple[str, str]:
        return f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.hook_mlp_out"

    rng = np.random.default_rng(0)
    activations = {}
    for layer in range(N_LAYERS):
        x = rng.normal(size=(args.sweep_tokens, args.sweep_d)).astype(np.float32)
        activations.update({hooks(layer)[0]: x, hooks(layer)[1]: mlp_target(x, seed=10 + layer)})
    with tempfile.TemporaryDirectory(prefix="transcoder_sweep_") as tmp:
        store = f"{tmp}/store"
        write_store(store, activations, context_size=128, chunk_mib=0.25, shard_mib=4)

        def config(out: str, layer: int, sweep: str = ""):
            hook, target = hooks(layer)
            return load_config("configs/train.py", {
                "store": store, "hook": hook, "target_hook": target, "out": out, "sweep": sweep,
                "steps": args.sweep_steps, "batch_size": args.sweep_batch, "sae.n_latents": args.sweep_latents,
                "sae.k": args.sweep_k, "checkpoint_every": 10**9, "log_every": 10**9, "eval_tokens": 1024,
                "mesh.data": 1}, schemas.TRAIN, "train")

        sweep = "; ".join(f"l{layer}: hook={hooks(layer)[0]}, target_hook={hooks(layer)[1]}" for layer in range(N_LAYERS))
        began = time.perf_counter()
        train(config(f"{tmp}/sweep", 0, sweep), progress=False)
        one_pass = time.perf_counter() - began
        began = time.perf_counter()
        for layer in range(N_LAYERS):
            train(config(f"{tmp}/l{layer}", layer), progress=False)
        separate = time.perf_counter() - began
    return {"one_pass": one_pass, "separate": separate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cpu = PRESETS["cpu"]
    parser.add_argument("--d-in", type=int, default=cpu["d_in"])
    parser.add_argument("--n-latents", type=int, default=cpu["n_latents"])
    parser.add_argument("--k", type=int, default=cpu["k"])
    parser.add_argument("--batch", type=int, default=cpu["batch"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--store", help="read x, y from this store's blocks.L.mlp.hook_in / blocks.L.hook_mlp_out")
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--sweep-d", type=int, default=128)
    parser.add_argument("--sweep-latents", type=int, default=1024)
    parser.add_argument("--sweep-k", type=int, default=16)
    parser.add_argument("--sweep-batch", type=int, default=1024)
    parser.add_argument("--sweep-steps", type=int, default=32)
    parser.add_argument("--sweep-tokens", type=int, default=40_960)
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "transcoder_step.json"))
    args = parser.parse_args()
    n_latents, k, batch = args.n_latents, args.k, args.batch
    if args.store:
        from jaxinterp.store import open_store

        store = open_store(args.store)
        source = f"{args.store}: blocks.{args.layer}.mlp.hook_in → blocks.{args.layer}.hook_mlp_out"
        x_np = np.asarray(store.read(f"blocks.{args.layer}.mlp.hook_in", 0, batch), np.float32)
        y_np = np.asarray(store.read(f"blocks.{args.layer}.hook_mlp_out", 0, batch), np.float32)
    else:
        source = "synthetic: Gaussian x, y = relu(x W1) W2"
        x_np = np.random.default_rng(0).normal(size=(batch, args.d_in)).astype(np.float32)
        y_np = mlp_target(x_np)
    batch, d_in = x_np.shape
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)

    W_enc = jax.random.normal(jax.random.key(1), (d_in, n_latents)) / np.sqrt(d_in)
    floor = jax.jit(lambda x, W: jax.lax.top_k(jnp.dot(x, W, preferred_element_type=jnp.float32), k))
    rows = {"floor: top_k(x @ W_enc)": seconds_per_call(floor, x, W_enc, steps=args.steps),
            "jaxinterp topk transcoder": transcoder_step_seconds(x, y, n_latents, k, args.steps)}
    threads = len(os.sched_getaffinity(0))
    if not args.skip_peers:
        import torch

        from peers import sparsify_transcoder_step_seconds

        torch.set_num_threads(threads)  # the cores XLA:CPU uses
        seconds = sparsify_transcoder_step_seconds(x_np, y_np, n_latents, k, steps=args.steps)
        if seconds is None:
            print("sparsify: not installed (pip install -e '.[bench]')")
        else:
            rows["sparsify transcoder (adam)"] = seconds
    sweep = {} if args.skip_sweep else per_layer_sweep_seconds(args)

    floor_s, ours = rows["floor: top_k(x @ W_enc)"], rows["jaxinterp topk transcoder"]
    print(f"TopK transcoder step, d_in = d_out {d_in}, n_latents {n_latents:,}, k {k}, batch {batch:,}, float32, "
          f"{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()}), torch threads {threads}; "
          f"data {source}")
    print(f"{'':34}{'s/step':>9}{'tokens/s':>11}{'÷ floor':>9}{'jaxinterp ×':>13}")
    for name, seconds in rows.items():
        print(f"{name:34}{seconds:9.3f}{batch / seconds:11,.0f}{seconds / floor_s:9.2f}{seconds / ours:13.2f}")
    if sweep:
        print(f"{N_LAYERS} per-layer transcoders end to end (synthetic {N_LAYERS}-layer store, d {args.sweep_d}, "
              f"n_latents {args.sweep_latents}, k {args.sweep_k}, {args.sweep_steps} steps x {args.sweep_batch}): "
              f"one sweep run {sweep['one_pass']:.1f} s vs {N_LAYERS} separate runs {sweep['separate']:.1f} s "
              f"= {sweep['separate'] / sweep['one_pass']:.2f}x")
    results = {"shape": {"d_in": d_in, "n_latents": n_latents, "k": k, "batch": batch}, "data": source,
               "device": f"{jax.devices()[0].device_kind} x{jax.device_count()}", "torch_threads": threads,
               "seconds_per_step": rows, "per_layer_sweep": {**sweep, **{f: getattr(args, f) for f in (
                   "sweep_d", "sweep_latents", "sweep_k", "sweep_batch", "sweep_steps", "sweep_tokens")}}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
