"""Generation throughput on the real SmolLM2-135M: the JAX KV cache vs transformers' cache vs no cache.

    python bench/generate.py [--batch-sizes 1,16] [--new-tokens 64] [--prompt-tokens 16,48]

Rows, per batch size, all greedy over the same prompts (pydoc texts cut to lengths spread over
``--prompt-tokens``, so a batch is left-padded), no stop token (every row makes ``--new-tokens``):
  jax cache (host loop)    ``generate`` on the JAX backend (its default): a jitted decode step per token from Python
  jax cache (while_loop)   the same cache, prefill + every decode step in one jitted while_loop (decode_loop="device")
  torch cache              ``generate`` on the torch backend: transformers' DynamicCache, one call per token
  jax no cache             ``generate_uncached``: one full forward of every (right-padded) sequence per token
tokens/s counts new tokens (batch x new tokens / seconds, prefill included), after one untimed warm-up
call per row (JAX compiles there; its time is printed). Ratios are ÷ the JAX no-cache row of the same
batch size, from this one run; ``same`` says whether the row's tokens equal the no-cache row's.
Results also go to bench/results/generate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def prompts(tokenizer, count: int, shortest: int, longest: int) -> list[list[int]]:
    """``count`` pydoc texts' token ids, cut to lengths spread evenly from ``shortest`` to ``longest``."""
    from jaxinterp.extract import load_documents

    documents = [doc for doc in load_documents("pydoc") if len(doc) > 8 * longest][:count]
    lengths = [shortest + (longest - shortest) * i // max(count - 1, 1) for i in range(count)]
    return [tokenizer(doc)["input_ids"][:n] for doc, n in zip(documents, lengths)]


def timed(run) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", default="16,48", help="shortest,longest prompt")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "generate.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import jax
    import torch

    from jaxinterp.models import generate, generate_uncached, load_source_model, load_tokenizer, resolve_model

    jax_model, torch_model = load_source_model("smollm2", backend="jax"), load_source_model("smollm2", backend="torch")
    tokenizer = load_tokenizer(resolve_model("smollm2"))
    shortest, longest = (int(n) for n in args.prompt_tokens.split(","))
    new = args.new_tokens
    methods = {
        "jax cache (host loop)": lambda rows, b: generate(jax_model, rows, new, batch_size=b),
        "jax cache (while_loop)": lambda rows, b: generate(jax_model, rows, new, batch_size=b, decode_loop="device"),
        "torch cache": lambda rows, b: generate(torch_model, rows, new, batch_size=b),
        "jax no cache": lambda rows, b: generate_uncached(jax_model, rows, new),
    }
    results = []
    print(f"SmolLM2-135M float32, {new} new tokens per row, prompts of {shortest}-{longest} tokens; "
          f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads) on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    print(f"{'batch':>5}  {'method':<24} {'warm-up s':>9} {'s':>7} {'tokens/s':>9} {'÷ no cache':>10}  same")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        rows = prompts(tokenizer, batch, shortest, longest)
        measured = {}
        for name, method in methods.items():
            warm, _ = timed(lambda: method(rows, batch))
            seconds, out = timed(lambda: method(rows, batch))
            measured[name] = (warm, seconds, out)
        floor = measured["jax no cache"]
        for name, (warm, seconds, out) in measured.items():
            rate = batch * new / seconds
            row = {"batch": batch, "method": name, "warmup_s": warm, "seconds": seconds, "tokens_per_s": rate,
                   "vs_no_cache": floor[1] / seconds, "same_tokens": out == floor[2]}
            results.append(row)
            print(f"{batch:>5}  {name:<24} {warm:>9.1f} {seconds:>7.2f} {rate:>9.1f} {row['vs_no_cache']:>9.1f}x  "
                  f"{row['same_tokens']}")
        jax_rate = batch * new / measured["jax cache (host loop)"][1]
        torch_rate = batch * new / measured["torch cache"][1]
        print(f"{batch:>5}  jax cache (host loop) ÷ torch cache: {jax_rate / torch_rate:.2f}x")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"new_tokens": new, "prompt_tokens": [shortest, longest],
                                           "load_average": os.getloadavg(), "rows": results}, indent=1))


if __name__ == "__main__":
    main()
