"""Checkpoint tensors as float32 numpy arrays, keyed by the parameter names transformers uses.

``load_hf_weights`` reads a local model (see :func:`jaxinterp.models.files.resolve_model`) without
torch: safetensors directories through ``safetensors``, Llama-family GGUF files through ``gguf``.
(The config still comes from transformers, whose GGUF metadata parser insists torch be installed.)
The arrays equal what ``AutoModelForCausalLM.from_pretrained(...).state_dict()`` holds, so a JAX
model can be filled from them by name::

    config, weights = load_hf_weights(resolve_model("smollm2"))
    weights["model.layers.3.self_attn.q_proj.weight"]  # [out, in] float32
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import transformers

from jaxinterp.faults import read_json
from jaxinterp.models.files import ModelFiles, load_hf_config

if TYPE_CHECKING:
    from gguf import GGUFReader

__all__ = ["load_hf_weights"]

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"

# GGUF block tensor (``blk.N.<part>``) → HF module under ``model.layers.N``.
GGUF_LLAMA_BLOCK_MODULES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
GGUF_LLAMA_TOP_MODULES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
# Precomputed rotary tables, not model parameters; transformers drops them too.
GGUF_LLAMA_NON_PARAMETERS = re.compile(r"rope_freqs\.weight|blk\.\d+\.attn_rot_embd\.weight")
GGUF_BLOCK_TENSOR = re.compile(r"blk\.(?P<layer>\d+)\.(?P<part>\w+)\.(?P<kind>weight|bias)")
GGUF_TOP_TENSOR = re.compile(r"(?P<part>\w+)\.(?P<kind>weight|bias)")


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
      NotImplementedError: a GGUF file whose architecture is not ``llama``, or a tensor this
        mapping does not know (e.g. llama-architecture MoE experts).
    """
    # Open the GGUF first so an unsupported architecture fails before transformers parses its metadata.
    gguf_reader = _open_gguf_llama(Path(files.directory) / files.gguf_file) if files.gguf_file else None
    config = load_hf_config(files)
    if gguf_reader is not None:
        return config, _read_gguf_llama(gguf_reader, config)
    return config, _read_safetensors(Path(files.directory))


def _safetensors_files(directory: Path) -> list[Path]:
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
    for path in _safetensors_files(directory):
        # The numpy framework yields bf16/fp8 as ml_dtypes arrays, which upcast exactly.
        with safe_open(str(path), framework="numpy") as checkpoint:
            for name in checkpoint.keys():
                weights[name] = np.asarray(checkpoint.get_tensor(name), dtype=np.float32)
    return weights


def _gguf_llama_hf_name(gguf_name: str) -> str | None:
    """``blk.3.attn_q.weight`` → ``model.layers.3.self_attn.q_proj.weight``; None for non-parameters."""
    if GGUF_LLAMA_NON_PARAMETERS.fullmatch(gguf_name):
        return None
    if (match := GGUF_BLOCK_TENSOR.fullmatch(gguf_name)) and match["part"] in GGUF_LLAMA_BLOCK_MODULES:
        return f"model.layers.{match['layer']}.{GGUF_LLAMA_BLOCK_MODULES[match['part']]}.{match['kind']}"
    if (match := GGUF_TOP_TENSOR.fullmatch(gguf_name)) and match["part"] in GGUF_LLAMA_TOP_MODULES:
        return f"{GGUF_LLAMA_TOP_MODULES[match['part']]}.{match['kind']}"
    raise NotImplementedError(f"GGUF tensor '{gguf_name}' has no Llama parameter mapping")


def _unpermute_rotary_rows(weights: np.ndarray, n_heads: int) -> np.ndarray:
    """Undoes llama.cpp's q/k row permutation (interleaved → half-split rotary pairs per head).

    Mirrors ``LlamaTensorProcessor._reverse_permute_weights`` in transformers' GGUF loader.
    """
    head_dim_half = weights.shape[0] // n_heads // 2
    per_head = weights.reshape(n_heads, head_dim_half, 2, *weights.shape[1:])
    return per_head.swapaxes(2, 1).reshape(weights.shape)


def _open_gguf_llama(path: Path) -> GGUFReader:
    """Memory-maps a GGUF file, refusing any architecture but ``llama``."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    architecture = reader.fields["general.architecture"].contents()
    if architecture != "llama":
        raise NotImplementedError(
            f"{path.name}: GGUF architecture '{architecture}' is not supported; only 'llama' GGUF files load"
        )
    return reader


def _read_gguf_llama(reader: GGUFReader, config: transformers.PretrainedConfig) -> dict[str, np.ndarray]:
    """Dequantizes every parameter of a ``llama``-architecture GGUF file to HF names and layouts."""
    from gguf.quants import dequantize

    rotary_heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    weights = {}
    for tensor in reader.tensors:
        hf_name = _gguf_llama_hf_name(tensor.name)
        if hf_name is None:
            continue
        # GGUF lists dims fastest-first; numpy (and HF) order is the reverse.
        hf_shape = tuple(int(dim) for dim in reversed(tensor.shape))
        # Copy: for F32 tensors dequantize returns a view into the memory-mapped file.
        values = np.array(dequantize(tensor.data, tensor.tensor_type).reshape(hf_shape), dtype=np.float32)
        part = tensor.name.split(".")[-2]
        if part in rotary_heads:
            values = _unpermute_rotary_rows(values, rotary_heads[part])
        weights[hf_name] = values
    return weights
