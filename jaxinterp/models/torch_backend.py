"""The transformers/torch extraction backend: any causal LM transformers loads, hooked by name.

torch is an optional dependency (``pip install jaxinterp[torch]``); it is imported only here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from jaxinterp.models.hooks import HookPoint, as_hook_points, parse_hooks
from jaxinterp.models.source import ModelFiles

__all__ = ["TorchSourceModel"]


class _StopForward(Exception):
    """Raised by a hook to end the forward pass once the last requested hook has fired."""


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


class TorchSourceModel:
    """A transformers ``AutoModelForCausalLM`` with TransformerLens-named capture hooks.

    Supports the Llama family (``model.layers``: Llama, Mistral, Qwen2, SmolLM) and GPT-2
    (``transformer.h``). Example::

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

        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        self.files = files
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        model = AutoModelForCausalLM.from_pretrained(
            files.directory, gguf_file=files.gguf_file, dtype=torch_dtype, local_files_only=True
        )
        self.model = model.eval()
        self.config = model.config
        if hasattr(model, "model") and hasattr(model.model, "layers"):
            self._embed, self._layers = model.model.embed_tokens, model.model.layers
            self._attn, self._mlp = "self_attn", "mlp"
        elif hasattr(model, "transformer") and hasattr(model.transformer, "h"):
            self._embed, self._layers = model.transformer.wte, model.transformer.h
            self._attn, self._mlp = "attn", "mlp"
        else:
            raise NotImplementedError(
                f"{type(model).__name__}: only Llama-family (model.layers) and GPT-2 (transformer.h) are supported"
            )
        self.model_class = type(model).__name__
        self.n_layers = len(self._layers)
        self.d_model = int(self.config.hidden_size)

    def parse_hooks(self, names: str | Sequence[str]) -> list[HookPoint]:
        """Parses hook names against this model's depth."""
        return parse_hooks(names, self.n_layers)

    def run(self, tokens: np.ndarray, hooks: Sequence[str] | Sequence[HookPoint]) -> dict[str, np.ndarray]:
        """Runs ``tokens`` [batch, seq] and returns ``{hook name: [batch, seq, d] float32 array}``.

        The forward stops right after the last hook any requested name needs.
        """
        torch = self._torch
        points = as_hook_points(hooks, self.n_layers)
        captured: dict[str, torch.Tensor] = {}
        last = max(points, key=lambda p: p.order)

        def on_output(name: str | None, stop: bool):
            def hook(module, args, output):
                if name is not None:
                    captured[name] = _first(output).detach()
                if stop:
                    raise _StopForward

            return hook

        def on_input(name: str, stop: bool):
            def hook(module, args, kwargs):
                captured[name] = (args[0] if args else kwargs["hidden_states"]).detach()
                if stop:
                    raise _StopForward

            return hook

        handles = []
        for point in points:
            stop = point == last
            if point.kind == "hook_embed":
                handles.append(self._embed.register_forward_hook(on_output(point.name, stop)))
            elif point.kind == "hook_resid_pre":
                handles.append(
                    self._layers[point.layer].register_forward_pre_hook(on_input(point.name, stop), with_kwargs=True)
                )
            elif point.kind == "hook_resid_post":
                handles.append(self._layers[point.layer].register_forward_hook(on_output(point.name, stop)))
            else:
                sub = self._attn if point.kind == "hook_attn_out" else self._mlp
                handles.append(getattr(self._layers[point.layer], sub).register_forward_hook(on_output(point.name, False)))
        if last.kind in ("hook_attn_out", "hook_mlp_out"):
            # The block's own output hook fires after its attention and MLP hooks.
            handles.append(self._layers[last.layer].register_forward_hook(on_output(None, True)))
        try:
            with torch.inference_mode():
                self.model(input_ids=torch.as_tensor(np.asarray(tokens), dtype=torch.long), use_cache=False)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return {name: value.float().numpy() for name, value in captured.items()}

