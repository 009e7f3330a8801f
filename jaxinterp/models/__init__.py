"""Source transformers: hook names, model resolution, and the extraction backends."""

from jaxinterp.models.hooks import LAYER_KINDS, HookError, HookPoint, parse_hooks, valid_hook_names
from jaxinterp.models.source import SMOLLM2, ModelFiles, load_source_model, resolve_model

__all__ = [
    "LAYER_KINDS",
    "SMOLLM2",
    "HookError",
    "HookPoint",
    "ModelFiles",
    "load_source_model",
    "parse_hooks",
    "resolve_model",
    "valid_hook_names",
]

