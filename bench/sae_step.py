"""TopK SAE training-step speed: jaxinterp vs EleutherAI sparsify vs SAELens vs the floor.

    python bench/sae_step.py [--d-in 576 --n-latents 9216 --k 32 --batch 4096 --steps 5]
    python bench/sae_step.py --preset gpu      # d 2304, 65,536 latents, k 64, batch 8192, bf16 compute
    python bench/sae_step.py --compute-dtype bfloat16   # the CPU shape with bf16 compute (AMX where present)

All rows train on the same float32 batch (Gaussian, or ``--store/--hook`` activations) in one run:
  floor                  one jitted ``top_k(x @ W_enc)``: the encoder matmul and selection alone, in
                         the compute dtype
  jaxinterp topk         our train step (sparse custom-VJP kernels, AuxK, Adam, decoder projection
                         and renormalisation, latent counters); ``compute_dtype`` as given, with
                         float32 master weights and optimizer state
  jaxinterp unchunked    (CPU) the same step with each sparse gather and scatter-add over all tokens at
                         once, and the encoder matmul + top-k unchunked: what the token chunks save
  jaxinterp dense VJP    the same step with plain autodiff through top_k and a row gather: the
                         alternative the sparse kernels were chosen over, by this measurement
  sparsify / SAELens     each library's own training step (bench/peers.py), when installed
                         (``pip install -e ".[bench]"``), on CUDA when torch sees a GPU, each with
                         its own defaults there (sparsify: bf16 autocast + TF32; SAELens: fp32);
                         with bf16 compute on CPU also sparsify in CPU bf16 autocast, like for like
  sweep                  3 TopK SAEs (k = k/2, k, 2k) trained in one step vs 3 separate steps
Below the table: the device's measured matmul rate in the compute dtype (a square matmul) and
the fraction of it that the encoder matmul ``x @ W_enc`` reaches at the step's shape.
Ratios are against rows of this same run. Results also go to bench/results/sae_step.json.
Goals (issue 6): jaxinterp ≥ 1.5× sparsify's tokens/s; step ≤ 1.6× the floor.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

PRESETS = {
    "cpu": {"d_in": 576, "n_latents": 9216, "k": 32, "batch": 4096, "compute_dtype": "float32"},
    "gpu": {"d_in": 2304, "n_latents": 65536, "k": 64, "batch": 8192, "compute_dtype": "bfloat16"},
}


def seconds_per_call(fn, *args, steps: int, warmup: int = 2) -> float:
    """Median seconds of ``fn(*args)`` (blocked on) over ``steps`` calls after ``warmup``.

    The median, as for the peers (bench/peers.py): on a shared 2-core VM one slow call moved a
    mean of 5 steps by up to 40%.
    """
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    seconds = []
    for _ in range(steps):
        began = time.perf_counter()
        jax.block_until_ready(fn(*args))
        seconds.append(time.perf_counter() - began)
    return float(np.median(seconds))


@contextmanager
def one_pass_kernels():
    """jaxinterp's sparse kernels without their CPU token chunks: one gather/scatter over all tokens."""
    from jaxinterp.sae import sparse

    saved = sparse._CHUNK_BYTES, sparse._ENCODER_CHUNK_BYTES, sparse._MIN_ENCODER_CHUNK
    sparse._CHUNK_BYTES = sparse._ENCODER_CHUNK_BYTES = sparse._MIN_ENCODER_CHUNK = 2**62
    try:
        yield
    finally:
        sparse._CHUNK_BYTES, sparse._ENCODER_CHUNK_BYTES, sparse._MIN_ENCODER_CHUNK = saved


def train_step_seconds(x: jax.Array, sae_overrides: dict, sweep: str, steps: int, dense_vjp: bool = False,
                       compute_dtype: str = "float32") -> float:
    """Seconds per jaxinterp train step (state donated, as in training) on batch ``x``."""
    from jaxinterp.schemas import sae_config
    from jaxinterp.train import build_members, init_state, train_step

    sae = sae_config("topk")
    sae.update(sae_overrides)
    cfg = {"hook": "x", "lr": 0.0, "sweep": sweep, "steps": 10_000, "warmup_steps": 10, "decay_fraction": 0.2,
           "grad_clip": 1.0, "sae": sae}
    members = build_members(cfg)
    if dense_vjp:
        members = [m._replace(architecture=m.architecture._replace(loss=dense_vjp_topk_loss(sae["k"])))
                   for m in members]
    state = jax.jit(partial(init_state, members=members))(jax.random.key(0), {"x": x[:256]})
    step = jax.jit(partial(train_step, members=members, dead_tokens=10**9, compute_dtype=compute_dtype),
                   donate_argnums=0)
    holder = [state]

    def run():
        holder[0], metrics = step(holder[0], {"x": x})
        return metrics

    return seconds_per_call(run, steps=steps)


def dense_vjp_topk_loss(k: int):
    """TopK FVU loss with JAX's own autodiff through ``top_k`` and the row gather (no custom VJP)."""
    from jaxinterp.sae.base import LossOutput, total_variance
    from jaxinterp.sae.sparse import SparseLatents

    def loss(params, arch_state, x, y, ctx):  # an SAE: y is x
        pre = jnp.dot(x - params["b_dec"], params["W_enc"], preferred_element_type=jnp.float32) + params["b_enc"]
        values, indices = jax.lax.top_k(pre, k)
        values = jax.nn.relu(values)
        x_hat = jnp.einsum("tk,tkd->td", values, jnp.take(params["W_dec"], indices, axis=0)) + params["b_dec"]
        fvu = jnp.sum(jnp.square(y - x_hat)) / total_variance(y)
        return fvu, LossOutput(SparseLatents(values, indices), {"fvu": fvu}, arch_state, x_hat)

    return loss


def matmul_flops_per_second(m: int, k: int, n: int, dtype: str, steps: int) -> float:
    """Measured rate (FLOP/s) of one jitted ``[m, k] @ [k, n]`` matmul of ``dtype`` inputs, float32 out."""
    a = jax.random.normal(jax.random.key(2), (m, k), dtype)
    b = jax.random.normal(jax.random.key(3), (k, n), dtype)
    matmul = jax.jit(partial(jnp.dot, preferred_element_type=jnp.float32))
    return 2 * m * k * n / seconds_per_call(matmul, a, b, steps=steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--d-in", type=int)
    parser.add_argument("--n-latents", type=int)
    parser.add_argument("--k", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--compute-dtype", choices=["float32", "bfloat16"])
    parser.add_argument("--square", type=int, help="side of the square matmul that measures the device's rate "
                                                    "(default 8192 on GPU/TPU, 2048 on CPU)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--store", help="use activations from this store instead of Gaussian data")
    parser.add_argument("--hook", default="blocks.12.hook_resid_post")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--core", action="store_true", help="floor and jaxinterp topk only (scaling curves)")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "sae_step.json"))
    args = parser.parse_args()
    shape = {**PRESETS[args.preset], **{k: v for k, v in {"d_in": args.d_in, "n_latents": args.n_latents,
                                                          "k": args.k, "batch": args.batch,
                                                          "compute_dtype": args.compute_dtype}.items() if v}}
    d_in, n_latents, k, batch = shape["d_in"], shape["n_latents"], shape["k"], shape["batch"]
    dtype = shape["compute_dtype"]
    if args.store:
        from jaxinterp.store import open_store

        x_np = np.asarray(open_store(args.store).read(args.hook, 0, batch), np.float32)
        d_in = x_np.shape[1]
    else:
        x_np = np.random.default_rng(0).normal(size=(batch, d_in)).astype(np.float32)
    x = jnp.asarray(x_np)
    sae = {"n_latents": n_latents, "k": k}

    W_enc = (jax.random.normal(jax.random.key(1), (d_in, n_latents)) / np.sqrt(d_in)).astype(dtype)
    x_c = x.astype(dtype)
    # Pre-activations in float32 (as the step keeps them): XLA:CPU's bf16 top_k is ~20x slower.
    floor = jax.jit(lambda x, W: jax.lax.top_k(jnp.dot(x, W, preferred_element_type=jnp.float32), k))
    rows = {"floor: top_k(x @ W_enc)": seconds_per_call(floor, x_c, W_enc, steps=args.steps)}
    rows["jaxinterp topk"] = train_step_seconds(x, sae, "", args.steps, compute_dtype=dtype)
    if not args.core and jax.default_backend() == "cpu":
        with one_pass_kernels():
            rows["jaxinterp topk, unchunked kernels"] = train_step_seconds(x, sae, "", args.steps, compute_dtype=dtype)
    if not args.core:
        rows["jaxinterp topk, dense VJP"] = train_step_seconds(x, sae, "", args.steps, dense_vjp=True,
                                                               compute_dtype=dtype)
    if not (args.skip_peers or args.core):
        import sys

        sys.path.insert(0, str(Path(__file__).parent))
        from peers import saelens_step_seconds, sparsify_step_seconds

        peers = [("sparsify (signum, its default)", partial(sparsify_step_seconds, optimizer="signum")),
                 ("sparsify (adam)", partial(sparsify_step_seconds, optimizer="adam")),
                 ("SAELens", saelens_step_seconds)]
        if dtype == "bfloat16" and jax.default_backend() == "cpu":  # like for like with our bf16 compute
            peers.insert(1, ("sparsify (signum), bf16 autocast", partial(sparsify_step_seconds, cpu_bf16=True)))
        for name, fn in peers:
            seconds = fn(x_np, n_latents, k, steps=args.steps)
            if seconds is None:
                print(f"{name}: not installed (pip install -e '.[bench]')")
            else:
                rows[name] = seconds
    sweep_one = sweep_three = float("nan")
    if not args.core:
        sweep = f"half: k={max(k // 2, 1)}; base: k={k}; double: k={2 * k}"
        sweep_one = train_step_seconds(x, sae, sweep, args.steps, compute_dtype=dtype)
        sweep_three = sum(train_step_seconds(x, {**sae, "k": kk}, "", args.steps, compute_dtype=dtype)
                          for kk in (max(k // 2, 1), k, 2 * k))
    square = args.square or (2048 if jax.default_backend() == "cpu" else 8192)
    peak = matmul_flops_per_second(square, square, square, dtype, args.steps)
    encoder = matmul_flops_per_second(batch, d_in, n_latents, dtype, args.steps)

    floor, ours = rows["floor: top_k(x @ W_enc)"], rows["jaxinterp topk"]
    print(f"TopK SAE step, d_in {d_in}, n_latents {n_latents:,}, k {k}, batch {batch:,}, {dtype} compute, "
          f"{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})")
    print(f"{'':34}{'s/step':>9}{'tokens/s':>11}{'÷ floor':>9}{'jaxinterp ×':>13}")
    for name, seconds in rows.items():
        print(f"{name:34}{seconds:9.3f}{batch / seconds:11,.0f}{seconds / floor:9.2f}{seconds / ours:13.2f}")
    if not args.core:
        print(f"sweep of 3 (k/2, k, 2k): one step {sweep_one:.3f} s vs three steps {sweep_three:.3f} s "
              f"= {sweep_three / sweep_one:.2f}x")
    print(f"{dtype} matmul rate ({square}³): {peak / 1e12:.3f} TFLOP/s; encoder x @ W_enc at the step's shape "
          f"{encoder / 1e12:.3f} TFLOP/s = {encoder / peak:.2f} of it")
    results = {"shape": {"d_in": d_in, "n_latents": n_latents, "k": k, "batch": batch, "compute_dtype": dtype},
               "matmul_flops_per_second": {"square": square, "peak": peak, "encoder": encoder,
                                           "encoder_fraction": encoder / peak},
               "device": f"{jax.devices()[0].device_kind} x{jax.device_count()}",
               "seconds_per_step": rows, "sweep": {"one_step": sweep_one, "three_steps": sweep_three}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
