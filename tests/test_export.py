"""Export and import (SAELens, sparsify, Gemma-Scope npz) on a tiny trained sweep: round trips,
refusals, format detection. The peers themselves load the exports in test_export_real.py."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxinterp.cli import main
from jaxinterp.config import ConfigError
from jaxinterp.export import (PortableSAE, detect_format, export_run, load_sae, portable_from_trained, read_npz,
                              to_jaxinterp)
from jaxinterp.export.hookpoints import hook_for_hookpoint, hookpoint_for_hook
from jaxinterp.runs import load_trained
from jaxinterp.sae import dense_latents
from jaxinterp.store import open_store
from jaxinterp.train import train
from tests.stores import small_sparse_store
from tests.test_train import HOOK, train_config

# name → (sweep overrides, formats that hold it)
SAES = {
    "topk": ("", ("saelens", "sparsify")),
    "batch": ("architecture=batch_topk", ("saelens", "npz")),
    "jump": ("architecture=jumprelu, l0_coefficient=0.05", ("saelens", "npz")),
    "relu": ("architecture=relu", ("saelens", "npz")),
}
CASES = [(name, fmt) for name, (_, formats) in SAES.items() for fmt in formats]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(run dir, raw activations): one 10-step sweep of every architecture, inputs normalised (so
    every export must fold the input scale into its weights)."""
    root = tmp_path_factory.mktemp("export")
    store = small_sparse_store(str(root / "store"), HOOK)
    sweep = "; ".join(f"{name}: {overrides}" for name, (overrides, _) in SAES.items())
    train(train_config(store, root / "run", steps=10, checkpoint_every=10, normalize=True, norm_tokens=2048,
                       sweep=sweep), progress=False)
    return str(root / "run"), open_store(store).read(HOOK, 0, 256)


def dense(latents, d_sae):
    return np.asarray(dense_latents(latents, d_sae))


@pytest.mark.parametrize("name,fmt", CASES)
def test_export_then_import_round_trips(tiny_run, tmp_path, name, fmt):
    run, x = tiny_run
    trained = load_trained(run, name)
    portable = portable_from_trained(trained)
    out = export_run(run, fmt, str(tmp_path / fmt), sae=name)
    assert detect_format(out) == fmt
    loaded = load_sae(out)
    assert loaded.format == fmt and loaded.sae.hook_name == HOOK and loaded.sae.d_sae == 256
    expected = "jumprelu" if fmt == "npz" else {"topk": "topk", "relu": "relu"}.get(name, "jumprelu")
    assert loaded.architecture.name == expected
    for key in ("W_enc", "W_dec", "b_dec") + (() if fmt == "npz" else ("b_enc",)):
        np.testing.assert_array_equal(loaded.sae.params[key], portable.params[key], err_msg=key)
    if fmt == "npz":  # Gemma Scope keeps b_dec folded into b_enc: exact up to float32 rounding of the fold
        np.testing.assert_allclose(loaded.sae.params["b_enc"], portable.params["b_enc"], rtol=0, atol=1e-6)
    if "threshold" in portable.params:
        np.testing.assert_allclose(np.exp(loaded.params["log_threshold"]), portable.params["threshold"], rtol=1e-6)
    # the import encodes raw activations as the trained SAE encodes normalised ones
    reference_arch, reference_params, reference_state = to_jaxinterp(portable)
    reference = dense(reference_arch.encode(reference_params, reference_state, x), 256)
    trained_latents = dense(trained.architecture.encode(trained.state.params, trained.state.arch_state,
                                                        x * trained.input_scale), 256)
    np.testing.assert_allclose(reference, trained_latents, rtol=1e-5, atol=1e-5)
    latents = dense(loaded.encode(x), 256)
    if fmt == "npz":
        np.testing.assert_allclose(latents, reference, rtol=0, atol=1e-5)
    else:
        np.testing.assert_array_equal(latents, reference)
    assert (latents > 0).sum() > 0
    np.testing.assert_allclose(loaded.decode(loaded.encode(x)),
                               reference_arch.decode(reference_params, reference_arch.encode(reference_params,
                                                                                            reference_state, x)),
                               rtol=0, atol=1e-5)


def test_formats_refuse_architectures_they_cannot_hold(tiny_run, tmp_path):
    run, _ = tiny_run
    with pytest.raises(ConfigError, match="'sparsify' cannot hold a 'jumprelu' SAE .*export it as 'saelens' or 'npz'"):
        export_run(run, "sparsify", str(tmp_path / "s"), sae="jump")
    with pytest.raises(ConfigError, match="'npz' cannot hold a 'topk' SAE .*export it as 'saelens' or 'sparsify'"):
        export_run(run, "npz", str(tmp_path / "n"), sae="topk")
    with pytest.raises(ConfigError, match="must be one of 'saelens', 'sparsify', 'npz'"):
        export_run(run, "onnx", str(tmp_path / "o"), sae="topk")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("fmt,name", [("saelens", "relu"), ("sparsify", "topk"), ("npz", "batch")])
def test_existing_target_needs_overwrite(tiny_run, tmp_path, fmt, name):
    run, _ = tiny_run
    first = export_run(run, fmt, str(tmp_path / "e"), sae=name)
    before = sorted(p.name for p in first.iterdir())
    with pytest.raises(FileExistsError, match="overwrite"):
        export_run(run, fmt, str(tmp_path / "e"), sae=name)
    assert export_run(run, fmt, str(tmp_path / "e"), sae=name, overwrite=True) == first
    assert sorted(p.name for p in first.iterdir()) == before
    assert [p.name for p in first.parent.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_sparsify_layout_and_roots(tiny_run, tmp_path):
    run, x = tiny_run
    out = export_run(run, "sparsify", str(tmp_path / "root"), sae="topk")
    assert out == tmp_path / "root" / "layers.0"  # blocks.0.hook_resid_post of a (synthetic, Llama-named) model
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg == {"activation": "topk", "expansion_factor": 8, "normalize_decoder": False, "num_latents": 256,
                   "k": 8, "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": 32}
    weights = load_file(str(out / "sae.safetensors"))
    assert {k: v.shape for k, v in weights.items()} == {"encoder.weight": (256, 32), "encoder.bias": (256,),
                                                        "W_dec": (256, 32), "b_dec": (32,)}
    # sparsify's encode in numpy: topk(relu((x - b_dec) @ encoder.weight.T + encoder.bias))
    pre = np.maximum((x - weights["b_dec"]) @ weights["encoder.weight"].T + weights["encoder.bias"], 0)
    kth = np.sort(pre, axis=-1)[:, -8][:, None]
    np.testing.assert_allclose(dense(load_sae(out).encode(x), 256), np.where(pre >= kth, pre, 0), atol=1e-5)
    # the root loads when it holds one hookpoint, and names the choices when it holds several
    assert load_sae(tmp_path / "root").sae.metadata["hookpoint"] == "layers.0"
    (tmp_path / "root" / "layers.1").mkdir()
    for name in ("cfg.json", "sae.safetensors"):
        (tmp_path / "root" / "layers.1" / name).write_bytes((out / name).read_bytes())
    with pytest.raises(ValueError, match=r"found 2 hookpoints \(layers.0, layers.1\)"):
        load_sae(tmp_path / "root")
    assert load_sae(tmp_path / "root" / "layers.1").sae.hook_name == "blocks.1.hook_resid_post"
    # a SAELens directory is not a sparsify root
    saelens = export_run(run, "saelens", str(tmp_path / "lens"), sae="topk")
    with pytest.raises(FileExistsError, match="not a sparsify export root"):
        export_run(run, "sparsify", str(saelens), sae="topk", overwrite=True)


def _edit_cfg(directory, **changes):
    cfg = json.loads((directory / "cfg.json").read_text())
    cfg.update(changes)
    (directory / "cfg.json").write_text(json.dumps(cfg))


def test_saelens_options_jaxinterp_cannot_represent_are_refused(tiny_run, tmp_path):
    run, _ = tiny_run
    out = export_run(run, "saelens", str(tmp_path / "e"), sae="jump")
    for change, message in [({"normalize_activations": "layer_norm"}, "normalize_activations='layer_norm'"),
                            ({"architecture": "temporal"}, "architecture='temporal' has no jaxinterp equivalent"),
                            ({"reshape_activations": "hook_z"}, "reshape_activations='hook_z'")]:
        original = (out / "cfg.json").read_text()
        _edit_cfg(out, **change)
        with pytest.raises(ValueError, match=message):
            load_sae(out)
        (out / "cfg.json").write_text(original)
    weights = load_file(str(out / "sae_weights.safetensors"))
    save_file({**weights, "b_mag": weights["b_enc"]}, str(out / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match=r"unexpected \['b_mag'\]"):
        load_sae(out)
    del weights["threshold"]
    save_file(weights, str(out / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['threshold'\]"):
        load_sae(out)


def test_saelens_options_with_exact_equivalents_are_folded(tiny_run, tmp_path):
    run, x = tiny_run
    # apply_b_dec_to_input=false: pre = x @ W_enc + b_enc (Gemma Scope's convention in SAELens)
    out = export_run(run, "saelens", str(tmp_path / "jump"), sae="jump")
    expected = dense(load_sae(out).encode(x), 256)
    w = load_file(str(out / "sae_weights.safetensors"))
    save_file({**w, "b_enc": w["b_enc"] - w["b_dec"] @ w["W_enc"]}, str(out / "sae_weights.safetensors"))
    _edit_cfg(out, apply_b_dec_to_input=False)
    np.testing.assert_allclose(dense(load_sae(out).encode(x), 256), expected, atol=1e-5)
    # TopK rescale_acts_by_decoder_norm=true, as SAELens computes it, in numpy
    out = export_run(run, "saelens", str(tmp_path / "topk"), sae="topk")
    w = load_file(str(out / "sae_weights.safetensors"))
    w["W_dec"] = w["W_dec"] * np.linspace(0.5, 2.0, 256, dtype=np.float32)[:, None]
    save_file(w, str(out / "sae_weights.safetensors"))
    _edit_cfg(out, rescale_acts_by_decoder_norm=True)
    norms = np.linalg.norm(w["W_dec"], axis=-1)
    pre = ((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) * norms
    kth = np.sort(pre, axis=-1)[:, -8][:, None]
    theirs = np.where(pre >= kth, np.maximum(pre, 0), 0)
    loaded = load_sae(out)
    np.testing.assert_allclose(dense(loaded.encode(x), 256), theirs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loaded.decode(loaded.encode(x)), (theirs / norms) @ w["W_dec"] + w["b_dec"],
                               rtol=1e-5, atol=1e-5)


def test_sparsify_variants_jaxinterp_cannot_represent_are_refused(tiny_run, tmp_path):
    run, _ = tiny_run
    out = export_run(run, "sparsify", str(tmp_path / "root"), sae="topk")
    for change in ({"activation": "groupmax"}, {"transcode": True}, {"skip_connection": True}):
        original = (out / "cfg.json").read_text()
        _edit_cfg(out, **change)
        with pytest.raises(ValueError, match=f"{next(iter(change))}=.* is not importable"):
            load_sae(out)
        (out / "cfg.json").write_text(original)


def test_npz_of_relu_has_zero_threshold_and_loads_as_jumprelu(tiny_run, tmp_path):
    run, x = tiny_run
    out = export_run(run, "npz", str(tmp_path / "n"), sae="relu")
    with np.load(out / "params.npz") as data:
        assert sorted(data.files) == ["W_dec", "W_enc", "b_dec", "b_enc", "threshold"]
        assert all(data[name].dtype == np.float32 for name in data.files)
        assert not data["threshold"].any()
        # Gemma Scope's encoder: no b_dec subtracted from the input
        pre = x @ data["W_enc"] + data["b_enc"]
        gemma = np.maximum(pre, 0) * (pre > data["threshold"])
    loaded = load_sae(out / "params.npz")  # the file itself works too
    assert loaded.architecture.name == "jumprelu" and np.isneginf(loaded.params["log_threshold"]).all()
    relu = load_sae(export_run(run, "saelens", str(tmp_path / "s"), sae="relu"))
    np.testing.assert_allclose(dense(loaded.encode(x), 256), dense(relu.encode(x), 256), atol=1e-5)
    np.testing.assert_allclose(gemma, dense(relu.encode(x), 256), atol=1e-5)
    assert read_npz(out).metadata["jaxinterp_architecture"] == "relu"


def test_format_detection_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        detect_format(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not an SAE export"):
        load_sae(tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown SAE format 'onnx'"):
        load_sae(tmp_path / "empty", fmt="onnx")


def test_hookpoints():
    cases = {("blocks.6.hook_resid_post", "llama"): "layers.6",
             ("blocks.6.hook_mlp_out", "LlamaForCausalLM"): "layers.6.mlp",
             ("blocks.6.hook_attn_out", "llama"): "layers.6.self_attn",
             ("blocks.2.hook_resid_post", "GPT2LMHeadModel"): "h.2",
             ("blocks.2.hook_mlp_out", "gpt2"): "h.2.mlp",
             ("blocks.2.hook_attn_out", "gpt2"): "h.2.attn",
             ("blocks.1.hook_attn_out", "GPTNeoForCausalLM"): "h.1.attn",
             ("blocks.3.hook_resid_pre", "llama"): "layers.2",
             ("hook_embed", "llama"): "embed_tokens",
             ("hook_embed", "gpt2"): "wte",
             # Gemma: what the layer adds is the post-norm output; GPT-NeoX: attention / embed_in
             ("blocks.1.hook_mlp_out", "Gemma2ForCausalLM"): "layers.1.post_feedforward_layernorm",
             ("blocks.1.hook_resid_post", "Gemma"): "layers.1",
             ("blocks.2.hook_attn_out", "GPTNeoXForCausalLM"): "layers.2.attention",
             ("blocks.2.hook_mlp_out", "GPTNeoX"): "layers.2.mlp",
             ("hook_embed", "gpt_neox"): "embed_in",
             ("hook_embed", "gemma3_text"): "embed_tokens"}
    for (hook, model_class), hookpoint in cases.items():
        assert hookpoint_for_hook(hook, model_class) == hookpoint
        if "resid_pre" not in hook:
            assert hook_for_hookpoint(hookpoint) == hook
    # Gemma's attention hook reads its post-attention norm, which in Llama is the MLP's input: not read back
    assert hookpoint_for_hook("blocks.1.hook_attn_out", "gemma2") == "layers.1.post_attention_layernorm"
    assert hook_for_hookpoint("layers.1.post_attention_layernorm") == ""
    with pytest.raises(ConfigError, match="first layer's input"):
        hookpoint_for_hook("blocks.0.hook_resid_pre", "llama")
    with pytest.raises(ConfigError, match="no sparsify hookpoint"):
        hookpoint_for_hook("blocks.0.attn.hook_z", "llama")
    assert hook_for_hookpoint("layers.3.mlp.act_fn") == ""


def test_cli_export_formats(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    args = ["export", "--config", "configs/export.py", f"--config.run={run}"]
    assert main([*args, "--config.sae=topk", "--config.format=sparsify", f"--config.out={tmp_path / 's'}"]) == 0
    assert json.loads(capsys.readouterr().out)["exported"] == str(tmp_path / "s" / "layers.0")
    assert main([*args, "--config.sae=topk", "--config.format=npz", f"--config.out={tmp_path / 'n'}"]) == 2
    assert "export it as 'saelens' or 'sparsify'" in capsys.readouterr().err


def test_jumprelu_thresholds_of_zero_and_below_are_plain_relu():
    rng = np.random.default_rng(0)
    params = {"W_enc": rng.normal(size=(8, 16)).astype(np.float32), "b_enc": rng.normal(size=16).astype(np.float32),
              "W_dec": rng.normal(size=(16, 8)).astype(np.float32), "b_dec": rng.normal(size=8).astype(np.float32),
              "threshold": np.repeat(np.float32([-1.0, 0.0, 0.5, 1.0]), 4)}
    arch, jax_params, state = to_jaxinterp(PortableSAE("jumprelu", params, 8, 16, 0, "", {}))
    x = rng.normal(size=(64, 8)).astype(np.float32)
    pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
    np.testing.assert_allclose(arch.encode(jax_params, state, x), np.maximum(pre, 0) * (pre > params["threshold"]),
                               atol=1e-5)
