"""A fine-tuned copy of a source model, so that a cross-model crosscoder has a real difference to find.

    python bench/finetune_pair.py --model smollm2 --out models/smollm2_rot13 [--steps 300 --batch 8 --context 128]
    jaxinterp extract --config configs/extract.py --config.model=smollm2,models/smollm2_rot13 \
        --config.data=models/smollm2_rot13/mix.jsonl --config.hooks=blocks.15.hook_resid_post --config.out=stores/diff

The corpus is the embedded pydoc corpus ROT13-enciphered (letters rotated by 13, everything else kept):
the same documents, structure and length as text SmolLM2 saw, in a cipher it all but never saw, so the
fine-tune must learn new token statistics (and the diff's model-exclusive latents should fire on
ciphered text). Causal-LM loss on packed contexts with jaxinterp's own packing (BOS first, documents
joined by EOS), AdamW, constant lr after a short linear warm-up, float32, torch on CPU or a GPU.
The output is an HF directory (safetensors weights, the base model's own tokenizer files, so the
two-model extraction's tokenizer check passes) plus ``finetune.json`` with the recipe and the
held-out ROT13 loss before and after, and ``mix.jsonl``: every document of the corpus plain and
ROT13-enciphered, the corpus for the pair's store. A last tenth of the documents is held out from training.
An existing ``--out`` is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import codecs
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxinterp.extract.corpus import load_documents  # noqa: E402
from jaxinterp.extract import tokenize_corpus  # noqa: E402
from jaxinterp.models.files import load_tokenizer, resolve_model  # noqa: E402


def rot13(documents: list[str]) -> list[str]:
    """Each document with its ASCII letters rotated by 13 (``codecs``' rot_13: other characters unchanged)."""
    return [codecs.encode(doc, "rot_13") for doc in documents]


def contexts(tokenizer, documents: list[str], context_size: int) -> np.ndarray:
    """``[n, context_size]`` token ids of ``documents`` packed as jaxinterp's extraction packs them."""
    cfg = {"context_size": context_size, "prepend_bos": True, "max_tokens": 0, "data": "rot13"}
    return tokenize_corpus(tokenizer, documents, cfg).tokens


def mean_loss(model, batches) -> float:
    import torch

    with torch.no_grad():
        losses = [float(model(input_ids=b, labels=b).loss) for b in batches]
    return float(np.mean(losses))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="'smollm2', a .gguf file or an HF model directory")
    parser.add_argument("--out", required=True, help="HF directory to write")
    parser.add_argument("--data", default="pydoc", help="corpus to encipher (jaxinterp extract's data field)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8, help="contexts per step")
    parser.add_argument("--context", type=int, default=128, help="tokens per context, BOS included")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-batches", type=int, default=4)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise SystemExit(f"error: {out} exists; pass --overwrite to replace it")

    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(args.seed)
    files = resolve_model(args.model)
    tokenizer = load_tokenizer(files)
    documents = rot13(load_documents(args.data))
    held_out = max(1, len(documents) // 10)
    train_ids = torch.as_tensor(contexts(tokenizer, documents[:-held_out], args.context), dtype=torch.long)
    eval_ids = torch.as_tensor(contexts(tokenizer, documents[-held_out:], args.context), dtype=torch.long)
    eval_batches = [eval_ids[i: i + args.batch] for i in range(0, min(len(eval_ids), args.batch * args.eval_batches),
                                                                   args.batch)]
    model = AutoModelForCausalLM.from_pretrained(files.directory, torch_dtype=torch.float32)
    model.train()
    before = mean_loss(model, eval_batches)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(args.warmup, 1)))
    order = np.random.default_rng(args.seed).permutation(len(train_ids))
    began, losses = time.perf_counter(), []
    for step in range(args.steps):
        rows = order[(np.arange(args.batch) + step * args.batch) % len(order)]
        batch = train_ids[torch.as_tensor(rows)]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if step % 20 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {losses[-1]:.3f} ({time.perf_counter() - began:.0f} s)", flush=True)
    seconds = time.perf_counter() - began
    after = mean_loss(model, eval_batches)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    result = {"base": files.name, "corpus": f"rot13({args.data})", "steps": args.steps, "batch": args.batch,
              "context": args.context, "lr": args.lr, "warmup": args.warmup, "seed": args.seed,
              "train_contexts": len(train_ids), "seconds": round(seconds, 1),
              "held_out_loss_before": round(before, 4), "held_out_loss_after": round(after, 4),
              "train_loss_last20": round(float(np.mean(losses[-20:])), 4)}
    (staging / "finetune.json").write_text(json.dumps(result, indent=2))
    plain = load_documents(args.data)
    with open(staging / "mix.jsonl", "w") as mix:
        for text in (doc for pair in zip(plain, documents) for doc in pair):
            mix.write(json.dumps({"text": text}) + "\n")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)  # whole, or not at all
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
