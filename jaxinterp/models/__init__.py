"""Source transformers: hook names, model resolution, and the extraction backends."""

from jaxinterp.models.hooks import LAYER_KINDS, HookError, HookPoint, parse_hooks, valid_hook_names
from jaxinterp.models.source import SMOLLM2, ModelFiles, resolve_model

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


def load_source_model(spec: str, backend: str = "auto", dtype: str = "float32"):
    """Loads a source model for extraction/evaluation on the chosen backend.

    ``auto`` picks torch until the JAX-native backend lands; ``jax`` says so clearly.
    """
    files = resolve_model(spec)
    if backend == "jax":
        raise NotImplementedError("config field 'backend': the JAX-native backend is not built yet; use 'torch' or 'auto'")
    from jaxinterp.models.torch_backend import TorchSourceModel

    return TorchSourceModel(files, dtype=dtype)
