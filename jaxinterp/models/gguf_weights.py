"""GGUF checkpoints as float32 numpy arrays under transformers' parameter names, without torch.

One small table per GGUF architecture says what transformers' own GGUF reader
(``transformers.modeling_gguf_pytorch_utils``) does with it: the HF ``model_type`` its config parser
gives, the HF modules of a decoder block, and the per-tensor layout fix-up its ``TensorProcessor``
applies. The GGUF tensor names come from ``gguf``'s ``TensorNameMap``, as in transformers. Every
architecture here is tested equal to transformers' loader, tensor by tensor (tests/test_gguf_families.py);
any other architecture, and any tensor the table does not name, is refused in one line::

    reader = open_gguf(Path("qwen2.5-0.5b-q8_0.gguf"))   # refuses an unmapped architecture
    weights = read_gguf(reader, config)                  # {"model.layers.0.self_attn.q_proj.weight": ...}
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from gguf import GGUFReader

__all__ = ["GGUF_ARCHITECTURES", "GGUFArchitecture", "gguf_hf_names", "open_gguf", "read_gguf"]

Fixup = Callable[[str, np.ndarray, Any], np.ndarray]


def _unpermute_rotary_rows(weights: np.ndarray, n_heads: int) -> np.ndarray:
    """Undoes llama.cpp's q/k row permutation (interleaved → half-split rotary pairs per head).

    Mirrors ``LlamaTensorProcessor._reverse_permute_weights`` in transformers' GGUF loader.
    """
    head_dim_half = weights.shape[0] // n_heads // 2
    per_head = weights.reshape(n_heads, head_dim_half, 2, *weights.shape[1:])
    return per_head.swapaxes(2, 1).reshape(weights.shape)


def _llama_rotary_rows(gguf_name: str, values: np.ndarray, config: Any) -> np.ndarray:
    """llama.cpp's Llama converter interleaves each q/k head's rotary pairs (``LlamaTensorProcessor``)."""
    if ".attn_q." in gguf_name:
        return _unpermute_rotary_rows(values, config.num_attention_heads)
    if ".attn_k." in gguf_name:
        return _unpermute_rotary_rows(values, config.num_key_value_heads)
    return values


def _gemma_norm_offset(gguf_name: str, values: np.ndarray, config: Any) -> np.ndarray:
    """llama.cpp stores Gemma's ``(1 + w)`` RMSNorm weights as ``1 + w`` (``Gemma2TensorProcessor``)."""
    return values - 1 if "norm.weight" in gguf_name else values


def _as_stored(gguf_name: str, values: np.ndarray, config: Any) -> np.ndarray:
    """No fix-up: transformers' base ``TensorProcessor`` (e.g. Qwen2/Qwen3, which llama.cpp does not permute)."""
    return values


class GGUFArchitecture(NamedTuple):
    """What transformers' GGUF reader does with one ``general.architecture``."""

    model_type: str  # the HF model_type transformers' GGUF config parser gives it
    block_modules: tuple[str, ...]  # HF modules under ``model.layers.N``
    fixup: Fixup  # the layout fix-up transformers' TensorProcessor applies to each dequantised tensor


TOP_MODULES = ("model.embed_tokens", "model.norm", "lm_head")
_LLAMA_BLOCK = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")
_QK_NORMS = ("self_attn.q_norm", "self_attn.k_norm")
_GEMMA_POST_NORMS = ("pre_feedforward_layernorm", "post_feedforward_layernorm")

# Keyed by GGUF ``general.architecture``. Not here: llama-architecture files that transformers parses as
# 'mistral' (general.name exactly 'mistral'), whose weights transformers' own loader fails to map, and
# every architecture transformers' GGUF reader does not read at all (e.g. gptneox).
GGUF_ARCHITECTURES: dict[str, GGUFArchitecture] = {
    "llama": GGUFArchitecture("llama", _LLAMA_BLOCK, _llama_rotary_rows),
    "qwen2": GGUFArchitecture("qwen2", _LLAMA_BLOCK, _as_stored),
    "qwen3": GGUFArchitecture("qwen3", _LLAMA_BLOCK + _QK_NORMS, _as_stored),
    "gemma2": GGUFArchitecture("gemma2", _LLAMA_BLOCK + _GEMMA_POST_NORMS, _gemma_norm_offset),
    "gemma3": GGUFArchitecture("gemma3_text", _LLAMA_BLOCK + _QK_NORMS + _GEMMA_POST_NORMS, _gemma_norm_offset),
}
# Precomputed rotary tables, not model parameters; transformers drops them too.
NON_PARAMETERS = re.compile(r"rope_freqs\.weight|blk\.\d+\.attn_rot_embd\.weight")
_WHAT_TO_DO = ("install torch so resolve_model converts the file through transformers (where transformers reads "
               "it), or use the model's safetensors checkpoint")


def gguf_hf_names(architecture: str, n_layers: int) -> dict[str, str]:
    """``{GGUF module: HF module}``, e.g. ``blk.3.attn_q`` → ``model.layers.3.self_attn.q_proj``.

    Built as transformers builds it: each HF module of the table is named by ``gguf``'s
    ``TensorNameMap`` for the architecture (an HF module the architecture has no tensor for, such as
    Gemma-2's tied ``lm_head``, is left out).
    """
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    table = GGUF_ARCHITECTURES[architecture]
    arch = next(key for key, name in MODEL_ARCH_NAMES.items() if name == architecture)
    name_map = get_tensor_name_map(arch, n_layers)
    hf_modules = [*TOP_MODULES, *(f"model.layers.{layer}.{module}" for layer in range(n_layers)
                                  for module in table.block_modules)]
    return {gguf_name: hf_module for hf_module in hf_modules if (gguf_name := name_map.get_name(hf_module))}


def open_gguf(path: Path) -> GGUFReader:
    """Memory-maps a GGUF file, refusing (one line) an architecture :data:`GGUF_ARCHITECTURES` does not map."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    architecture = reader.fields["general.architecture"].contents()
    if architecture not in GGUF_ARCHITECTURES:
        raise NotImplementedError(
            f"{path.name}: GGUF architecture '{architecture}' is not supported by jaxinterp's torch-free GGUF reader "
            f"(tensor layouts mapped for {', '.join(GGUF_ARCHITECTURES)}); {_WHAT_TO_DO}"
        )
    return reader


def read_gguf(reader: GGUFReader, config: Any) -> dict[str, np.ndarray]:
    """Dequantises every parameter of an opened GGUF file to HF names and layouts, float32.

    Args:
      reader: from :func:`open_gguf`.
      config: the transformers config parsed from the same file.

    Raises:
      NotImplementedError: transformers parsed the file as a model type the table does not map for its
        architecture, or the file holds a tensor the table does not name (e.g. MoE experts).
      ValueError: the file lacks a parameter of the architecture (any but the tied ``output.weight``).
    """
    from gguf.quants import dequantize

    architecture = reader.fields["general.architecture"].contents()
    table = GGUF_ARCHITECTURES[architecture]
    if config.model_type != table.model_type:
        raise NotImplementedError(
            f"GGUF architecture '{architecture}' parsed by transformers as model_type '{config.model_type}' "
            f"(mapped: '{table.model_type}'), whose tensors transformers' GGUF loader does not map; {_WHAT_TO_DO}"
        )
    names = gguf_hf_names(architecture, config.num_hidden_layers)
    weights = {}
    for tensor in reader.tensors:
        if NON_PARAMETERS.fullmatch(tensor.name):
            continue
        module, _, kind = tensor.name.rpartition(".")
        if module not in names or kind not in ("weight", "bias"):
            raise NotImplementedError(
                f"GGUF tensor '{tensor.name}' of architecture '{architecture}' has no mapped HF parameter; "
                f"{_WHAT_TO_DO}"
            )
        # GGUF lists dims fastest-first; numpy (and HF) order is the reverse.
        hf_shape = tuple(int(dim) for dim in reversed(tensor.shape))
        # Copy: for F32 tensors dequantize returns a view into the memory-mapped file.
        values = np.array(dequantize(tensor.data, tensor.tensor_type).reshape(hf_shape), dtype=np.float32)
        weights[f"{names[module]}.{kind}"] = table.fixup(tensor.name, values, config)
    # transformers would leave a missing parameter randomly initialised; only lm_head may be absent (tied).
    missing = [f"{module}.weight" for module, hf_module in names.items()
               if hf_module != "lm_head" and f"{hf_module}.weight" not in weights]
    if missing:
        raise ValueError(f"GGUF file of architecture '{architecture}' lacks tensor '{missing[0]}'"
                         f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}: truncated or not a "
                         f"{table.model_type} checkpoint")
    return weights
