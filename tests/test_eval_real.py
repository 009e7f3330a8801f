"""`jaxinterp eval` on a TopK SAE trained on real SmolLM2-135M activations: the CE-loss-recovered
splice (JAX backend) against an independent transformers forward with a torch hook that substitutes
the SAE reconstruction computed in numpy from the SAELens export."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxinterp import schemas
from jaxinterp.buffer import split_chunks
from jaxinterp.config import load_config
from jaxinterp.eval.contexts import heldout_context_ids, read_contexts
from jaxinterp.eval.run import evaluate_run
from jaxinterp.export import export_run
from jaxinterp.models import resolve_model
from jaxinterp.store import open_store
from tests.conftest import SMOLLM2_HOOK

pytestmark = pytest.mark.real_model
CE_CONTEXTS = 8


def _numpy_topk_reconstruction(weights, k, x):
    pre = (x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    kth = np.sort(pre, axis=-1)[:, -k][:, None]
    acts = np.where(pre >= kth, np.maximum(pre, 0), 0)
    return acts @ weights["W_dec"] + weights["b_dec"]


def _torch_ce(model, tokens, replace=None):
    """Mean next-token CE and the logits, with layer 6's output replaced by ``replace(x)`` from position 1 on."""
    import torch

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = hidden.clone()
        new[:, 1:] = torch.from_numpy(replace(hidden[:, 1:].numpy().reshape(-1, hidden.shape[-1]))
                                      .reshape(hidden[:, 1:].shape).astype(np.float32))
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = model.model.layers[6].register_forward_hook(hook) if replace else None
    try:
        with torch.inference_mode():
            logits = model(input_ids=torch.as_tensor(tokens, dtype=torch.long)).logits.float()
    finally:
        if handle:
            handle.remove()
    log_probs = torch.log_softmax(logits[:, :-1], -1)
    ce = -log_probs.gather(-1, torch.as_tensor(tokens[:, 1:, None], dtype=torch.long)).mean()
    return float(ce), log_probs


def test_ce_loss_recovered_matches_an_independent_torch_splice(smollm2_sweep, smollm2_store, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    run, _ = smollm2_sweep
    cfg = load_config("configs/eval.py", {"run": run, "sae": "topk", "backend": "jax", "contexts": 32,
                                          "ce_contexts": CE_CONTEXTS, "eval_tokens": 4096, "n_latents": 4,
                                          "out": str(tmp_path / "eval")}, schemas.EVAL, "eval")
    result = evaluate_run(cfg)
    print({k: round(v, 4) for k, v in result.items() if isinstance(v, float)})

    # the same held-out contexts, the SAE from its SAELens export, the model from transformers
    train_cfg = json.loads(Path(run, "cfg.json").read_text())["train"]
    store = open_store(smollm2_store)
    split = split_chunks(-(-store.n_tokens // store.layout.rows_per_chunk), train_cfg["holdout_fraction"], train_cfg["seed"])
    tokens = read_contexts(store, heldout_context_ids(store, split.holdout)[:CE_CONTEXTS], [SMOLLM2_HOOK]).tokens
    exported = export_run(run, "saelens", str(tmp_path / "saelens"), sae="topk")
    weights, k = load_file(str(exported / "sae_weights.safetensors")), json.loads((exported / "cfg.json").read_text())["k"]
    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2").directory, dtype=torch.float32).eval()
    ce_clean, clean = _torch_ce(model, tokens)
    ce_sae, spliced = _torch_ce(model, tokens, lambda x: _numpy_topk_reconstruction(weights, k, x))
    ce_zero, _ = _torch_ce(model, tokens, np.zeros_like)
    recovered = (ce_zero - ce_sae) / (ce_zero - ce_clean)
    kl = float((clean.exp() * (clean - spliced)).sum(-1).mean())

    assert result["ce_loss_clean"] == pytest.approx(ce_clean, rel=1e-4)
    assert result["ce_loss_spliced"] == pytest.approx(ce_sae, rel=1e-3)
    assert result["ce_loss_zero_ablated"] == pytest.approx(ce_zero, rel=1e-4)
    assert result["ce_loss_recovered"] == pytest.approx(recovered, abs=2e-3)
    assert result["kl_spliced"] == pytest.approx(kl, rel=2e-2, abs=2e-3)
    # a trained SAE on a real model: most of the loss is recovered, zero-ablation is catastrophic
    assert ce_zero > ce_clean + 1.0 and result["ce_loss_recovered"] > 0.7
