"""Extraction throughput on the real SmolLM2-135M (CPU or whatever torch runs on).

    python bench/extract.py [--tokens 8192] [--hook blocks.29.hook_resid_post]

Rows, all over the same packed pydoc contexts:
  bare forward (torch)     the transformer body (``model.model``, no LM head), no hooks: the floor
  forward + hooks (B)      jaxinterp's hooked forward on backend B (stops after the hook's layer), nothing stored
  full extraction (B)      ``jaxinterp.extract.extract`` into a temporary store (forward + hooks + checks + writes)
for B in torch and jax (the flax.nnx model, jitted; its first call compiles and is not timed).
Ratios are ÷ floor from this one run. Results also go to bench/results/extract.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--context-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hook", default="blocks.29.hook_resid_post", help="last layer by default: same work as the floor")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "extract.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from jaxinterp import schemas
    from jaxinterp.config import load_config
    from jaxinterp.extract import extract, plan_extraction
    from jaxinterp.models import load_source_model

    with tempfile.TemporaryDirectory() as tmp:
        config = lambda backend: load_config(
            "configs/extract.py", {"hooks": args.hook, "max_tokens": args.tokens, "out": f"{tmp}/{backend}",
                                   "context_size": args.context_size, "batch_size": args.batch_size, "backend": backend},
            schemas.EXTRACT, "extract")
        hooks, packed, _ = plan_extraction(config("torch"))
        model = load_source_model("smollm2", backend="torch")
        jax_model = load_source_model("smollm2", backend="jax")
        batches = [packed.tokens[i: i + args.batch_size] for i in range(0, len(packed.tokens), args.batch_size)]
        n_tokens = int(packed.tokens.size)

        def bare(batch):
            with torch.inference_mode():
                model.model.model(input_ids=torch.as_tensor(batch, dtype=torch.long), use_cache=False)

        def timed(run) -> float:
            run(batches[0])  # warm-up
            began = time.perf_counter()
            for batch in batches:
                run(batch)
            return n_tokens / (time.perf_counter() - began)

        rates = {"bare forward (torch)": timed(bare),
                 "forward + hooks (torch)": timed(lambda b: model.run(b, hooks)),
                 "full extraction (torch)": extract(config("torch"), progress=False, model=model).tokens_per_s,
                 "forward + hooks (jax)": timed(lambda b: jax_model.run(b, hooks)),
                 "full extraction (jax)": extract(config("jax"), progress=False, model=jax_model).tokens_per_s}

    floor = rates["bare forward (torch)"]
    print(f"SmolLM2-135M, {n_tokens} tokens, contexts of {args.context_size}, batch {args.batch_size}, hook {args.hook}, "
          f"torch {torch.__version__} on {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)")
    print(f"{'':26}{'tokens/s':>10}{'÷ floor':>10}")
    for name, rate in rates.items():
        print(f"{name:26}{rate:10.0f}{rate / floor:10.3f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"tokens": n_tokens, "hook": args.hook, "batch_size": args.batch_size,
                                           "context_size": args.context_size, "tokens_per_s": rates,
                                           "ratio_to_floor": {k: v / floor for k, v in rates.items()}}, indent=2))


if __name__ == "__main__":
    main()
