"""Cross-layer transcoder training-step speed at SmolLM2 shapes: jaxinterp's step vs its floor, on 1 and N devices.

    python bench/clt_step.py [--layers 30 --d 576 --latents-per-layer 1024 --k 16 --batch 1024 --steps 3]
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python bench/clt_step.py --mesh 1x1,2x4,1x8

Rows (every one on the same float32 batch: Gaussian MLP inputs ``x [batch, L, d]`` and targets
``y_L = Σ_{ℓ≤L} x_ℓ M_ℓL``, fixed random maps):
  floor      one jitted encoder pass: every layer's ``x_ℓ @ W_enc[ℓ] + b_enc[ℓ]`` and the activation's
             selection (per-layer top-k, or BatchTopK's batch-wide threshold), no decode, no gradient
  jaxinterp  the trainer's own jitted step (``jaxinterp.train.train_step``) of a ``sae.architecture=clt``
             member: encode, the triangular decode, loss, gradients, Adam, latent counters
on each ``--mesh DxM`` (the latent axis over 'model', rows over 'data'). There is no peer row:
no PyTorch CLT trainer is installed here (circuit-tracer loads CLTs but does not train them).
Ratios are against rows of this same run. Results also go to bench/results/clt_step.json.
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
from jaxinterp.sae import clt  # noqa: E402
from jaxinterp.train import abstract_state, build_members, init_state, train_step  # noqa: E402
from jaxinterp.train.state import state_shardings  # noqa: E402


def batch(layers: int, d: int, rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, layers, d)).astype(np.float32)
    maps = rng.normal(size=(layers, d, d)).astype(np.float32) / np.sqrt(d * layers)
    y = np.cumsum(np.einsum("tld,lde->tle", x, maps), axis=1).astype(np.float32)  # y_L sums layers 0..L
    return x, y


def floor_step(activation: str, k: int):
    def encoder(params, x):
        return clt.encode(params, x, activation, k)[0]

    return encoder


def time_on_mesh(fields: dict, hooks: list[str], rows: dict[str, np.ndarray], d: int, floor, floor_input: np.ndarray,
                 mesh_spec: str, steps: int) -> dict[str, float]:
    """Seconds per trainer step of the one-member train config ``fields`` on batch ``rows`` (hook → [rows, d])
    and of ``floor(params, floor_input)`` on the mesh ``mesh_spec`` ('DxM'), with the step's own shardings."""
    data, model = (int(n) for n in mesh_spec.split("x"))
    cfg = load_config("configs/train.py", {**fields, "mesh.data": data, "mesh.model": model}, schemas.TRAIN)
    members = build_members(cfg, hooks)
    mesh = make_mesh(data, model)
    shardings = state_shardings(abstract_state(members, dict.fromkeys(hooks, d)), members, mesh)
    state = jax.device_put(init_state(jax.random.key(0), {h: jnp.asarray(v[:256]) for h, v in rows.items()},
                                      members), shardings)
    placed = {hook: jax.device_put(values, batch_sharding(mesh)) for hook, values in rows.items()}
    step = jax.jit(partial(train_step, members=members, dead_tokens=10**7),
                   in_shardings=(shardings, {hook: batch_sharding(mesh) for hook in hooks}),
                   out_shardings=(shardings, None))
    floor = jax.jit(floor, in_shardings=(shardings.saes["sae"].params, batch_sharding(mesh)))
    x_placed = jax.device_put(floor_input, batch_sharding(mesh))
    with jax.set_mesh(mesh):
        ours = seconds_per_call(lambda s, b: step(s, b)[1], state, placed, steps=steps, warmup=1)
        base = seconds_per_call(floor, state.saes["sae"].params, x_placed, steps=steps, warmup=1)
    batch = len(floor_input)
    print(f"mesh {mesh_spec}: jaxinterp {ours:.3f} s/step ({batch / ours:,.0f} tok/s), floor {base:.3f} s, "
          f"jaxinterp / floor {ours / base:.2f}", flush=True)
    return {"jaxinterp_s": ours, "floor_s": base, "tokens_per_s": batch / ours}


def run(args) -> dict:
    hooks = [f"blocks.{layer}.{name}" for layer in range(args.layers) for name in ("mlp.hook_in", "hook_mlp_out")]
    x, y = batch(args.layers, args.d, args.batch)
    rows = {**{f"blocks.{l}.mlp.hook_in": x[:, l] for l in range(args.layers)},
            **{f"blocks.{l}.hook_mlp_out": y[:, l] for l in range(args.layers)}}
    results = {"layers": args.layers, "d": args.d, "latents_per_layer": args.latents_per_layer, "k": args.k,
               "batch": args.batch, "activation": args.activation, "meshes": {}}
    fields = {"hook": "blocks.*.mlp.hook_in", "target_hook": "blocks.*.hook_mlp_out", "sae.architecture": "clt",
              "sae.activation": args.activation, "sae.k": args.k, "sae.n_latents": args.layers * args.latents_per_layer,
              "batch_size": args.batch}
    for mesh_spec in args.mesh.split(","):
        results["meshes"][mesh_spec] = time_on_mesh(fields, hooks, rows, args.d, floor_step(args.activation, args.k),
                                                    x, mesh_spec, args.steps)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--d", type=int, default=576)
    parser.add_argument("--latents-per-layer", type=int, default=1024)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--activation", default="batch_topk", choices=clt.ACTIVATIONS)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--mesh", default="1x1", help="comma-separated DxM meshes, e.g. 1x1,2x4")
    args = parser.parse_args()
    print(f"CLT step: {args.layers} layers, d {args.d}, {args.latents_per_layer} latents per layer, k {args.k}, "
          f"{args.activation}, batch {args.batch}; {jax.devices()[0].device_kind} x{jax.device_count()} "
          f"({jax.default_backend()})", flush=True)
    results = run(args)
    results["device"] = f"{jax.devices()[0].device_kind} x{jax.device_count()}"
    out = Path(__file__).parent / "results" / "clt_step.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
