"""Extraction throughput on the real SmolLM2-135M (CPU or whatever torch runs on).

    python bench/extract.py [--tokens 8192] [--hook blocks.29.hook_resid_post]

Rows, all over the same packed pydoc contexts:
  bare forward (torch)     the transformer body (``model.model``, no LM head), no hooks: the floor
  forward + hooks (B)      jaxinterp's hooked forward on backend B (stops after the hook's layer), nothing stored
  full extraction (B)      ``jaxinterp.extract.extract`` into a temporary store (forward + hooks + checks + writes)
for B in torch and jax (the flax.nnx model, jitted; its first call compiles and is not timed).
Ratios are ÷ floor from this one run. Results also go to bench/results/extract.json.

    python bench/extract.py --families [llama,gpt2,...] [--family-tokens 4096]

instead times each supported family on a mid-sized random model (hidden 512, 8 layers, MLP 1536,
8 heads, 4 KV heads where the family has GQA, vocab 8192, a 128-key sliding window where the family
has one: Mistral every layer, Qwen2 layers 4-7, Gemma-2/3 their sliding layers; contexts of 256),
built seeded by transformers and saved to a temporary directory, then loaded by
``load_source_model(dir, backend=...)`` for both backends. Both run the same packed batches of
*random* token ids (throughput does not depend on the ids; no tokenizer is needed) through
``model.run(tokens, [last layer's hook_resid_post])`` after one untimed warm-up call (JAX compiles
there). Rows: JAX and torch tokens/s, JAX ÷ torch, and the max relative error between the two
backends' hook outputs (max |jax − torch| / max |torch|) as a sanity column. Results also go to
bench/results/extract_families.json. The default size takes a few minutes for all 8 families on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "gpt_neox", "gpt2")
WINDOW = 128  # shorter than --context-size's default, so the sliding layers mask keys


def family_config(family: str, vocab_size: int = 8192) -> Any:
    """The mid-sized transformers config of ``family`` (module docstring) with random-weight defaults otherwise."""
    import transformers

    common = dict(vocab_size=vocab_size, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                  num_attention_heads=8, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2)
    gqa = dict(common, num_key_value_heads=4)
    if family == "llama":
        return transformers.LlamaConfig(**gqa)
    if family == "mistral":
        return transformers.MistralConfig(sliding_window=WINDOW, **gqa)
    if family == "qwen2":
        return transformers.Qwen2Config(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=4, **gqa)
    if family == "qwen3":
        return transformers.Qwen3Config(head_dim=64, **gqa)
    if family == "gemma2":
        return transformers.Gemma2Config(head_dim=64, query_pre_attn_scalar=64, sliding_window=WINDOW, **gqa)
    if family == "gemma3_text":
        return transformers.Gemma3TextConfig(head_dim=64, query_pre_attn_scalar=64, sliding_window=WINDOW, **gqa)
    if family == "gpt_neox":
        return transformers.GPTNeoXConfig(rotary_pct=0.25, **common)
    if family == "gpt2":
        return transformers.GPT2Config(vocab_size=vocab_size, n_embd=512, n_layer=8, n_head=8, n_inner=1536,
                                       n_positions=1024, bos_token_id=1, eos_token_id=2)
    raise ValueError(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")


def save_random_model(family: str, directory: str, seed: int = 0) -> str:
    """Saves a seeded random-weight ``AutoModelForCausalLM`` of ``family`` (safetensors) to ``directory``."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(family_config(family)).save_pretrained(directory)
    return directory


def time_run(model: Any, batches: list, hooks: list[str]) -> tuple[float, dict]:
    """(tokens/s of ``model.run`` over ``batches`` after one untimed warm-up call, the last batch's outputs)."""
    model.run(batches[0], hooks)
    began = time.perf_counter()
    for batch in batches:
        out = model.run(batch, hooks)
    return sum(b.size for b in batches) / (time.perf_counter() - began), out


def bench_families(families: list[str], n_tokens: int, context_size: int, batch_size: int, path: str) -> None:
    """Per family: JAX- and torch-backend tokens/s of the last layer's hook_resid_post on a random model."""
    import numpy as np
    import torch
    import transformers

    from jaxinterp.models import load_source_model

    transformers.utils.logging.disable_progress_bar()  # the save/load bars would break the table's rows

    n_contexts = max(batch_size, n_tokens // context_size // batch_size * batch_size)
    tokens = np.random.default_rng(0).integers(3, 8192, size=(n_contexts, context_size))
    batches = [tokens[i: i + batch_size] for i in range(0, n_contexts, batch_size)]
    rows = {}
    print(f"random families (hidden 512, 8 layers), {tokens.size} random-id tokens, contexts of {context_size}, "
          f"batch {batch_size}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"{'family':14}{'jax tok/s':>11}{'torch tok/s':>13}{'jax÷torch':>11}{'max rel err':>13}", flush=True)
    for family in families:
        with tempfile.TemporaryDirectory() as tmp:
            directory = save_random_model(family, tmp)
            rates, outputs = {}, {}
            for backend in ("jax", "torch"):
                model = load_source_model(directory, backend=backend)
                hooks = [f"blocks.{model.n_layers - 1}.hook_resid_post"]
                rates[backend], out = time_run(model, batches, hooks)
                outputs[backend] = np.asarray(out[hooks[0]], np.float64)
                del model
        error = float(np.abs(outputs["jax"] - outputs["torch"]).max() / np.abs(outputs["torch"]).max())
        rows[family] = {"jax_tokens_per_s": rates["jax"], "torch_tokens_per_s": rates["torch"],
                        "jax_over_torch": rates["jax"] / rates["torch"], "max_relative_error": error}
        print(f"{family:14}{rates['jax']:11.0f}{rates['torch']:13.0f}{rates['jax'] / rates['torch']:11.2f}"
              f"{error:13.1e}", flush=True)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"tokens": int(tokens.size), "context_size": context_size,
                                      "batch_size": batch_size, "token_ids": "random", "families": rows}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--context-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hook", default="blocks.29.hook_resid_post", help="last layer by default: same work as the floor")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "extract.json"))
    parser.add_argument("--families", nargs="?", const=",".join(FAMILIES), default="",
                        help="time random models of these families (comma-separated; all when bare) instead of SmolLM2")
    parser.add_argument("--family-tokens", type=int, default=4096, help="tokens per backend and family")
    parser.add_argument("--family-batch-size", type=int, default=4)
    parser.add_argument("--families-json", default=str(Path(__file__).parent / "results" / "extract_families.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.families:
        unknown = set(args.families.split(",")) - set(FAMILIES)
        if unknown:
            parser.error(f"--families: unknown {', '.join(sorted(unknown))}; choose from {', '.join(FAMILIES)}")
        bench_families(args.families.split(","), args.family_tokens,
                       args.context_size, args.family_batch_size, args.families_json)
        return
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
        sources, packed, _ = plan_extraction(config("torch"))
        hooks = sources[0].hooks
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
