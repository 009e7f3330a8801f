"""Checkpoint tensors as float32 numpy arrays, keyed by the parameter names transformers uses.

``load_hf_weights`` reads a local model (see :func:`jaxinterp.models.files.resolve_model`) without
torch: safetensors directories through ``safetensors``, GGUF files through ``gguf`` for the
architectures :mod:`jaxinterp.models.gguf_weights` maps (llama, qwen2, qwen3, gemma2, gemma3; any
other is refused in one line). (The config still comes from transformers, whose GGUF metadata
parser insists torch be installed.)
The arrays equal what ``AutoModelForCausalLM.from_pretrained(...).state_dict()`` holds, so a JAX
model can be filled from them by name::

    config, weights = load_hf_weights(resolve_model("smollm2"))
    weights["model.layers.3.self_attn.q_proj.weight"]  # [out, in] float32
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import transformers

from jaxinterp.faults import read_json
from jaxinterp.models.files import ModelFiles, load_hf_config
from jaxinterp.models.gguf_weights import open_gguf, read_gguf

__all__ = ["load_hf_weights", "safetensors_files"]

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"

def load_hf_weights(files: ModelFiles) -> tuple[transformers.PretrainedConfig, dict[str, np.ndarray]]:
    """Reads every parameter of a local checkpoint into float32 numpy arrays.

    Args:
      files: a resolved model; ``gguf_file`` set means a GGUF checkpoint, else a safetensors directory.

    Returns:
      The transformers config and ``{parameter name: float32 array}`` with the names and shapes of
      the loaded transformers model's ``state_dict``. Tied parameters appear once, under the name
      that is stored (e.g. no ``lm_head.weight`` when ``tie_word_embeddings``).

    Raises:
      FileNotFoundError: the directory has no safetensors weights (``.bin`` checkpoints need torch).
      NotImplementedError: a GGUF file whose architecture :mod:`jaxinterp.models.gguf_weights` does
        not map, or a tensor it does not know (e.g. llama-architecture MoE experts).
    """
    # Open the GGUF first so an unsupported architecture fails before transformers parses its metadata.
    gguf_reader = open_gguf(Path(files.directory) / files.gguf_file) if files.gguf_file else None
    config = load_hf_config(files)
    if gguf_reader is not None:
        return config, read_gguf(gguf_reader, config)
    return config, _read_safetensors(Path(files.directory))


def safetensors_files(directory: Path) -> list[Path]:
    """The weight files ``from_pretrained`` reads: one file, or the shards a sharded index lists."""
    if (directory / SAFETENSORS_FILE).exists():
        return [directory / SAFETENSORS_FILE]
    index = directory / SAFETENSORS_INDEX_FILE
    if index.exists():
        shards = sorted(set(read_json(index, "safetensors index")["weight_map"].values()))
        return [directory / shard for shard in shards]
    raise FileNotFoundError(
        f"{directory}: no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX_FILE}; only safetensors checkpoints are supported"
    )


def _read_safetensors(directory: Path) -> dict[str, np.ndarray]:
    """All tensors of a (possibly sharded) safetensors checkpoint, names as stored, upcast to float32."""
    from safetensors import safe_open

    weights = {}
    for path in safetensors_files(directory):
        # The numpy framework yields bf16/fp8 as ml_dtypes arrays, which upcast exactly.
        with safe_open(str(path), framework="numpy") as checkpoint:
            for name in checkpoint.keys():
                weights[name] = np.asarray(checkpoint.get_tensor(name), dtype=np.float32)
    return weights
