"""Real SmolLM2-135M: a transcoder set for layers 0..2 (BatchTopK, blocks.L.mlp.hook_in → blocks.L.hook_mlp_out)
spliced in at once by ``jaxinterp eval --config.transcoder_set``, checked against a transformers forward whose
hooks on ``layers[0..2].mlp`` replace each output by its transcoder's prediction from that pass's input.

Cost: one store of 8,192 tokens (the forward stops after layer 2), one sweep of 3 × 30 steps × 256 tokens,
256 latents, CE on 4 held-out contexts of 128 tokens.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.config import load_config
from jaxinterp.eval.run import evaluate_run
from jaxinterp.eval.splice import next_token_loss
from jaxinterp.eval.transcoder_set import load_transcoder_set
from jaxinterp.models import resolve_model
from tests.test_subblock_e2e import heldout_tokens
from tests.test_transcoder_set_eval import reference_logits

pytestmark = pytest.mark.real_model

LAYERS = (0, 1, 2)


def hooks(layer: int) -> tuple[str, str]:
    return f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.hook_mlp_out"


def test_smollm2_transcoder_set_eval_matches_transformers(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from jaxinterp.extract import extract
    from jaxinterp.train import train

    store, run = str(tmp_path / "store"), str(tmp_path / "run")
    extract(load_config("configs/extract.py", {
        "model": "smollm2", "hooks": ",".join(h for layer in LAYERS for h in hooks(layer)), "data": "pydoc",
        "out": store, "context_size": 128, "max_tokens": 8192, "batch_size": 8}, schemas.EXTRACT, "extract"),
        progress=False)
    sweep = "; ".join(f"l{layer}: hook={hooks(layer)[0]}, target_hook={hooks(layer)[1]}" for layer in LAYERS)
    train(load_config("configs/train.py", {
        "store": store, "hook": hooks(0)[0], "target_hook": hooks(0)[1], "out": run, "steps": 30, "batch_size": 256,
        "mesh.data": 1, "sae.architecture": "batch_topk", "sae.n_latents": 256, "sae.k": 16, "normalize": True,
        "norm_tokens": 2048, "holdout_fraction": 0.25, "eval_tokens": 512, "checkpoint_every": 30, "sweep": sweep},
        schemas.TRAIN, "train"), progress=False)
    result = evaluate_run(load_config("configs/eval.py", {
        "run": run, "sae": "l2", "eval_tokens": 512, "contexts": 8, "ce_contexts": 4, "n_latents": 1,
        "examples_per_latent": 2, "backend": "jax", "transcoder_set": run, "out": str(tmp_path / "eval")},
        schemas.EVAL, "eval"))
    got = result["transcoder_set"]
    assert [m["sae"] for m in got["members"]] == ["l0", "l1", "l2"]

    tokens = heldout_tokens(run, store, hooks(2)[0])
    hf = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2").directory, dtype=torch.float32).eval()
    members = load_transcoder_set(run, "", "", "", True)
    want = reference_logits(hf, members, tokens, sequential=True)
    ce = float(np.mean(np.asarray(next_token_loss(jnp.asarray(want), jnp.asarray(tokens)))))
    assert got["ce_loss_spliced"] == pytest.approx(ce, rel=2e-3)
    with torch.no_grad():
        clean = hf(torch.as_tensor(tokens)).logits.float().numpy()
    clean_ce = float(np.mean(np.asarray(next_token_loss(jnp.asarray(clean), jnp.asarray(tokens)))))
    assert got["ce_loss_clean"] == pytest.approx(clean_ce, rel=2e-3)
    # three replaced MLPs cost more than the last one alone, and less than zeroing all three
    assert got["kl_spliced"] > result["kl_spliced"] > 0
    assert got["ce_loss_spliced"] < got["ce_loss_zero_ablated"]
    print(f"SmolLM2 transcoder set layers 0-2 (30 steps): CE clean {got['ce_loss_clean']:.4f}, set "
          f"{got['ce_loss_spliced']:.4f}, zero {got['ce_loss_zero_ablated']:.4f}, recovered "
          f"{got['ce_loss_recovered']:.4f}, KL {got['kl_spliced']:.4f}; layer 2 alone: recovered "
          f"{result['ce_loss_recovered']:.4f}, KL {result['kl_spliced']:.4f}; reference CE {ce:.4f}")
