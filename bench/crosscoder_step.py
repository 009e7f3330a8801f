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
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from sae_step import seconds_per_call  # noqa: E402

from jaxinterp import schemas  # noqa: E402
from jaxinterp.config import load_config  # noqa: E402
from jaxinterp.mesh import batch_sharding, make_mesh  # noqa: E402
from jaxinterp.sae import crosscoder  # noqa: E402
from jaxinterp.train import abstract_state, build_members, init_state, train_step  # noqa: E402
from jaxinterp.train.state import state_shardings  # noqa: E402


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
    for mesh_spec in args.mesh.split(","):
        data, model = (int(n) for n in mesh_spec.split("x"))
        cfg = load_config("configs/train.py", {
            "hook": ",".join(hooks), "sae.architecture": "crosscoder", "sae.activation": args.activation,
            "sae.k": args.k, "sae.n_latents": args.latents, "batch_size": args.batch, "mesh.data": data,
            "mesh.model": model}, schemas.TRAIN)
        members = build_members(cfg, hooks)
        mesh = make_mesh(data, model)
        shardings = state_shardings(abstract_state(members, dict.fromkeys(hooks, args.d)), members, mesh)
        state = jax.device_put(init_state(jax.random.key(0), {h: jnp.asarray(v[:256]) for h, v in rows.items()},
                                          members), shardings)
        placed = {hook: jax.device_put(values, batch_sharding(mesh)) for hook, values in rows.items()}
        step = jax.jit(partial(train_step, members=members, dead_tokens=10**7),
                       in_shardings=(shardings, {hook: batch_sharding(mesh) for hook in hooks}),
                       out_shardings=(shardings, None))
        floor = jax.jit(floor_step(args.activation, args.k),
                        in_shardings=(shardings.saes["sae"].params, batch_sharding(mesh)))
        x_placed = jax.device_put(x, batch_sharding(mesh))
        with jax.set_mesh(mesh):
            ours = seconds_per_call(lambda s, b: step(s, b)[1], state, placed, steps=args.steps, warmup=1)
            base = seconds_per_call(floor, state.saes["sae"].params, x_placed, steps=args.steps, warmup=1)
        results["meshes"][mesh_spec] = {"jaxinterp_s": ours, "floor_s": base, "tokens_per_s": args.batch / ours}
        print(f"mesh {mesh_spec}: jaxinterp {ours:.3f} s/step ({args.batch / ours:,.0f} tok/s), floor {base:.3f} s, "
              f"jaxinterp / floor {ours / base:.2f}", flush=True)
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
