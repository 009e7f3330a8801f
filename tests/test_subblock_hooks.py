"""The sub-block hooks (attn.hook_z, hook_resid_mid, ln2.hook_normalized, mlp.hook_in, mlp.hook_post) on both
backends, against transformers' eager forward read by torch forward (pre-)hooks on the modules the README's
table names, and edits at each of them agreeing across backends."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import (AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, GPT2Config, GPTNeoXConfig, LlamaConfig,
                          Qwen3Config)

from jaxinterp.config import ConfigError
from jaxinterp.export.hookpoints import hook_for_hookpoint, hookpoint_for_hook
from jaxinterp.models import HookEdit, HookError, parse_hooks, resolve_model, valid_hook_names
from jaxinterp.models.hooks import SUBBLOCK_KINDS, hook_width
from jaxinterp.models.jax_backend import JaxSourceModel
from jaxinterp.models.torch_backend import TorchSourceModel
from tests.test_jax_models import relative_error
from tests.tiny_models import save_tiny_model, saved_on_demand

SMALL = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
SMALL_NEOX = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                  max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
FAMILIES = {
    "llama": LlamaConfig(tie_word_embeddings=False, **SMALL),
    "qwen3": Qwen3Config(head_dim=24, **SMALL),  # hook_z is 4 * 24 = 96 wide, not hidden_size
    "gemma2": Gemma2Config(head_dim=16, query_pre_attn_scalar=8, sliding_window=5, attn_logit_softcapping=1.0,
                           final_logit_softcapping=2.0, **SMALL),
    "gemma3_text": Gemma3TextConfig(head_dim=24, query_pre_attn_scalar=24, sliding_window=5,
                                    layer_types=["sliding_attention", "full_attention", "sliding_attention"], **SMALL),
    "gpt_neox": GPTNeoXConfig(rotary_pct=0.25, **SMALL_NEOX),
    "gpt_neox_sequential": GPTNeoXConfig(use_parallel_residual=False, rotary_pct=0.5, **SMALL_NEOX),
    "gpt2": GPT2Config(vocab_size=512, n_embd=64, n_layer=3, n_head=4, n_positions=512, n_inner=96,
                       bos_token_id=1, eos_token_id=2),
}
# model type -> (layers, hook_z: input of, resid_mid / hook_normalized: input of, mlp.hook_in: input of,
# mlp.hook_post: input of), the table, written out independently of the torch backend's HOOK_MODULES
TABLE = {
    "llama": ("model.layers", "self_attn.o_proj", "post_attention_layernorm", "mlp", "mlp.down_proj"),
    "qwen3": ("model.layers", "self_attn.o_proj", "post_attention_layernorm", "mlp", "mlp.down_proj"),
    "gemma2": ("model.layers", "self_attn.o_proj", "pre_feedforward_layernorm", "mlp", "mlp.down_proj"),
    "gemma3_text": ("model.layers", "self_attn.o_proj", "pre_feedforward_layernorm", "mlp", "mlp.down_proj"),
    "gpt_neox": ("gpt_neox.layers", "attention.dense", "post_attention_layernorm", "mlp", "mlp.dense_4h_to_h"),
    "gpt2": ("transformer.h", "attn.c_proj", "ln_2", "mlp", "mlp.c_proj"),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return saved_on_demand(FAMILIES, tmp_path_factory)


def tokens(seq: int = 24) -> np.ndarray:
    return np.random.default_rng(0).integers(3, 500, size=(2, seq))


def _normalized(norm, x: torch.Tensor) -> torch.Tensor:
    """What ``norm`` computes from its input before its weight, in float32."""
    x = x.float()
    if isinstance(norm, torch.nn.LayerNorm):
        return torch.nn.functional.layer_norm(x, x.shape[-1:], None, None, norm.eps)
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def reference(directory: str, ids: np.ndarray) -> dict[str, np.ndarray]:
    """transformers' eager forward, every sub-block hook read by a forward pre-hook on the table's module."""
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    model.set_attn_implementation("eager")
    layers, z, ln2, mlp, down = TABLE[model.config.model_type]
    parallel = getattr(model.config, "use_parallel_residual", False)
    acts, handles = {}, []

    def read(name, then=lambda module, x: x):
        def pre_hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            acts[name] = then(module, x).detach().float().numpy()
        return pre_hook

    for layer, block in enumerate(model.get_submodule(layers)):
        prefix = f"blocks.{layer}."
        hooks = [(z, read(prefix + "attn.hook_z")), (ln2, read(prefix + "ln2.hook_normalized", _normalized)),
                 (mlp, read(prefix + "mlp.hook_in")), (down, read(prefix + "mlp.hook_post"))]
        if not parallel:
            hooks.append((ln2, read(prefix + "hook_resid_mid")))
        for path, hook in hooks:
            handles.append(block.get_submodule(path).register_forward_pre_hook(hook, with_kwargs=True))
    with torch.inference_mode():
        model(input_ids=torch.as_tensor(ids, dtype=torch.long), use_cache=False)
    for handle in handles:
        handle.remove()
    return acts


def subblock_hooks(config, n_layers: int) -> list[str]:
    return [name for name in valid_hook_names(n_layers, config) if any(name.endswith(k) for k in SUBBLOCK_KINDS)]


@pytest.mark.parametrize("name", FAMILIES)
def test_subblock_hooks_match_transformers(name, saved):
    files = resolve_model(saved(name))
    ids = tokens()
    ours, theirs = JaxSourceModel(files), TorchSourceModel(files)
    hooks = subblock_hooks(ours.config, ours.n_layers)
    expected = reference(saved(name), ids)
    assert sorted(expected) == sorted(hooks)
    jax_acts, torch_acts = ours.run(ids, hooks), theirs.run(ids, hooks)
    errors = {}
    for hook in hooks:
        kind = hook.split(".", 2)[2]
        assert jax_acts[hook].shape == (*ids.shape, hook_width(ours.config, kind)), hook
        assert torch_acts[hook].shape == jax_acts[hook].shape, hook
        errors[kind] = max(errors.get(kind, 0.0), relative_error(jax_acts[hook], expected[hook]))
        errors["torch " + kind] = max(errors.get("torch " + kind, 0.0),
                                      relative_error(torch_acts[hook], jax_acts[hook]))
    print(f"{name}: " + ", ".join(f"{kind} {error:.1e}" for kind, error in errors.items()))
    assert max(errors.values()) <= 1e-4, errors


def _edit_cases():
    for name in FAMILIES:
        for kind in SUBBLOCK_KINDS:
            if not (name == "gpt_neox" and kind == "hook_resid_mid"):
                yield name, kind


@pytest.mark.parametrize("name,kind", list(_edit_cases()))
def test_edits_agree_across_backends(name, kind, saved):
    """Scaling the activation at the hook by 0.5 gives the same logits on both backends (and changes them)."""
    files = resolve_model(saved(name))
    edit = HookEdit(f"blocks.1.{kind}", lambda scale, x: x * scale, jnp.float32(0.5))
    ids = tokens(16)
    theirs = TorchSourceModel(files)
    edited_jax, edited_torch = np.asarray(JaxSourceModel(files).logits(ids, edit)), theirs.logits(ids, edit)
    assert relative_error(edited_torch, theirs.logits(ids)) > 1e-3  # the edit changes something
    assert relative_error(edited_jax, edited_torch) <= 1e-4


def test_resid_mid_edit_continues_from_the_replaced_residual(saved):
    """Replacing resid_mid by resid_mid(edited attention) is the same forward as editing attn_out."""
    files = resolve_model(saved("llama"))
    ids = tokens(16)
    ours, theirs = JaxSourceModel(files), TorchSourceModel(files)
    attn = theirs.run(ids, ["blocks.1.hook_attn_out"])["blocks.1.hook_attn_out"]
    shift = jnp.asarray(-0.5 * attn)
    via_attn = HookEdit("blocks.1.hook_attn_out", lambda s, x: x + s, shift)
    via_mid = HookEdit("blocks.1.hook_resid_mid", lambda s, x: x + s, shift)
    want = theirs.logits(ids, via_attn)
    assert relative_error(theirs.logits(ids, via_mid), want) <= 1e-5
    assert relative_error(np.asarray(ours.logits(ids, via_mid)), want) <= 1e-4


def test_parallel_neox_refuses_resid_mid_in_one_line(saved):
    files = resolve_model(saved("gpt_neox"))
    ours, theirs = JaxSourceModel(files), TorchSourceModel(files)
    assert "blocks.1.hook_resid_mid" not in valid_hook_names(3, ours.config)
    calls = [lambda: ours.parse_hooks("blocks.1.hook_resid_mid"), lambda: theirs.parse_hooks("blocks.1.hook_resid_mid"),
             lambda: ours.run(tokens(8), ["blocks.1.hook_resid_mid"]),
             lambda: theirs.run(tokens(8), ["blocks.1.hook_resid_mid"]),
             lambda: ours.logits(tokens(8), HookEdit("blocks.1.hook_resid_mid", lambda s, x: x * s, 0.5)),
             lambda: theirs.logits(tokens(8), HookEdit("blocks.1.hook_resid_mid", lambda s, x: x * s, 0.5))]
    for call in calls:
        with pytest.raises(HookError) as refused:
            call()
        line = str(refused.value)
        assert "parallel residual" in line and "\n" not in line, line
    # the sequential variant has one
    assert parse_hooks("blocks.1.hook_resid_mid", 3, FAMILIES["gpt_neox_sequential"])[0].kind == "hook_resid_mid"


def test_hook_widths():
    assert hook_width(FAMILIES["qwen3"], "attn.hook_z") == 96
    assert hook_width(FAMILIES["llama"], "mlp.hook_post") == 96
    assert hook_width(FAMILIES["gpt2"], "mlp.hook_post") == 96
    assert hook_width(GPT2Config(n_embd=64, n_head=4), "mlp.hook_post") == 256
    assert hook_width(FAMILIES["gemma2"], "attn.hook_z") == 64
    assert all(hook_width(FAMILIES["llama"], kind) == 64 for kind in ("hook_resid_mid", "ln2.hook_normalized",
                                                                      "mlp.hook_in", "hook_resid_post"))


def test_sparsify_hookpoints_of_the_new_kinds():
    assert hookpoint_for_hook("blocks.2.mlp.hook_in", "LlamaForCausalLM") == "layers.2.post_attention_layernorm"
    assert hookpoint_for_hook("blocks.2.mlp.hook_in", "gemma2") == "layers.2.pre_feedforward_layernorm"
    assert hookpoint_for_hook("blocks.2.mlp.hook_in", "GPT2LMHeadModel") == "h.2.ln_2"
    assert hookpoint_for_hook("blocks.2.mlp.hook_post", "GPT2LMHeadModel") == "h.2.mlp.act"
    assert hookpoint_for_hook("blocks.2.mlp.hook_post", "GPTNeoXForCausalLM") == "layers.2.mlp.act"
    for hookpoint, hook in {"h.2.ln_2": "blocks.2.mlp.hook_in", "h.2.mlp.act": "blocks.2.mlp.hook_post",
                            "layers.2.mlp.act": "blocks.2.mlp.hook_post",
                            "layers.2.pre_feedforward_layernorm": "blocks.2.mlp.hook_in"}.items():
        assert hook_for_hookpoint(hookpoint) == hook
    refused = [("blocks.1.attn.hook_z", "llama"), ("blocks.1.hook_resid_mid", "gpt2"),
               ("blocks.1.ln2.hook_normalized", "llama"), ("blocks.1.mlp.hook_post", "llama"),
               ("blocks.1.mlp.hook_post", "gemma2")]
    for hook, model_class in refused:
        with pytest.raises(ConfigError) as error:
            hookpoint_for_hook(hook, model_class)
        assert "saelens" in str(error.value) and "\n" not in str(error.value)


def test_saelens_hook_z_export_carries_the_reshape(tmp_path):
    from jaxinterp.export.portable import PortableSAE
    from jaxinterp.export.saelens import export_saelens, read_saelens

    rng = np.random.default_rng(0)
    d_in, d_sae = 96, 32  # n_heads 4 * d_head 24
    params = {"W_enc": rng.normal(size=(d_in, d_sae)).astype(np.float32), "b_enc": np.zeros(d_sae, np.float32),
              "W_dec": rng.normal(size=(d_sae, d_in)).astype(np.float32), "b_dec": np.zeros(d_in, np.float32)}
    out = export_saelens(PortableSAE("relu", params, d_in, d_sae, 0, "blocks.1.attn.hook_z", {}), str(tmp_path / "z"))
    import json

    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["reshape_activations"] == "hook_z" and cfg["metadata"]["hook_name"] == "blocks.1.attn.hook_z"
    assert read_saelens(out).hook_name == "blocks.1.attn.hook_z"
    other = export_saelens(PortableSAE("relu", params, d_in, d_sae, 0, "blocks.1.mlp.hook_post", {}),
                           str(tmp_path / "post"))
    assert json.loads((other / "cfg.json").read_text())["reshape_activations"] == "none"
    try:
        from sae_lens import SAE
    except ImportError:
        return
    sae = SAE.load_from_disk(str(out), device="cpu")
    assert sae.cfg.reshape_activations == "hook_z"
    z = torch.as_tensor(rng.normal(size=(2, 5, 4, 24)).astype(np.float32))  # TransformerLens' hook_z layout
    with torch.no_grad():
        latents = sae.encode(z)
    flat = z.reshape(2, 5, 96).numpy()
    np.testing.assert_allclose(latents.numpy(), np.maximum(flat @ params["W_enc"], 0), rtol=1e-4, atol=1e-4)


def test_extract_refuses_hooks_of_different_widths(saved, tmp_path):
    from tests.test_extract import extract_config
    from jaxinterp.extract.run import plan_extraction

    model = save_tiny_model(FAMILIES["qwen3"], tmp_path / "qwen3", tokenizer=True)
    with pytest.raises(ConfigError) as refused:
        plan_extraction(extract_config(model, tmp_path / "s", hooks="blocks.1.attn.hook_z,blocks.1.hook_resid_post"))
    line = str(refused.value)
    assert "blocks.1.attn.hook_z (96)" in line and "blocks.1.hook_resid_post (64)" in line and "\n" not in line
    _, _, manifest = plan_extraction(extract_config(model, tmp_path / "s", hooks="blocks.0.attn.hook_z,blocks.2.attn.hook_z"))
    assert manifest["d_in"] == 96
    _, _, manifest = plan_extraction(extract_config(model, tmp_path / "s", hooks="blocks.1.mlp.hook_in"))
    assert manifest["d_in"] == 64
