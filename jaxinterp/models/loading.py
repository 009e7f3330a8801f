"""Choosing the backend that computes a source model exactly, and loading the model on it.

The JAX backend (:mod:`jaxinterp.models.jax_backend`) and the torch backend
(:mod:`jaxinterp.models.torch_backend`) read local files (:mod:`jaxinterp.models.files`); this
module alone imports them (lazily: torch is optional, and each backend is heavy).
"""

from __future__ import annotations

from jaxinterp.models.files import load_hf_config, resolve_model, torch_available

__all__ = ["choose_backend", "load_source_model"]


def choose_backend(config, backend: str) -> str:
    """The backend that computes ``config``'s model exactly: ``backend`` itself, or for ``auto`` a choice.

    ``config`` is the model's transformers config, or a bare ``model_type`` string (then only the
    model type is checked). ``auto`` picks ``jax`` for what the JAX backend computes exactly, else
    ``torch`` where torch does (see :mod:`jaxinterp.models.support`). One measured exception: on a
    CPU-only host with torch installed, ``auto`` picks torch, whose CPU forward ran 1.5-2.4x faster
    than XLA's on SmolLM2 (bench/RESULTS.md); on GPU/TPU, or without torch, supported models run in JAX.

    Raises:
      UnsupportedModelError: (a ConfigError, printed as one line) when the chosen backend, or for
        ``auto`` every backend, would not compute the model exactly; the message names the model
        type or the config attribute and its value, and what would handle it.
    """
    from jaxinterp.models.support import (UnsupportedModelError, check_jax_support, check_torch_support,
                                          jax_refusal, torch_refusal)

    model_type = config if isinstance(config, str) else config.model_type
    if backend == "torch":
        check_torch_support(model_type)
        return backend
    if backend == "jax":
        check_jax_support(config)
        return backend
    jax_reason, torch_reason = jax_refusal(config), torch_refusal(model_type)
    if jax_reason is None:
        import jax

        return "torch" if jax.default_backend() == "cpu" and torch_available() and torch_reason is None else "jax"
    if torch_reason is not None:
        raise UnsupportedModelError(f"config field 'model': no backend computes it exactly: {jax_reason}, "
                                    f"and {torch_reason}")
    if not torch_available():
        raise UnsupportedModelError(f"config field 'backend': {jax_reason}; the torch backend computes it exactly "
                                    "but torch is not installed (pip install torch, or jaxinterp[torch])")
    return "torch"


def load_source_model(spec: str, backend: str = "auto", dtype: str = "float32", mesh=None):
    """Loads a source model on the chosen backend (``auto``: see :func:`choose_backend`).

    A model the backend would not compute exactly is refused (``UnsupportedModelError``) before
    its weights are read.

    Both backends return an object with ``run(tokens, hooks) -> {hook: np.ndarray}``,
    ``parse_hooks``, ``n_layers``, ``d_model`` and ``model_class``.
    """
    files = resolve_model(spec)
    if backend == "torch":  # it checks the model type itself (after loading, for a raw GGUF file)
        from jaxinterp.models.torch_backend import TorchSourceModel

        return TorchSourceModel(files, dtype=dtype)
    chosen = choose_backend(load_hf_config(files), backend)
    if chosen == "jax":
        from jaxinterp.models.jax_backend import JaxSourceModel

        return JaxSourceModel(files, dtype=dtype, mesh=mesh)
    from jaxinterp.models.torch_backend import TorchSourceModel

    return TorchSourceModel(files, dtype=dtype)
