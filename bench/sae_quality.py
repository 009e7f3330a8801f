"""TopK SAE quality at equal k, width and tokens: jaxinterp vs EleutherAI sparsify on SmolLM2.

    python bench/sae_quality.py [--tokens 262144 --n-latents 4096 --k 32 --batch 1024]
    python bench/sae_quality.py --compute-dtypes float32,bfloat16   # also a row with bf16 compute

Extracts SmolLM2-135M activations at ``--hook`` from the embedded pydoc corpus (once, into
bench/results/quality_store; or pass ``--store``), draws one shuffled sequence of training batches
and one holdout set from jaxinterp's buffer, trains both SAEs on exactly those batches with each
library's default recipe, and evaluates both on the same holdout with the same FVU definition
(design.md §6: about the holdout mean). sparsify runs its defaults: schedule-free sign-SGD at
lr 5e-3/√(n/2¹⁴), decoder renormalised before each step, evaluated at its averaged weights.
Goal (issue 6): jaxinterp's holdout FVU no worse than sparsify's. Results also go to
bench/results/sae_quality.json.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import jax
import numpy as np

RESULTS = Path(__file__).parent / "results"


def activations(args) -> tuple[list[np.ndarray], np.ndarray]:
    """Training batches and holdout rows, both from jaxinterp's buffer over a SmolLM2 store."""
    from jaxinterp import schemas
    from jaxinterp.buffer import ActivationBuffer
    from jaxinterp.config import load_config
    from jaxinterp.extract import extract
    from jaxinterp.store import open_store

    store_url = args.store or str(RESULTS / "quality_store")
    if not args.store and not (Path(store_url) / "manifest.json").exists():
        fields = {"model": "smollm2", "hooks": args.hook, "data": "pydoc", "out": store_url, "context_size": 256,
                  "max_tokens": int(args.tokens * 1.15), "batch_size": 8}
        extract(load_config("configs/extract.py", fields, schemas.EXTRACT, "extract"))
    buffer = ActivationBuffer(open_store(store_url), [args.hook], args.batch, seed=0, holdout_fraction=0.05,
                              mixing_chunks=64, exclude_bos=True)
    batches = buffer._numpy_batches()
    train = [next(batches)[args.hook] for _ in range(args.tokens // args.batch)]
    return train, buffer.holdout(args.eval_tokens)[args.hook]


def fvu_and_l0(x: np.ndarray, x_hat: np.ndarray, l0: float) -> dict[str, float]:
    fvu = float(np.sum((x - x_hat) ** 2) / np.sum((x - x.mean(0)) ** 2))
    return {"fvu": fvu, "explained_variance": 1 - fvu, "l0": l0}


def train_jaxinterp(batches, holdout, n_latents: int, k: int, lr: float = 0.0,
                    compute_dtype: str = "float32") -> dict[str, float]:
    from jaxinterp.eval.holdout import evaluate_reconstruction
    from jaxinterp.schemas import sae_config
    from jaxinterp.train import build_members, init_state, train_step

    cfg = {"hook": "x", "lr": lr, "sweep": "", "steps": len(batches), "warmup_steps": min(50, len(batches) // 10),
           "decay_fraction": 0.2, "grad_clip": 1.0, "sae": sae_config("topk", n_latents, k)}
    members = build_members(cfg)
    state = init_state(jax.random.key(0), {"x": batches[0]}, members)
    step = jax.jit(partial(train_step, members=members, dead_tokens=len(batches) * len(batches[0]) // 4,
                           compute_dtype=compute_dtype), donate_argnums=0)
    for batch in batches:
        state, _ = step(state, {"x": batch})
    sae = state.saes["sae"]
    result, _ = evaluate_reconstruction(members[0].architecture, sae.params, sae.arch_state, holdout)
    result["dead_fraction"] = float(np.mean(np.asarray(sae.fire_count) == 0))
    return result


def train_sparsify(batches, holdout, n_latents: int, k: int) -> dict[str, float] | None:
    try:
        import torch
        from schedulefree import ScheduleFreeWrapper
        from sparsify import SparseCoder, SparseCoderConfig
        from sparsify.sign_sgd import SignSGD
    except ImportError:
        return None
    torch.manual_seed(0)
    sae = SparseCoder(batches[0].shape[1], SparseCoderConfig(num_latents=n_latents, k=k), "cpu", dtype=torch.float32)
    sae.b_dec.data = torch.from_numpy(batches[0]).mean(0)  # its trainer's first-batch b_dec init
    opt = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": 5e-3 / (n_latents / 2**14) ** 0.5}]),
                              momentum=0.95)
    opt.train()
    fired = torch.zeros(n_latents, dtype=torch.bool)
    for batch in batches:
        x = torch.from_numpy(batch)
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x=x, y=x, dead_mask=None, total_variance=(x - x.mean(0)).pow(2).sum())
        fired[out.latent_indices.flatten()] = True
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
    opt.eval()  # schedule-free: evaluate at the averaged weights
    with torch.no_grad():
        x = torch.from_numpy(holdout)
        out = sae(x=x, y=x, dead_mask=None)
        l0 = float((out.latent_acts > 0).sum(-1).float().mean())
    result = fvu_and_l0(holdout, out.sae_out.numpy(), l0)
    result["tokens"], result["dead_fraction"] = len(holdout), float((~fired).float().mean())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store")
    parser.add_argument("--hook", default="blocks.12.hook_resid_post")
    parser.add_argument("--tokens", type=int, default=262144)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--n-latents", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=0.0, help="jaxinterp's Adam lr; 0 = its default 2e-3/√(n/2¹⁴)")
    parser.add_argument("--compute-dtypes", default="float32",
                        help="comma-separated jaxinterp compute dtypes, one row each (e.g. float32,bfloat16)")
    parser.add_argument("--json", default=str(RESULTS / "sae_quality.json"))
    args = parser.parse_args()

    batches, holdout = activations(args)
    rows = {}
    ours = [(f"jaxinterp topk{'' if dtype == 'float32' else ' ' + dtype}",
             partial(train_jaxinterp, lr=args.lr, compute_dtype=dtype)) for dtype in args.compute_dtypes.split(",")]
    for name, fn in [*ours, ("sparsify topk", train_sparsify)]:
        began = time.perf_counter()
        result = fn(batches, holdout, args.n_latents, args.k)
        if result is None:
            print(f"{name}: not installed (pip install -e '.[bench]')")
            continue
        rows[name] = {**result, "train_seconds": time.perf_counter() - began}
    print(f"SmolLM2-135M {args.hook}, {len(batches) * args.batch:,} training tokens, {len(holdout):,} holdout "
          f"tokens, n_latents {args.n_latents}, k {args.k}, batch {args.batch}")
    print(f"{'':24}{'FVU':>8}{'EV':>8}{'L0':>7}{'dead':>7}{'train s':>9}")
    for name, row in rows.items():
        print(f"{name:24}{row['fvu']:8.4f}{row['explained_variance']:8.4f}{row['l0']:7.1f}{row['dead_fraction']:7.3f}"
              f"{row['train_seconds']:9.1f}")
    if "sparsify topk" in rows:
        for name, _ in ours:
            print(f"FVU {name} ÷ sparsify = {rows[name]['fvu'] / rows['sparsify topk']['fvu']:.3f} (goal ≤ 1)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
