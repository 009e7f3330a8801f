"""Auto-interpretation of a trained SAE with jaxinterp's own backends: cache, explain, score, dashboard.

Runs ``jaxinterp interpret`` on a run (default: the demo's, ``jaxinterp demo --config.out=/tmp/demo``) and
prints, from one run:

- the latent cache's tokens/s against the dictionary's encode floor (the jitted encode alone on the same rows,
  already in memory: no store reads, no entry extraction, no writes);
- the explainer's generation tokens/s (KV cache) and the scorer's prompt tokens/s (batched forward passes);
- mean detection and fuzzing accuracy, balanced accuracy and AUROC of the latents' own explanations and of
  shuffled ones (the control), whatever they are.

    python bench/interpret.py --run /tmp/demo/run --out /tmp/demo_interpret --n-latents 200
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def encode_floor(run: str, n_tokens: int, batch_rows: int) -> float:
    """Tokens/s of the jitted encode (dense latents) alone over the store's first rows, held in memory."""
    import jax
    import jax.numpy as jnp

    from jaxinterp.export import load_sae
    from jaxinterp.runs import load_trained
    from jaxinterp.sae import dense_latents
    from jaxinterp.store import open_store

    sae = load_sae(run)
    store = open_store(load_trained(run).run_config["train"]["store"])
    rows = np.asarray(store.read(sae.sae.hook_name, 0, min(n_tokens, store.n_tokens)), np.float32)
    encode = jax.jit(lambda x: dense_latents(sae.encode(x), sae.sae.d_sae))
    batches = [jnp.asarray(rows[i:i + batch_rows]) for i in range(0, len(rows) - batch_rows + 1, batch_rows)]
    encode(batches[0]).block_until_ready()  # compile
    start = time.perf_counter()
    for batch in batches:
        encode(batch).block_until_ready()
    return len(batches) * batch_rows / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="/tmp/demo/run")
    parser.add_argument("--out", default="/tmp/demo_interpret")
    parser.add_argument("--n-latents", type=int, default=200)
    parser.add_argument("--n-examples-test", type=int, default=10)
    parser.add_argument("--n-non-activating", type=int, default=10)
    parser.add_argument("--extra", default="", help="more --config.field=value overrides, space-separated")
    args = parser.parse_args()
    command = [sys.executable, "-m", "jaxinterp.cli", "interpret", "--config", "configs/interpret.py",
               f"--config.run={args.run}", f"--config.out={args.out}", f"--config.n_latents={args.n_latents}",
               f"--config.n_examples_test={args.n_examples_test}",
               f"--config.n_non_activating={args.n_non_activating}", *args.extra.split()]
    print("$", " ".join(command[2:]), flush=True)
    began = time.perf_counter()
    printed = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - began
    result = json.loads(printed[printed.index("{"):])
    cache, score = result["cache"], result["score"]
    floor = encode_floor(args.run, cache["n_tokens"], 32 * 256)
    print(f"\nwall {wall:.0f} s; {result['latents']} latents of {result['eligible_latents']} with enough examples\n")
    print("| stage | tokens/s | ÷ floor |\n|---|---:|---:|")
    if "tokens_per_s" in cache:
        print(f"| latent cache ({cache['n_tokens']:,} tokens) | {cache['tokens_per_s']:,.0f} | "
              f"{floor / cache['tokens_per_s']:.2f} |")
    print(f"| encode floor | {floor:,.0f} | 1 |")
    if "generation_tokens_per_s" in result:
        print(f"| explainer generation ({result['generated_tokens']:,} new tokens) | "
              f"{result['generation_tokens_per_s']:,.1f} | |")
    print(f"| scorer prompts ({score['scored_prompt_tokens']:,} tokens) | {score['score_tokens_per_s']:,.0f} | |")
    print()
    print(Path(args.out, "summary.md").read_text())


if __name__ == "__main__":
    main()
