"""Real SmolLM2-135M: a cross-layer transcoder over layers 0..2 (BatchTopK, blocks.ℓ.mlp.hook_in → blocks.ℓ.hook_mlp_out)
trained, evaluated with every MLP output replaced at once, checked against a transformers forward whose hooks on
``layers[0..2].mlp`` replace each output by the CLT's prediction from that pass's MLP inputs so far, and exported
for circuit-tracer (``partial``: the CLT spans 3 of SmolLM2's 30 layers) and read back.

Cost: one store of 8,192 tokens (the forward stops after layer 2), 30 steps × 256 tokens of a 3 × 256-latent CLT,
CE on 4 held-out contexts of 128 tokens.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.config import load_config
from jaxinterp.eval.run import evaluate_run
from jaxinterp.eval.splice import next_token_loss
from jaxinterp.export import export_run, read_circuit_tracer_clt
from jaxinterp.models import resolve_model
from jaxinterp.runs import load_trained
from jaxinterp.sae import clt
from tests.test_subblock_e2e import heldout_tokens

pytestmark = pytest.mark.real_model

LAYERS = 3
INPUTS = [f"blocks.{layer}.mlp.hook_in" for layer in range(LAYERS)]
TARGETS = [f"blocks.{layer}.hook_mlp_out" for layer in range(LAYERS)]


def clt_reference_logits(hf_model, trained, tokens: np.ndarray) -> np.ndarray:
    """transformers' logits with each ``layers[L].mlp`` output replaced (from position 1) by the CLT's
    ``Σ_{ℓ≤L} a_ℓ W_dec[ℓ→L] + b_dec[L]``, each ``a_ℓ`` encoded from ``layers[ℓ].mlp``'s input in this pass."""
    import torch

    params, activation, k = trained.state.params, trained.config["activation"], trained.config["k"]
    threshold = trained.state.arch_state.get("threshold")
    inputs: dict[int, np.ndarray] = {}

    def replace(layer):
        def hook(module, args, output):
            inputs[layer] = args[0].detach().numpy()
            x = np.stack([inputs[source].reshape(-1, inputs[source].shape[-1]) for source in range(layer + 1)], 1)
            # encode the layers seen so far (a CLT's layer-ℓ latents depend on layer ℓ's input alone)
            sub = {"W_enc": params["W_enc"][: layer + 1], "b_enc": params["b_enc"][: layer + 1]}
            latents, _ = clt.encode(sub, jnp.asarray(x), activation, k, threshold=threshold)
            y = params["b_dec"][layer] + sum(jnp.asarray(latents)[:, source] @ params[clt.decoder_key(source)][
                :, layer - source] for source in range(layer + 1))
            new = output.detach().clone()
            y = np.array(y).reshape(output.shape)
            new[:, 1:] = torch.from_numpy(y[:, 1:])  # BOS keeps its clean activation (excluded from training)
            return new
        return hook

    handles = [hf_model.model.layers[layer].mlp.register_forward_hook(replace(layer)) for layer in range(LAYERS)]
    try:
        with torch.no_grad():
            return hf_model(torch.as_tensor(tokens)).logits.float().numpy()
    finally:
        for handle in handles:
            handle.remove()


def test_smollm2_clt_trains_evaluates_like_transformers_and_exports(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from jaxinterp.extract import extract
    from jaxinterp.train import train

    store, run = str(tmp_path / "store"), str(tmp_path / "run")
    extract(load_config("configs/extract.py", {
        "model": "smollm2", "hooks": ",".join(INPUTS + TARGETS), "data": "pydoc", "out": store, "context_size": 128,
        "max_tokens": 8192, "batch_size": 8}, schemas.EXTRACT, "extract"), progress=False)
    train(load_config("configs/train.py", {
        "store": store, "hook": "blocks.*.mlp.hook_in", "target_hook": "blocks.*.hook_mlp_out", "out": run,
        "steps": 30, "batch_size": 256, "mesh.data": 1, "sae.architecture": "clt", "sae.activation": "batch_topk",
        "sae.n_latents": LAYERS * 256, "sae.k": 16, "holdout_fraction": 0.25, "eval_tokens": 512,
        "checkpoint_every": 30}, schemas.TRAIN, "train"), progress=False)
    got = evaluate_run(load_config("configs/eval.py", {
        "run": run, "eval_tokens": 1024, "ce_contexts": 4, "backend": "jax", "out": str(tmp_path / "eval")},
        schemas.EVAL, "eval"))
    assert len(got["fvu_per_layer"]) == LAYERS and max(got["fvu_per_layer"]) < 1.0
    assert got["ce_loss_clean"] < got["ce_loss_spliced"] < got["ce_loss_zero_ablated"]

    trained = load_trained(run)
    tokens = heldout_tokens(run, store, INPUTS[0])
    hf = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2").directory, dtype=torch.float32).eval()
    want = clt_reference_logits(hf, trained, tokens)
    ce = float(np.mean(np.asarray(next_token_loss(jnp.asarray(want), jnp.asarray(tokens)))))
    assert got["ce_loss_spliced"] == pytest.approx(ce, rel=2e-3)
    print(f"SmolLM2 CLT layers 0-2 (30 steps): FVU {got['fvu']:.4f} per layer {got['fvu_per_layer']}, L0 per layer "
          f"{got['l0_per_layer']}; CE clean {got['ce_loss_clean']:.4f}, CLT {got['ce_loss_spliced']:.4f}, zero "
          f"{got['ce_loss_zero_ablated']:.4f}, recovered {got['ce_loss_recovered']:.4f}; reference CE {ce:.4f}")

    out = export_run(run, "circuit_tracer", str(tmp_path / "ct"), partial=True)
    back = read_circuit_tracer_clt(str(out))
    assert back.config["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert back.config["feature_input_hook"] == "mlp.hook_in" and back.config["feature_output_hook"] == "mlp.hook_out"
    np.testing.assert_array_equal(back.params["W_dec_1"], np.asarray(trained.state.params["W_dec_1"]))
    with pytest.raises(Exception, match="every one of the model's 30 layers"):
        export_run(run, "circuit_tracer", str(tmp_path / "ct_full"))
