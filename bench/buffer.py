"""Activation-buffer throughput: batches delivered as device arrays vs a raw read vs the trainer.

    python bench/buffer.py [--tokens 262144] [--batch-size 4096]

Writes a float32 store (d=576, SmolLM2's width; synthetic values, the real layout: 2 MiB inner
chunks with crc32c, 64 MiB shards) to a temporary directory, then measures in one run:
  raw read           reading the hook's shard files sequentially with plain Python file reads (the floor)
  buffer → device    one epoch of shuffled batches from ActivationBuffer, as jax.Arrays, blocked on
  trainer consumes   tokens/s of one TopK SAE train step (d_sae 4096, k 32) at the same batch size
Goals (issue 5): buffer ≥ 70% of the raw read rate and ≥ 20× the trainer's consumption.
Results also go to bench/results/buffer.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from functools import partial
from pathlib import Path

import jax
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=262144)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--mixing-chunks", type=int, default=16)
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "buffer.json"))
    args = parser.parse_args()

    from jaxinterp.buffer import ActivationBuffer
    from jaxinterp.mesh import batch_sharding, make_mesh
    from jaxinterp.store import open_store
    from jaxinterp.schemas import sae_config
    from jaxinterp.train import build_members, init_state, train_step
    from tests.stores import write_store

    d, hook = 576, "blocks.12.hook_resid_post"
    with tempfile.TemporaryDirectory() as tmp:
        values = np.random.default_rng(0).normal(size=(args.tokens, d)).astype(np.float32)
        write_store(f"{tmp}/s", {hook: values}, context_size=256, chunk_mib=2.0, shard_mib=64.0)
        del values
        store = open_store(f"{tmp}/s")
        files = sorted(p for p in Path(f"{tmp}/s/{hook}/c").rglob("*") if p.is_file())
        n_bytes = sum(p.stat().st_size for p in files)
        began = time.perf_counter()
        for path in files:
            with open(path, "rb") as handle:
                while handle.read(64 * 2**20):
                    pass
        raw = n_bytes / (time.perf_counter() - began)

        mesh = make_mesh(data=-1, model=1)
        buffer = ActivationBuffer(store, [hook], args.batch_size, seed=0, holdout_fraction=0.0,
                                  mixing_chunks=args.mixing_chunks, exclude_bos=True, sharding=batch_sharding(mesh))
        n_batches = buffer.epoch_rows() // args.batch_size
        batches = buffer.batches()
        began = time.perf_counter()
        for _ in range(n_batches):
            jax.block_until_ready(next(batches)[hook])
        seconds = time.perf_counter() - began
        batches.close()
        buffer_tokens = n_batches * args.batch_size / seconds
        buffer_bytes = n_batches * args.batch_size * d * 4 / seconds

        cfg = {"hook": hook, "lr": 0.0, "sweep": "", "steps": 1000, "warmup_steps": 10, "decay_fraction": 0.2,
               "grad_clip": 1.0, "sae": sae_config("topk", n_latents=4096, k=32)}
        members = build_members(cfg)
        state = init_state(jax.random.key(0), {hook: np.zeros((2, d), np.float32)}, members)
        step = jax.jit(partial(train_step, members=members, dead_tokens=10**7), donate_argnums=0)
        batch = {hook: jax.numpy.asarray(store.read(hook, 0, args.batch_size))}
        state, _ = step(state, batch)
        jax.block_until_ready(state)
        began = time.perf_counter()
        for _ in range(5):
            state, _ = step(state, batch)
        jax.block_until_ready(state)
        trainer = 5 * args.batch_size / (time.perf_counter() - began)

    rows = {
        "raw read": (raw / (d * 4), raw),
        "buffer → device": (buffer_tokens, buffer_bytes),
        "trainer consumes": (trainer, trainer * d * 4),
    }
    print(f"{args.tokens} tokens x {d} float32, batch {args.batch_size}, mixing {args.mixing_chunks} chunks, "
          f"{len(jax.devices())} device(s) ({jax.default_backend()})")
    print(f"{'':18}{'tokens/s':>12}{'GB/s':>8}")
    for name, (tokens, bytes_) in rows.items():
        print(f"{name:18}{tokens:12,.0f}{bytes_ / 1e9:8.2f}")
    print(f"buffer ÷ raw read {buffer_bytes / raw:.2f} (goal ≥ 0.70); buffer ÷ trainer {buffer_tokens / trainer:.1f}x (goal ≥ 20x)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({name: {"tokens_per_s": t, "bytes_per_s": b} for name, (t, b) in rows.items()}, indent=2))


if __name__ == "__main__":
    main()
