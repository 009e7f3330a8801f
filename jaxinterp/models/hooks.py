"""Hook points named the TransformerLens way, shared by every backend.

``hook_embed``, ``blocks.L.hook_resid_pre``, ``blocks.L.hook_resid_post``,
``blocks.L.hook_attn_out``, ``blocks.L.hook_mlp_out`` (the residual stream and what each sublayer adds), and
inside a block ``blocks.L.attn.hook_z`` (per-head attention outputs before the output projection,
[n_heads * d_head]), ``blocks.L.hook_resid_mid`` (the residual between attention and MLP),
``blocks.L.ln2.hook_normalized`` (the pre-MLP norm before its weight, float32), ``blocks.L.mlp.hook_in``
(the MLP's input, the norm's output) and ``blocks.L.mlp.hook_post`` (the MLP's hidden activations,
[d_mlp]). A backend maps these to its own modules; the forward pass stops after the last layer any
requested hook needs. A parallel-residual model (GPT-NeoX / Pythia) has no ``hook_resid_mid``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

__all__ = ["HookEdit", "HookPoint", "as_edits", "edit_sources", "as_hook_points", "parse_hooks", "valid_hook_names", "HookError",
           "LAYER_KINDS", "RESIDUAL_KINDS", "SUBBLOCK_KINDS", "hook_width", "layer_count", "refused_kinds"]

RESIDUAL_KINDS = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")
SUBBLOCK_KINDS = ("attn.hook_z", "hook_resid_mid", "ln2.hook_normalized", "mlp.hook_in", "mlp.hook_post")
LAYER_KINDS = RESIDUAL_KINDS + SUBBLOCK_KINDS
_PATTERN = re.compile(r"^blocks\.(\d+)\.((?:attn\.|ln2\.|mlp\.)?hook_\w+)$")


class HookError(ValueError):
    """An unknown hook name; the message lists the valid ones."""


class HookEdit(NamedTuple):
    """Replaces one hook's activation during a forward pass, on either backend.

    ``replace(operand, x)`` is a pure JAX function of ``x`` [batch, seq, d] (float32) returning the
    new activation; ``operand`` is a pytree of arrays it reads (e.g. SAE params). Keep one
    ``HookEdit`` per edit: the JAX backend compiles once per ``(hook, replace, source)``.

    With ``source`` (a hook earlier in the forward pass, e.g. ``blocks.6.mlp.hook_in`` for a
    transcoder replacing ``blocks.6.hook_mlp_out``), the edit reads that hook's activation in the
    same pass and ``replace(operand, x, source_x)`` gets it too. ``source`` may be a tuple of such hooks
    (a cross-layer transcoder's target reads every earlier layer's input): ``replace(operand, x, *source_xs)``,
    in the tuple's order.
    """

    hook: str
    replace: Callable[..., Any]
    operand: Any = None
    source: str | tuple[str, ...] = ""


def edit_sources(edit: HookEdit) -> tuple[str, ...]:
    """The hooks ``edit`` reads besides its own: ``()``, its one ``source``, or its tuple of them."""
    return (edit.source,) if isinstance(edit.source, str) and edit.source else tuple(edit.source)


def as_edits(edit: HookEdit | Sequence[HookEdit] | None) -> tuple[HookEdit, ...]:
    """``edit`` as a tuple of edits (``()`` for none), what the backends' ``logits`` apply in one pass."""
    if edit is None:
        return ()
    return (edit,) if isinstance(edit, HookEdit) else tuple(edit)


class HookPoint(NamedTuple):
    """A parsed hook: ``layer`` is -1 for ``hook_embed``."""

    name: str
    layer: int
    kind: str

    @property
    def order(self) -> tuple[int, int]:
        """Position in the forward pass: (layer, 0) before the layer runs, (layer, 1) after."""
        return (self.layer, 0 if self.kind == "hook_resid_pre" else 1)


def refused_kinds(config: Any = None) -> dict[str, str]:
    """``{kind: why}`` for the hook kinds a model of HF ``config`` does not have (none without a config)."""
    if config is not None and getattr(config, "model_type", None) == "gpt_neox" \
            and getattr(config, "use_parallel_residual", False):
        return {"hook_resid_mid": "this GPT-NeoX model has a parallel residual (use_parallel_residual=True: attention "
                                  "and MLP both read the layer input), so there is no residual between them"}
    return {}


def hook_width(config: Any, kind: str) -> int:
    """The width of hook ``kind``'s activation for HF ``config``: ``n_heads * d_head`` for ``attn.hook_z``,
    the MLP width for ``mlp.hook_post``, ``hidden_size`` otherwise."""
    hidden = int(config.hidden_size)
    if kind == "attn.hook_z":
        heads = int(config.num_attention_heads)
        return heads * int(getattr(config, "head_dim", None) or hidden // heads)
    if kind == "mlp.hook_post":
        if config.model_type == "gpt2":
            return int(getattr(config, "n_inner", None) or 4 * hidden)
        return int(config.intermediate_size)
    return hidden


def valid_hook_names(n_layers: int, config: Any = None) -> list[str]:
    """Every hook name a model with ``n_layers`` blocks (and HF ``config``, when given) supports."""
    kinds = [kind for kind in LAYER_KINDS if kind not in refused_kinds(config)]
    return ["hook_embed"] + [f"blocks.{layer}.{kind}" for layer in range(n_layers) for kind in kinds]


def _describe_valid(n_layers: int, config: Any = None) -> str:
    kinds = [kind for kind in LAYER_KINDS if kind not in refused_kinds(config)]
    return "hook_embed, " + ", ".join(f"blocks.{{0..{n_layers - 1}}}.{kind}" for kind in kinds)


def _check_refused(points: Sequence[HookPoint], config: Any) -> None:
    refused = refused_kinds(config)
    for point in points:
        if point.kind in refused:
            raise HookError(f"hook '{point.name}' does not exist: {refused[point.kind]}; hook "
                            f"blocks.{point.layer}.hook_resid_pre or blocks.{point.layer}.ln2.hook_normalized instead")


def layer_count(config: Any) -> int:
    """The number of transformer blocks an HF ``config`` describes (``num_hidden_layers``, or GPT-2's ``n_layer``)."""
    return int(getattr(config, "num_hidden_layers", getattr(config, "n_layer", 0)))


def parse_hooks(names: str | Sequence[str], n_layers: int, config: Any = None) -> list[HookPoint]:
    """Parses hook names (a list or a comma-separated string); unknown names list the valid ones.

    With the model's HF ``config``, a hook kind the model does not have (:func:`refused_kinds`) is refused.
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise HookError(f"no hooks requested; valid hooks: {_describe_valid(n_layers, config)}")
    valid = valid_hook_names(n_layers, config)
    hooks = []
    for name in names:
        match = _PATTERN.match(name)
        if name == "hook_embed":
            hooks.append(HookPoint(name, -1, "hook_embed"))
        elif match and int(match.group(1)) < n_layers and match.group(2) in LAYER_KINDS:
            hooks.append(HookPoint(name, int(match.group(1)), match.group(2)))
            _check_refused(hooks[-1:], config)
        else:
            close = difflib.get_close_matches(name, valid, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise HookError(
                f"unknown hook '{name}' for this {n_layers}-layer model{hint}; valid hooks: "
                f"{_describe_valid(n_layers, config)}"
            )
    if len(set(names)) != len(names):
        raise HookError(f"hooks listed twice: {sorted(n for n in set(names) if names.count(n) > 1)}")
    return hooks


def as_hook_points(hooks: Sequence[str] | Sequence[HookPoint], n_layers: int, config: Any = None) -> list[HookPoint]:
    """``hooks`` as parsed points: already-parsed lists pass through (checked against ``config``), names are parsed."""
    points = [h for h in hooks if isinstance(h, HookPoint)]
    if len(points) == len(hooks):
        _check_refused(points, config)
        return points
    return parse_hooks(list(hooks), n_layers, config)
