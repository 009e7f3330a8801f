"""Hook points named the TransformerLens way, shared by every backend.

``hook_embed``, ``blocks.L.hook_resid_pre``, ``blocks.L.hook_resid_post``,
``blocks.L.hook_attn_out``, ``blocks.L.hook_mlp_out``. A backend maps these to its own modules;
the forward pass stops after the last layer any requested hook needs.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

__all__ = ["HookEdit", "HookPoint", "as_hook_points", "parse_hooks", "valid_hook_names", "HookError", "LAYER_KINDS"]

LAYER_KINDS = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")
_PATTERN = re.compile(r"^blocks\.(\d+)\.(hook_\w+)$")


class HookError(ValueError):
    """An unknown hook name; the message lists the valid ones."""


class HookEdit(NamedTuple):
    """Replaces one hook's activation during a forward pass, on either backend.

    ``replace(operand, x)`` is a pure JAX function of ``x`` [batch, seq, d] (float32) returning the
    new activation; ``operand`` is a pytree of arrays it reads (e.g. SAE params). Keep one
    ``HookEdit`` per edit: the JAX backend compiles once per ``(hook, replace)`` pair.
    """

    hook: str
    replace: Callable[[Any, Any], Any]
    operand: Any = None


class HookPoint(NamedTuple):
    """A parsed hook: ``layer`` is -1 for ``hook_embed``."""

    name: str
    layer: int
    kind: str

    @property
    def order(self) -> tuple[int, int]:
        """Position in the forward pass: (layer, 0) before the layer runs, (layer, 1) after."""
        return (self.layer, 0 if self.kind == "hook_resid_pre" else 1)


def valid_hook_names(n_layers: int) -> list[str]:
    """Every hook name a model with ``n_layers`` blocks supports."""
    return ["hook_embed"] + [f"blocks.{layer}.{kind}" for layer in range(n_layers) for kind in LAYER_KINDS]


def _describe_valid(n_layers: int) -> str:
    return "hook_embed, " + ", ".join(f"blocks.{{0..{n_layers - 1}}}.{kind}" for kind in LAYER_KINDS)


def parse_hooks(names: str | Sequence[str], n_layers: int) -> list[HookPoint]:
    """Parses hook names (a list or a comma-separated string); unknown names list the valid ones."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise HookError(f"no hooks requested; valid hooks: {_describe_valid(n_layers)}")
    valid = valid_hook_names(n_layers)
    hooks = []
    for name in names:
        match = _PATTERN.match(name)
        if name == "hook_embed":
            hooks.append(HookPoint(name, -1, "hook_embed"))
        elif match and int(match.group(1)) < n_layers and match.group(2) in LAYER_KINDS:
            hooks.append(HookPoint(name, int(match.group(1)), match.group(2)))
        else:
            close = difflib.get_close_matches(name, valid, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise HookError(
                f"unknown hook '{name}' for this {n_layers}-layer model{hint}; valid hooks: {_describe_valid(n_layers)}"
            )
    if len(set(names)) != len(names):
        raise HookError(f"hooks listed twice: {sorted(n for n in set(names) if names.count(n) > 1)}")
    return hooks


def as_hook_points(hooks: Sequence[str] | Sequence[HookPoint], n_layers: int) -> list[HookPoint]:
    """``hooks`` as parsed points: already-parsed lists pass through, names are parsed."""
    points = [h for h in hooks if isinstance(h, HookPoint)]
    return points if len(points) == len(hooks) else parse_hooks(list(hooks), n_layers)
