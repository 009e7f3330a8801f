"""Source transformers: hook names, model resolution, JAX-native (flax.nnx) and torch backends."""

from jaxinterp.models.hooks import (LAYER_KINDS, SUBBLOCK_KINDS, HookEdit, HookError, HookPoint, hook_width, parse_hooks,
                                    valid_hook_names)
from jaxinterp.models.files import SMOLLM2, ModelFiles, load_hf_config, load_tokenizer, resolve_model
from jaxinterp.models.loading import choose_backend, load_source_model
from jaxinterp.models.support import UnsupportedModelError

__all__ = [
    "LAYER_KINDS",
    "SUBBLOCK_KINDS",
    "SMOLLM2",
    "HookEdit",
    "HookError",
    "HookPoint",
    "ModelFiles",
    "UnsupportedModelError",
    "choose_backend",
    "hook_width",
    "load_hf_config",
    "load_source_model",
    "load_tokenizer",
    "parse_hooks",
    "resolve_model",
    "valid_hook_names",
]

