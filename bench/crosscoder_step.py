"""Crosscoder training-step speed at SmolLM2 shapes: jaxinterp's step vs its floor, on 1 and N devices.

    python bench/crosscoder_step.py [--sources 2 --d 576 --latents 16384 --k 32 --batch 1024 --steps 3]
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python bench/crosscoder_step.py --mesh 1x1,2x4,1x8

Default shapes: model diffing of SmolLM2-135M and a fine-tune at one residual hook (2 sources, d 576), 16,384
shared latents, BatchTopK k 32 (Minder et al. 2025's crosscoder recipe). Rows (every one on the same float32
batch of correlated Gaussian sources ``x [batch, S, d]``, source s = a shared part plus its own noise):
  floor      one jitted encoder pass: ``Σ_s x_s @ W_enc[s] + b_enc`` and the activation's selection
             (BatchTopK's batch-wide threshold, or per-token top-k), no decode, no gradient
  jaxinterp  the trainer's own jitted step (``jaxinterp.train.train_step``) of a ``sae.architecture=crosscoder``
             member: encode, decode into every source, loss, gradients, Adam, latent counters
on each ``--mesh DxM`` (the latent axis over 'model', rows over 'data'). No peer row: no PyTorch crosscoder
trainer is installed here (dictionary_learning 0.1.0, the release on PyPI, has no crosscoder).
Ratios are against rows of this same run. Results also go to bench/results/crosscoder_step.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from clt_step import time_on_mesh  # noqa: E402

from jaxinterp.sae import crosscoder  # noqa: E402


def sources_batch(sources: int, d: int, rows: int, seed: int = 0) -> np.ndarray:
    """``[rows, S, d]``: one shared Gaussian part plus independent noise per source (a model and its fine-tune)."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(rows, 1, d))
    return (shared + 0.3 * rng.normal(size=(rows, sources, d))).astype(np.float32)


def floor_step(activation: str, k: int):
    def encoder(params, x):
        return crosscoder.encode(params, x, activation, k)[0]

    return encoder


def run(args) -> dict:
    hooks = ["blocks.15.hook_resid_post", *(f"m{s}/blocks.15.hook_resid_post" for s in range(1, args.sources))]
    x = sources_batch(args.sources, args.d, args.batch)
    rows = {hook: x[:, s] for s, hook in enumerate(hooks)}
    results = {"sources": args.sources, "d": args.d, "latents": args.latents, "k": args.k, "batch": args.batch,
               "activation": args.activation, "meshes": {}}
    fields = {"hook": ",".join(hooks), "sae.architecture": "crosscoder", "sae.activation": args.activation,
              "sae.k": args.k, "sae.n_latents": args.latents, "batch_size": args.batch}
    for mesh_spec in args.mesh.split(","):
        results["meshes"][mesh_spec] = time_on_mesh(fields, hooks, rows, args.d, floor_step(args.activation, args.k),
                                                    x, mesh_spec, args.steps)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=2)
    parser.add_argument("--d", type=int, default=576)
    parser.add_argument("--latents", type=int, default=16384)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--activation", default="batch_topk", choices=crosscoder.ACTIVATIONS)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--mesh", default="1x1", help="comma-separated DxM meshes, e.g. 1x1,2x4")
    args = parser.parse_args()
    print(f"crosscoder step: {args.sources} sources, d {args.d}, {args.latents} latents, k {args.k}, "
          f"{args.activation}, batch {args.batch}; {jax.devices()[0].device_kind} x{jax.device_count()} "
          f"({jax.default_backend()})", flush=True)
    results = run(args)
    results["device"] = f"{jax.devices()[0].device_kind} x{jax.device_count()}"
    out = Path(__file__).parent / "results" / "crosscoder_step.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
