"""Real SmolLM2-135M transcoders blocks.6.mlp.hook_in → blocks.6.hook_mlp_out: ``jaxinterp eval`` (target
FVU, L0, dead fraction, CE-loss recovered and KL with the prediction replacing the MLP's output) on both
backends, checked against an independent transformers forward whose torch hook on ``layers[6].mlp``
replaces its output by the transcoder (numpy, from the run's params and scales) applied to its input;
and the exports, each loaded by the peer's own loader: sparsify (TopK, skip on and off, hookpoint
``layers.6.mlp``), SAELens (ReLU, ReLU skip, JumpReLU, JumpReLU skip transcoders); TopK to SAELens and any to npz refused.

Cost: one store of 8,192 tokens (the forward stops after layer 6), one sweep of 60 steps × 256 tokens,
1024 latents, CE on 4 held-out contexts of 128 tokens per backend.
"""

import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.config import ConfigError, load_config
from jaxinterp.eval.run import evaluate_run
from jaxinterp.export import export_run, loaded_from_trained
from jaxinterp.models import resolve_model
from jaxinterp.runs import load_trained
from jaxinterp.sae import dense_latents
from jaxinterp.sae.base import predict
from jaxinterp.store import open_store
from jaxinterp.train import train
from tests.test_subblock_e2e import CE_CONTEXTS, heldout_tokens

pytestmark = pytest.mark.real_model

LAYER = 6
IN, OUT = f"blocks.{LAYER}.mlp.hook_in", f"blocks.{LAYER}.hook_mlp_out"
K = 16
# sweep member -> overrides
MEMBERS = {"tc": "", "skip": "skip=true", "relu": "architecture=relu, l1_coefficient=2",
           "relu_skip": "architecture=relu, l1_coefficient=2, skip=true",
           "jumprelu": "architecture=jumprelu, l0_coefficient=0.01",
           "jumprelu_skip": "architecture=jumprelu, l0_coefficient=0.01, skip=true"}


@pytest.fixture(scope="module")
def tc_run(tmp_path_factory) -> dict:
    """The store (both hooks) and a run of the :data:`MEMBERS` transcoders, input and target normalised."""
    from jaxinterp.extract import extract

    root = tmp_path_factory.mktemp("tc_real")
    store, run = str(root / "store"), str(root / "run")
    extract(load_config("configs/extract.py", {"model": "smollm2", "hooks": f"{IN},{OUT}", "data": "pydoc",
                                               "out": store, "context_size": 128, "max_tokens": 8192, "batch_size": 8},
                        schemas.EXTRACT, "extract"), progress=False)
    summary = train(load_config("configs/train.py", {
        "store": store, "hook": IN, "target_hook": OUT, "out": run, "steps": 60, "batch_size": 256, "mesh.data": 1,
        "sae.n_latents": 1024, "sae.k": K, "normalize": True, "norm_tokens": 2048, "holdout_fraction": 0.25,
        "eval_tokens": 1024, "checkpoint_every": 60,
        "sweep": "; ".join(f"{name}: {overrides}" for name, overrides in MEMBERS.items())},
        schemas.TRAIN, "train"), progress=False)
    return {"store": store, "run": run, "root": root, "summary": summary}


@pytest.fixture(scope="module")
def hf_model():
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resolve_model("smollm2").directory, dtype=torch.float32).eval()


def numpy_transcoder(trained):
    """The TopK transcoder on raw rows, from its trained params and the buffer's input/target scales."""
    p = {name: np.asarray(value, np.float64) for name, value in trained.state.params.items()}
    s_in, s_out = trained.input_scale, trained.target_scale

    def apply(x):
        x = s_in * np.asarray(x, np.float64)
        pre = x @ p["W_enc"] + p["b_enc"]  # a transcoder's encoder reads x itself
        kth = np.sort(pre, axis=-1)[:, -K][:, None]
        y = np.where(pre >= kth, np.maximum(pre, 0), 0) @ p["W_dec"] + p["b_dec"]
        if "W_skip" in p:
            y = y + x @ p["W_skip"]
        return y / s_out

    return apply


def torch_losses(model, tokens, replace=None):
    """(mean next-token CE, log-probs) with ``layers[LAYER].mlp``'s output replaced, from position 1 on, by
    ``replace`` of its input rows (BOS kept, as jaxinterp's splice keeps it when BOS was excluded)."""
    import torch

    def hook(module, args, output):
        x = args[0]
        new = output.clone()
        rows = x[:, 1:].reshape(-1, x.shape[-1]).numpy()
        new[:, 1:] = torch.from_numpy(np.asarray(replace(rows), np.float32).reshape(output[:, 1:].shape))
        return new

    handle = model.model.layers[LAYER].mlp.register_forward_hook(hook) if replace else None
    try:
        with torch.inference_mode():
            logits = model(input_ids=torch.as_tensor(tokens, dtype=torch.long), use_cache=False).logits.float()
    finally:
        if handle:
            handle.remove()
    log_probs = torch.log_softmax(logits[:, :-1].double(), -1)
    ce = -log_probs.gather(-1, torch.as_tensor(tokens[:, 1:, None], dtype=torch.long)).mean()
    return float(ce), log_probs


def evaluate(tc_run, backend):
    return evaluate_run(load_config("configs/eval.py", {
        "run": tc_run["run"], "sae": "tc", "backend": backend, "contexts": 8, "ce_contexts": CE_CONTEXTS,
        "eval_tokens": 1024, "n_latents": 2, "examples_per_latent": 2, "out": str(tc_run["root"] / f"eval_{backend}")},
        schemas.EVAL, "eval"))


def test_eval_splices_the_prediction_for_the_mlp_output_on_both_backends(tc_run, hf_model):
    import torch

    jax_result, torch_result = evaluate(tc_run, "jax"), evaluate(tc_run, "torch")
    print({key: round(jax_result[key], 5) for key in ("fvu", "l0", "holdout_dead_fraction", "ce_loss_clean",
                                                       "ce_loss_spliced", "ce_loss_zero_ablated", "ce_loss_recovered",
                                                       "kl_spliced")},
          "torch:", round(torch_result["ce_loss_spliced"], 5))
    assert jax_result["hook_name"] == IN and jax_result["target_hook"] == OUT and torch_result["backend"] == "torch"
    # The metrics are of the target: the eval's holdout FVU is the training summary's.
    assert jax_result["fvu"] == pytest.approx(tc_run["summary"]["eval"]["tc"]["fvu"], rel=0.05)
    assert 0 < jax_result["l0"] <= K and 0 <= jax_result["dead_fraction"] <= 1
    recovered = jax_result["ce_loss_recovered"]
    assert np.isfinite(recovered) and 0 < recovered < 1.2
    assert jax_result["ce_loss_clean"] < jax_result["ce_loss_spliced"] < jax_result["ce_loss_zero_ablated"]
    for key in ("ce_loss_clean", "ce_loss_spliced", "ce_loss_zero_ablated", "kl_spliced", "kl_zero_ablated"):
        assert torch_result[key] == pytest.approx(jax_result[key], abs=1e-4, rel=1e-4), key

    # Independent: transformers with a torch hook on the MLP module, the transcoder in numpy.
    tokens = heldout_tokens(tc_run["run"], tc_run["store"], IN)
    clean, clean_log_probs = torch_losses(hf_model, tokens)
    spliced, log_probs = torch_losses(hf_model, tokens, numpy_transcoder(load_trained(tc_run["run"], "tc")))
    zero, _ = torch_losses(hf_model, tokens, lambda rows: np.zeros_like(rows))
    kl = float(torch.sum(clean_log_probs.exp() * (clean_log_probs - log_probs), -1).mean())
    assert clean == pytest.approx(jax_result["ce_loss_clean"], abs=1e-4)
    assert spliced == pytest.approx(jax_result["ce_loss_spliced"], abs=1e-4)
    assert zero == pytest.approx(jax_result["ce_loss_zero_ablated"], abs=1e-4)
    assert kl == pytest.approx(jax_result["kl_spliced"], abs=1e-4)


def ours(run, name, rows):
    """(dense latents, prediction) of SAE ``name`` on raw ``rows``, as jaxinterp loads the run (scales folded)."""
    loaded = loaded_from_trained(load_trained(run, name))
    assert loaded.sae.transcode and loaded.sae.target_hook == OUT
    latents = np.asarray(dense_latents(loaded.encode(rows), loaded.sae.d_sae))
    return latents, np.asarray(predict(loaded.architecture, loaded.params, loaded.arch_state, rows))


def input_rows(tc_run, n=256):
    return np.asarray(open_store(tc_run["store"]).read(IN, 1024, 1024 + n), np.float32)


@pytest.mark.parametrize("name", ["tc", "skip"])
def test_sparsify_loads_the_transcoder_and_predicts_as_ours(tc_run, tmp_path, name):
    torch = pytest.importorskip("torch")
    sparsify = pytest.importorskip("sparsify")
    directory = export_run(tc_run["run"], "sparsify", str(tmp_path / "sparsify"), sae=name)
    assert directory.name == "layers.6.mlp"  # sparsify's transcoder hooks the MLP module's input and output
    coder = sparsify.SparseCoder.load_from_disk(directory)
    assert coder.cfg.transcode and coder.cfg.skip_connection == (name == "skip") and coder.cfg.k == K
    assert (coder.W_skip is not None) == (name == "skip")
    rows = input_rows(tc_run)
    latents, y_hat = ours(tc_run["run"], name, rows)
    with torch.inference_mode():
        x = torch.from_numpy(rows)
        theirs = coder(x).sae_out.numpy()
        acts, indices, _ = coder.encode(x)
    scale = np.abs(y_hat).max()
    np.testing.assert_allclose(theirs, y_hat, atol=2e-5 * scale, rtol=1e-4)
    dense = np.zeros_like(latents)
    np.put_along_axis(dense, indices.numpy(), acts.numpy(), axis=1)
    np.testing.assert_allclose(dense, latents, atol=2e-5 * np.abs(latents).max(), rtol=1e-4)


@pytest.mark.parametrize("name, cls", [("relu", "Transcoder"), ("relu_skip", "SkipTranscoder"),
                                       ("jumprelu", "JumpReLUTranscoder"),
                                       ("jumprelu_skip", "JumpReLUSkipTranscoder")])
def test_saelens_loads_the_transcoder_and_codes_as_ours(tc_run, tmp_path, name, cls):
    torch = pytest.importorskip("torch")
    sae_lens = pytest.importorskip("sae_lens")
    out = export_run(tc_run["run"], "saelens", str(tmp_path / name), sae=name)
    sae = sae_lens.SAE.load_from_disk(str(out))
    assert type(sae).__name__ == cls and sae.cfg.d_in == sae.cfg.d_out == 576
    assert sae.cfg.metadata.hook_name == IN and sae.cfg.metadata.hook_name_out == OUT
    rows = input_rows(tc_run)
    latents, y_hat = ours(tc_run["run"], name, rows)
    with torch.inference_mode():
        x = torch.from_numpy(rows)
        feats = sae.encode(x)
        theirs = sae(x).numpy()
    assert (latents > 0).sum() > 0
    np.testing.assert_allclose(feats.numpy(), latents, atol=2e-5 * np.abs(latents).max(), rtol=1e-4)
    np.testing.assert_allclose(theirs, y_hat, atol=2e-5 * np.abs(y_hat).max(), rtol=1e-4)


@pytest.mark.parametrize("name, fmt, match", [
    ("tc", "saelens", "'saelens' cannot hold a 'topk' transcoder .* export it as 'sparsify'"),
    ("jumprelu", "npz", "'npz' .* holds no transcoder"),
    ("jumprelu", "sparsify", "'sparsify' cannot hold a 'jumprelu' transcoder"),
])
def test_transcoder_export_refusals(tc_run, tmp_path, name, fmt, match):
    with pytest.raises(ConfigError, match=match) as error:
        export_run(tc_run["run"], fmt, str(tmp_path / "out"), sae=name)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()
