"""Source transformers: hook names, model resolution, JAX-native (flax.nnx) and torch backends, generation."""

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
    "generate",
    "generate_uncached",
    "hook_width",
    "load_hf_config",
    "load_source_model",
    "load_tokenizer",
    "parse_hooks",
    "resolve_model",
    "valid_hook_names",
]



def __getattr__(name: str):
    # generation imports jax and every family: loaded on first use, as loading.py loads the backends
    if name in ("generate", "generate_uncached"):
        from jaxinterp.models import generation

        return getattr(generation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
