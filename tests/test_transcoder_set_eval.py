"""A transcoder set spliced in at once (every MLP of a tiny 3-layer Llama replaced in one pass), on both
backends, against an independent transformers forward whose torch hooks on ``layers[L].mlp`` replace each
output by the transcoder applied to that module's input *in this pass* (so downstream of the earlier
replacements); and ``jaxinterp eval``'s ``transcoder_set`` metrics."""

import json

import jax
import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.config import ConfigError, load_config
from jaxinterp.eval.run import evaluate_run
from jaxinterp.eval.splice import next_token_loss
from jaxinterp.eval.transcoder_set import load_transcoder_set, transcoder_set_metrics
from jaxinterp.models import resolve_model
from jaxinterp.models.jax_backend import JaxSourceModel
from jaxinterp.models.torch_backend import TorchSourceModel

LAYERS = (0, 1, 2)


def hooks(layer: int) -> tuple[str, str]:
    return f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.hook_mlp_out"


@pytest.fixture(scope="module")
def set_run(tiny_llama, tmp_path_factory):
    """A store of every layer's MLP input and output, and one sweep run with a BatchTopK transcoder per layer
    (l0..l2) plus a second one at layer 0 (``dup``)."""
    from jaxinterp.extract import extract
    from jaxinterp.train import train

    root = tmp_path_factory.mktemp("tc_set")
    names = ",".join(name for layer in LAYERS for name in hooks(layer))
    extract(load_config("configs/extract.py", {"model": tiny_llama, "hooks": names, "data": "pydoc",
                                                "out": str(root / "store"), "context_size": 64, "max_tokens": 8192,
                                                "chunk_mib": 0.05, "shard_mib": 0.5}, schemas.EXTRACT, "extract"),
            progress=False)
    sweep = "; ".join(f"l{layer}: hook={hooks(layer)[0]}, target_hook={hooks(layer)[1]}" for layer in LAYERS)
    sweep += f"; dup: hook={hooks(0)[0]}, target_hook={hooks(0)[1]}, k=4"
    train(load_config("configs/train.py", {
        "store": str(root / "store"), "hook": hooks(0)[0], "target_hook": hooks(0)[1], "out": str(root / "run"),
        "steps": 40, "batch_size": 256, "sae.architecture": "batch_topk", "sae.n_latents": 128, "sae.k": 8,
        "warmup_steps": 3, "checkpoint_every": 40,
        "eval_tokens": 512, "holdout_fraction": 0.25, "mesh.data": 1, "sweep": sweep}, schemas.TRAIN, "train"),
        progress=False)
    return root


def reference_logits(hf_model, members, tokens: np.ndarray, sequential: bool) -> np.ndarray:
    """transformers' logits with each ``layers[L].mlp`` output replaced (from position 1) by its transcoder's
    prediction from that module's input: in this pass (``sequential``) or in a clean pass."""
    import torch

    clean_inputs = {}
    if not sequential:
        grab = [hf_model.model.layers[layer].mlp.register_forward_pre_hook(
            lambda module, args, layer=layer: clean_inputs.__setitem__(layer, args[0].detach().numpy()))
            for layer in LAYERS]
        with torch.no_grad():
            hf_model(torch.as_tensor(tokens))
        for handle in grab:
            handle.remove()

    def replace(layer, member):
        def hook(module, args, output):
            x = args[0].detach().numpy() if sequential else clean_inputs[layer]
            flat = x.reshape(-1, x.shape[-1])
            y = np.array(member.sae.predict(flat)).reshape(x.shape)  # writable
            new = output.detach().clone()
            new[:, 1:] = torch.from_numpy(y[:, 1:])  # BOS keeps its clean activation (excluded from training)
            return new
        return hook

    handles = [hf_model.model.layers[layer].mlp.register_forward_hook(replace(layer, member))
               for layer, member in zip(LAYERS, members)]
    try:
        with torch.no_grad():
            return hf_model(torch.as_tensor(tokens)).logits.float().numpy()
    finally:
        for handle in handles:
            handle.remove()


def test_set_splice_is_sequential_and_matches_transformers(tiny_llama, set_run):
    from transformers import AutoModelForCausalLM

    from jaxinterp.eval.splice import transcoder_edit

    members = load_transcoder_set(str(set_run / "run"), "l2,l0,l1", "", "", True)
    assert [m.name for m in members] == ["l0", "l1", "l2"]  # ordered by layer
    edits = [transcoder_edit(m.sae.sae.hook_name, m.sae.sae.target_hook, m.sae.architecture, m.sae.params,
                             m.sae.arch_state, True) for m in members]
    tokens = np.random.default_rng(0).integers(3, 500, size=(2, 24))
    files = resolve_model(tiny_llama)
    hf = AutoModelForCausalLM.from_pretrained(files.directory, dtype="float32").eval()
    want = reference_logits(hf, members, tokens, sequential=True)
    from_clean = reference_logits(hf, members, tokens, sequential=False)
    assert np.abs(want - from_clean).max() > 1e-3  # the two semantics differ on this model: the test can tell
    for model in (JaxSourceModel(files), TorchSourceModel(files)):
        got = np.asarray(model.logits(tokens, edits))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=model.backend)
    # one edit alone is what it was before (a tuple of one)
    single = np.asarray(JaxSourceModel(files).logits(tokens, edits[1]))
    np.testing.assert_allclose(single, np.asarray(JaxSourceModel(files).logits(tokens, [edits[1]])), atol=1e-6)

    metrics = transcoder_set_metrics(JaxSourceModel(files), tokens, members, True, 2)
    ce = float(np.mean(np.asarray(next_token_loss(jax.numpy.asarray(want), jax.numpy.asarray(tokens)))))
    assert metrics["ce_loss_spliced"] == pytest.approx(ce, rel=1e-4)
    assert [m["target_hook"] for m in metrics["members"]] == [hooks(layer)[1] for layer in LAYERS]


def eval_config(run, **overrides):
    fields = {"run": str(run), "sae": "l1", "eval_tokens": 1024, "contexts": 8, "ce_contexts": 4, "n_latents": 2,
              "examples_per_latent": 2, **overrides}
    return load_config("configs/eval.py", fields, schemas.EVAL, "eval")


def test_eval_reports_the_set(set_run, tmp_path):
    run = str(set_run / "run")
    results = {backend: evaluate_run(eval_config(run, backend=backend, out=str(tmp_path / backend),
                                                 transcoder_set=run, transcoder_set_saes="l0,l1,l2"))
               for backend in ("jax", "torch")}
    got = json.loads((tmp_path / "jax" / "eval.json").read_text())["transcoder_set"]
    assert [m["sae"] for m in got["members"]] == ["l0", "l1", "l2"]
    torch_set = results["torch"]["transcoder_set"]
    for key in ("ce_loss_clean", "ce_loss_spliced", "ce_loss_zero_ablated", "kl_spliced", "kl_zero_ablated"):
        assert got[key] == pytest.approx(torch_set[key], rel=1e-4, abs=1e-5), key
    assert got["ce_loss_clean"] == pytest.approx(results["jax"]["ce_loss_clean"], rel=1e-6)
    # all three MLPs replaced move the model further than layer 1's alone
    assert got["kl_spliced"] > results["jax"]["kl_spliced"] > 0
    print(f"transcoder set (tiny Llama, 3 layers): {json.dumps({k: v for k, v in got.items() if k != 'members'})}; "
          f"layer 1 alone: ce_loss_recovered {results['jax']['ce_loss_recovered']:.4f}, "
          f"kl {results['jax']['kl_spliced']:.4f}")


def test_set_refusals(set_run, tmp_path):
    run = str(set_run / "run")
    with pytest.raises(ConfigError, match="'transcoder_set'.*both predict blocks.0.hook_mlp_out"):
        evaluate_run(eval_config(run, transcoder_set=run, out=str(tmp_path / "a")))
    with pytest.raises(ConfigError, match="'transcoder_set'.*ce_contexts > 0"):
        evaluate_run(eval_config(run, transcoder_set=run, transcoder_set_saes="l0", ce_contexts=0,
                                 out=str(tmp_path / "b")))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_circuit_tracer_export_needs_every_layer_of_the_model(set_run, tmp_path):
    """The run records its source model (3 layers): a set must cover all of them unless ``partial``."""
    from jaxinterp.export import export_run

    run = str(set_run / "run")
    with pytest.raises(ConfigError, match="every one of the model's 3 layers.*missing layers 2"):
        export_run(run, "circuit_tracer", str(tmp_path / "two"), sae="l0,l1")
    assert not (tmp_path / "two").exists()
    export_run(run, "circuit_tracer", str(tmp_path / "two"), sae="l0,l1", partial=True)
    export_run(run, "circuit_tracer", str(tmp_path / "all"), sae="l0,l1,l2")
    assert sorted(p.name for p in (tmp_path / "all").glob("layer_*")) == [f"layer_{i}.safetensors" for i in LAYERS]
    assert 'feature_output_hook: "mlp.hook_out"' in (tmp_path / "all" / "config.yaml").read_text()
