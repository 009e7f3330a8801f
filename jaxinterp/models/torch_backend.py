"""The transformers/torch extraction backend: any causal LM transformers loads, hooked by name.

torch is an optional dependency (``pip install jaxinterp[torch]``); it is imported only here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import numpy as np

from jaxinterp.models.hooks import HookEdit, HookPoint, as_hook_points, parse_hooks
from jaxinterp.models.source import ModelFiles, load_hf_config
from jaxinterp.models.support import check_torch_support

__all__ = ["TorchSourceModel", "HOOK_MODULES"]


class HookModules(NamedTuple):
    """Where a model type's hooks read: module paths in its ``AutoModelForCausalLM``.

    ``hook_embed`` is the output of ``embed``; ``hook_resid_pre`` / ``hook_resid_post`` the input and
    output of ``layers[L]``; ``hook_attn_out`` / ``hook_mlp_out`` the outputs of its ``attn_out`` /
    ``mlp_out`` submodules, each the module whose output the layer adds to the residual stream.
    """

    embed: str
    layers: str
    attn_out: str
    mlp_out: str


_LLAMA_LAYOUT = HookModules("model.embed_tokens", "model.layers", "self_attn", "mlp")
# Gemma-2/3 normalise the attention and MLP outputs before adding them: the hooks read those norms
_GEMMA_LAYOUT = HookModules("model.embed_tokens", "model.layers", "post_attention_layernorm",
                            "post_feedforward_layernorm")
# per model type (the whitelist itself is support.TORCH_MODEL_TYPES); tested in tests/test_model_support.py and
# tests/test_model_families_gemma_neox.py: resid_post = resid_pre + attn_out + mlp_out, every hook equal to JAX
HOOK_MODULES: dict[str, HookModules] = {
    "llama": _LLAMA_LAYOUT, "mistral": _LLAMA_LAYOUT, "qwen2": _LLAMA_LAYOUT, "qwen3": _LLAMA_LAYOUT,
    "gemma2": _GEMMA_LAYOUT, "gemma3_text": _GEMMA_LAYOUT,
    "gpt2": HookModules("transformer.wte", "transformer.h", "attn", "mlp"),
    "gpt_neox": HookModules("gpt_neox.embed_in", "gpt_neox.layers", "attention", "mlp"),
}


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
        self.model_class = type(model).__name__
        self.n_layers = len(self._layers)
        self.d_model = int(self.config.hidden_size)
        self._replace_cache: dict[Callable, Callable] = {}

    def parse_hooks(self, names: str | Sequence[str]) -> list[HookPoint]:
        """Parses hook names against this model's depth."""
        return parse_hooks(names, self.n_layers)

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
        return getattr(layer, self._attn if point.kind == "hook_attn_out" else self._mlp).register_forward_hook(on_output)

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
        points = as_hook_points(hooks, self.n_layers)
        captured = {}
        last = max(points, key=lambda p: p.order)

        def capture(name: str):
            return lambda x: captured.__setitem__(name, x.detach())

        # A block's attention and MLP hooks fire before its output hook, which then stops the pass.
        inner = last.kind in ("hook_attn_out", "hook_mlp_out")
        handles = [self._attach(p, capture(p.name), stop=p == last and not inner) for p in points]
        if inner:
            handles.append(self._attach(HookPoint(f"blocks.{last.layer}.hook_resid_post", last.layer,
                                                  "hook_resid_post"), lambda x: None, stop=True))
        self._forward(tokens, handles)
        return {name: value.float().numpy() for name, value in captured.items()}

    def logits(self, tokens: np.ndarray, edit: HookEdit | None = None) -> np.ndarray:
        """Logits [batch, seq, vocab] (float32), with ``edit`` applied during the pass.

        ``edit.replace`` is a JAX function: the activation crosses to JAX and back as float32.
        """
        handles = []
        if edit is not None:
            (point,) = parse_hooks([edit.hook], self.n_layers)
            replace = self._jitted_replace(edit.replace)

            def transform(x):
                new = np.array(replace(edit.operand, x.float().numpy()))  # writable
                return self._torch.from_numpy(new).to(x.dtype)

            handles.append(self._attach(point, transform))
        return self._forward(tokens, handles).logits.float().numpy()

    def _jitted_replace(self, replace: Callable) -> Callable:
        if replace not in self._replace_cache:
            self._replace_cache[replace] = jax.jit(replace)
        return self._replace_cache[replace]
