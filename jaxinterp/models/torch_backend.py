"""The transformers/torch extraction backend: any causal LM transformers loads, hooked by name.

torch is an optional dependency (``pip install jaxinterp[torch]``); it is imported only here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import numpy as np

from jaxinterp.models.files import ModelFiles, load_hf_config
from jaxinterp.models.hooks import (SUBBLOCK_KINDS, HookEdit, HookPoint, as_edits, as_hook_points, edit_sources,
                                    parse_hooks)
from jaxinterp.models.support import check_torch_support

__all__ = ["TorchSourceModel", "HOOK_MODULES"]


class HookModules(NamedTuple):
    """Where a model type's hooks read: module paths in its ``AutoModelForCausalLM``.

    ``hook_embed`` is the output of ``embed``; ``hook_resid_pre`` / ``hook_resid_post`` the input and
    output of ``layers[L]``; ``hook_attn_out`` / ``hook_mlp_out`` the outputs of its ``attn_out`` /
    ``mlp_out`` submodules, each the module whose output the layer adds to the residual stream.
    Inside the layer: ``attn.hook_z`` is the input of ``attn_proj`` (the attention's output
    projection); ``hook_resid_mid`` the input of ``ln2`` (the pre-MLP norm) and ``ln2.hook_normalized``
    that input normalised before the norm's weight (computed here from it, in float32); ``mlp.hook_in``
    the input of ``mlp`` and ``mlp.hook_post`` the input of ``mlp_down`` (its output projection).
    """

    embed: str
    layers: str
    attn_out: str
    mlp_out: str
    attn_proj: str
    ln2: str
    mlp: str
    mlp_down: str


_LLAMA_LAYOUT = HookModules("model.embed_tokens", "model.layers", "self_attn", "mlp", "self_attn.o_proj",
                            "post_attention_layernorm", "mlp", "mlp.down_proj")
# Gemma-2/3 normalise the attention and MLP outputs before adding them: the hooks read those norms
_GEMMA_LAYOUT = HookModules("model.embed_tokens", "model.layers", "post_attention_layernorm",
                            "post_feedforward_layernorm", "self_attn.o_proj", "pre_feedforward_layernorm", "mlp",
                            "mlp.down_proj")
# per model type (the whitelist itself is support.TORCH_MODEL_TYPES); tested in tests/test_model_support.py and
# tests/test_model_families_gemma_neox.py: resid_post = resid_pre + attn_out + mlp_out, every hook equal to JAX
HOOK_MODULES: dict[str, HookModules] = {
    "llama": _LLAMA_LAYOUT, "mistral": _LLAMA_LAYOUT, "qwen2": _LLAMA_LAYOUT, "qwen3": _LLAMA_LAYOUT,
    "gemma2": _GEMMA_LAYOUT, "gemma3_text": _GEMMA_LAYOUT,
    "gpt2": HookModules("transformer.wte", "transformer.h", "attn", "mlp", "attn.c_proj", "ln_2", "mlp", "mlp.c_proj"),
    "gpt_neox": HookModules("gpt_neox.embed_in", "gpt_neox.layers", "attention", "mlp", "attention.dense",
                            "post_attention_layernorm", "mlp", "mlp.dense_4h_to_h"),
}
_INNER_KINDS = ("hook_attn_out", "hook_mlp_out") + SUBBLOCK_KINDS


def _norm_functions(norm, torch):
    """``(normalize, scale)`` of a pre-MLP norm module: its input normalised before the weight (float32) and
    the weight applied to that, as the module computes them (RMSNorm, Gemma's ``(1 + w)`` RMSNorm, LayerNorm)."""
    if isinstance(norm, torch.nn.LayerNorm):
        def normalize(x):
            x32 = x.float()
            mean = x32.mean(-1, keepdim=True)
            return (x32 - mean) * torch.rsqrt((x32 - mean).pow(2).mean(-1, keepdim=True) + norm.eps)

        return normalize, lambda normed, dtype: normed.to(dtype) * norm.weight + norm.bias
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))

    def rms(x):
        x32 = x.float()
        return x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)

    if "gemma" in type(norm).__name__.lower():
        return rms, lambda normed, dtype: (normed.float() * (1.0 + norm.weight.float())).to(dtype)
    return rms, lambda normed, dtype: norm.weight * normed.to(dtype)


class _Handles:
    """Several hook handles removed as one."""

    def __init__(self, handles: list):
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class _StopForward(Exception):
    """Raised by a hook to end the forward pass once the last requested hook has fired."""


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


class TorchSourceModel:
    """A transformers ``AutoModelForCausalLM`` with TransformerLens-named capture hooks.

    Supports the model types whose hooks are tested equal to transformers (``support.TORCH_MODEL_TYPES``):
    the Llama family (Llama, Mistral, Qwen2, Qwen3, SmolLM), Gemma-2 and Gemma-3 text (whose attention
    and MLP hooks read the post-attention / post-feedforward norms, what their layers add), GPT-2 and
    GPT-NeoX; :data:`HOOK_MODULES` says which module each hook reads. Any other model type (e.g.
    OLMo-2, whose post-norms sit where no hook reads them) is refused with an ``UnsupportedModelError``
    (:mod:`jaxinterp.models.support`). Example::

        model = TorchSourceModel(resolve_model("smollm2"), dtype="float32")
        acts = model.run(tokens, ["blocks.12.hook_resid_post"])
    """

    backend = "torch"

    def __init__(self, files: ModelFiles, dtype: str = "float32", threads: int | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import torch
        except ImportError:
            raise ImportError(
                "the torch extraction backend needs torch: pip install torch (CPU build) or jaxinterp[torch]"
            ) from None
        from transformers import AutoModelForCausalLM

        if files.gguf_file is None:  # refuse before reading the weights; a raw GGUF's config is checked once loaded
            check_torch_support(load_hf_config(files).model_type)
        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        self.files = files
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        model = AutoModelForCausalLM.from_pretrained(
            files.directory, gguf_file=files.gguf_file, dtype=torch_dtype, local_files_only=True
        )
        check_torch_support(model.config.model_type)
        self.model = model.eval()
        self.config = model.config
        modules = HOOK_MODULES.get(model.config.model_type, _LLAMA_LAYOUT)
        try:
            self._embed, self._layers = model.get_submodule(modules.embed), model.get_submodule(modules.layers)
        except AttributeError:
            raise NotImplementedError(
                f"{type(model).__name__}: no {modules.embed} / {modules.layers} to hook"
            ) from None
        self._attn, self._mlp = modules.attn_out, modules.mlp_out
        self._modules = modules
        self.model_class = type(model).__name__
        self.n_layers = len(self._layers)
        self.d_model = int(self.config.hidden_size)
        self._replace_cache: dict[Callable, Callable] = {}

    def parse_hooks(self, names: str | Sequence[str]) -> list[HookPoint]:
        """Parses hook names against this model's depth."""
        return parse_hooks(names, self.n_layers, self.config)

    def _attach(self, point: HookPoint, transform: Callable, stop: bool = False):
        """Registers ``transform(activation) -> replacement or None`` at ``point``; returns the handle.

        ``stop`` ends the forward pass right after the hook fires.
        """
        def on_output(module, args, output):
            new = transform(_first(output))
            if stop:
                raise _StopForward
            if new is not None:
                return (new, *output[1:]) if isinstance(output, (tuple, list)) else new

        def on_input(module, args, kwargs):
            new = transform(args[0] if args else kwargs["hidden_states"])
            if stop:
                raise _StopForward
            if new is not None:
                return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

        if point.kind == "hook_embed":
            return self._embed.register_forward_hook(on_output)
        layer = self._layers[point.layer]
        if point.kind == "hook_resid_pre":
            return layer.register_forward_pre_hook(on_input, with_kwargs=True)
        if point.kind == "hook_resid_post":
            return layer.register_forward_hook(on_output)
        if point.kind in ("hook_attn_out", "hook_mlp_out"):
            return getattr(layer, self._attn if point.kind == "hook_attn_out" else self._mlp).register_forward_hook(
                on_output)
        module = {"attn.hook_z": self._modules.attn_proj, "mlp.hook_in": self._modules.mlp,
                  "mlp.hook_post": self._modules.mlp_down}.get(point.kind)
        if module is not None:  # the input of a module
            return layer.get_submodule(module).register_forward_pre_hook(on_input, with_kwargs=True)
        norm = layer.get_submodule(self._modules.ln2)
        if point.kind == "ln2.hook_normalized":
            return self._attach_normalized(norm, transform, stop)
        return self._attach_resid_mid(layer, norm, on_input)

    def _attach_normalized(self, norm, transform: Callable, stop: bool):
        """``ln2.hook_normalized``: the norm's input normalised before its weight; a replacement is what the
        weight then multiplies (the norm's output is recomputed from it)."""
        normalize, scale = _norm_functions(norm, self._torch)

        def on_output(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            new = transform(normalize(x))
            if stop:
                raise _StopForward
            if new is not None:
                return scale(new, x.dtype)

        return norm.register_forward_hook(on_output, with_kwargs=True)

    def _attach_resid_mid(self, layer, norm, on_input: Callable):
        """``hook_resid_mid``: the pre-MLP norm's input. A replacement is what the norm reads and, as the
        residual the layer adds the MLP to is not that input's tensor, also added (as the change) to the
        layer's output, so the forward continues from the replaced residual."""
        change = {}

        def on_norm_input(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            result = on_input(module, args, kwargs)
            if result is not None:
                new_args, new_kwargs = result
                change["delta"] = (new_args[0] if new_args else new_kwargs["hidden_states"]) - x
            return result

        def on_layer_output(module, args, output):
            delta = change.pop("delta", None)
            if delta is not None:
                first = _first(output) + delta
                return (first, *output[1:]) if isinstance(output, (tuple, list)) else first

        handles = [norm.register_forward_pre_hook(on_norm_input, with_kwargs=True),
                   layer.register_forward_hook(on_layer_output)]
        return _Handles(handles)

    def _forward(self, tokens: np.ndarray, handles: list):
        """Runs the model with ``handles`` attached (removed afterwards); ``None`` when a hook stopped it."""
        torch = self._torch
        try:
            with torch.inference_mode():
                return self.model(input_ids=torch.as_tensor(np.asarray(tokens), dtype=torch.long), use_cache=False)
        except _StopForward:
            return None
        finally:
            for handle in handles:
                handle.remove()

    def run(self, tokens: np.ndarray, hooks: Sequence[str] | Sequence[HookPoint]) -> dict[str, np.ndarray]:
        """Runs ``tokens`` [batch, seq] and returns ``{hook name: [batch, seq, d] float32 array}``.

        The forward stops right after the last hook any requested name needs.
        """
        points = as_hook_points(hooks, self.n_layers, self.config)
        captured = {}
        last = max(points, key=lambda p: p.order)

        def capture(name: str):
            return lambda x: captured.__setitem__(name, x.detach())

        # A block's attention and MLP hooks fire before its output hook, which then stops the pass.
        inner = last.kind in _INNER_KINDS
        handles = [self._attach(p, capture(p.name), stop=p == last and not inner) for p in points]
        if inner:
            handles.append(self._attach(HookPoint(f"blocks.{last.layer}.hook_resid_post", last.layer,
                                                  "hook_resid_post"), lambda x: None, stop=True))
        self._forward(tokens, handles)
        return {name: value.float().numpy() for name, value in captured.items()}

    def logits(self, tokens: np.ndarray, edit: HookEdit | Sequence[HookEdit] | None = None) -> np.ndarray:
        """Logits [batch, seq, vocab] (float32), with ``edit`` (one or several) applied during the pass.

        ``edit.replace`` is a JAX function: the activation crosses to JAX and back as float32. Several
        edits apply in the same pass, each as the forward reaches its hook, so an edit's ``source`` is read
        downstream of every earlier edit (a transcoder set replacing each layer's MLP in turn).
        """
        edits = as_edits(edit)
        handles = []
        for one in edits:
            sources = edit_sources(one)
            (point, *source_points) = parse_hooks([one.hook, *sources], self.n_layers, self.config)
            for source in source_points:
                if source.order > point.order:
                    raise ValueError(f"hook edit: source {source.name} does not come before {one.hook} in the "
                                     "forward pass")
            read: dict = {}  # source hook -> its activation in this pass
            for source in source_points:  # attached first: a module's input hook fires before its output hook
                handles.append(self._attach(source, lambda x, read=read, name=source.name:
                                            read.__setitem__(name, x.float().numpy())))
            handles.append(self._attach(point, self._transform(one, read if sources else None)))
        return self._forward(tokens, handles).logits.float().numpy()

    def _transform(self, edit: HookEdit, read: dict | None) -> Callable:
        """The hook function applying ``edit``; ``read`` gets its sources' activations first (``None``: none)."""
        replace = self._jitted_replace(edit.replace)

        def transform(x):
            args = (edit.operand, x.float().numpy())
            if read is not None:
                for source in edit_sources(edit):
                    if source not in read:
                        raise ValueError(f"hook edit: source {source} did not fire before {edit.hook}")
                    args += (read.pop(source),)
            new = np.array(replace(*args))  # writable
            return self._torch.from_numpy(new).to(x.dtype)

        return transform

    def _jitted_replace(self, replace: Callable) -> Callable:
        if replace not in self._replace_cache:
            self._replace_cache[replace] = jax.jit(replace)
        return self._replace_cache[replace]
