"""Each latent's direct effect on the logits: the tokens its decoder direction promotes and suppresses.

The effect of latent ``i`` is row ``i`` of ``W_dec @ W_U`` (``W_dec`` [d_sae, d_model], the unembedding
``W_U`` [d_model, d_vocab]), as Neuronpedia's dashboards and SAELens' ``neuronpedia_integration`` compute
it: the model's final norm is *not* folded in (its scale per direction is input-dependent for LayerNorm and
RMSNorm alike; a constant ``norm.weight`` would only rescale columns of ``W_dec`` before the product).

The product is formed in blocks of latents, so memory stays about ``block_latents × d_vocab × 12`` bytes (the
float32 block and one int64 partition of it; SmolLM2's 49,152-token vocabulary, 256 latents: ≈ 150 MB) whatever
``d_sae``, never ``d_sae × d_vocab``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from safetensors import safe_open

from jaxinterp.config import ConfigError
from jaxinterp.models.files import ModelFiles
from jaxinterp.models.weights import load_hf_weights, safetensors_files

__all__ = ["UNEMBEDDING_NAMES", "LogitEffects", "logit_effects", "read_unembedding", "token_texts"]

# Checked in order: an untied head first (Llama/Qwen/Gemma/GPT-2 ``lm_head``, Pythia's ``embed_out``), then
# the input embeddings that tied checkpoints store alone (Llama family, GPT-2, GPT-NeoX).
UNEMBEDDING_NAMES = ("lm_head.weight", "embed_out.weight", "model.embed_tokens.weight", "transformer.wte.weight",
                     "gpt_neox.embed_in.weight")


class LogitEffects(NamedTuple):
    """Per latent (row), its ``k`` strongest positive and negative logit effects.

    ``latents [n]``; ``top_ids``/``top_values`` ``[n, k]`` in descending value order; ``bottom_ids``/
    ``bottom_values`` ``[n, k]`` most negative first.
    """

    latents: np.ndarray
    top_ids: np.ndarray
    top_values: np.ndarray
    bottom_ids: np.ndarray
    bottom_values: np.ndarray

    def row(self, latent: int) -> int:
        """The row of ``latent`` (KeyError when it was not computed)."""
        found = np.flatnonzero(self.latents == latent)
        if not len(found):
            raise KeyError(f"latent {latent} has no logit effects computed")
        return int(found[0])


def read_unembedding(files: ModelFiles) -> np.ndarray:
    """The model's unembedding ``W_U`` [d_model, d_vocab] float32, read alone from its safetensors (a GGUF
    checkpoint is read whole), the head's stored ``[d_vocab, d_model]`` transposed.

    Raises:
      KeyError: the checkpoint holds none of :data:`UNEMBEDDING_NAMES`.
    """
    if files.gguf_file:
        _, weights = load_hf_weights(files)
        name = next((n for n in UNEMBEDDING_NAMES if n in weights), None)
        if name is None:
            raise KeyError(f"config field 'model': {files.name} stores none of {', '.join(UNEMBEDDING_NAMES)}")
        return np.ascontiguousarray(weights[name].T)
    paths = safetensors_files(Path(files.directory))
    for name in UNEMBEDDING_NAMES:
        for path in paths:
            with safe_open(str(path), framework="numpy") as checkpoint:
                if name in checkpoint.keys():
                    return np.ascontiguousarray(np.asarray(checkpoint.get_tensor(name), np.float32).T)
    raise KeyError(f"config field 'model': {files.directory} stores none of {', '.join(UNEMBEDDING_NAMES)}")


def _extremes(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(top_ids, top_values, bottom_ids, bottom_values)`` ``[rows, k]`` of each row's ``k`` largest entries
    (descending) and ``k`` smallest (ascending); no negated copy of ``block`` is made."""
    def ordered(ids: np.ndarray, sign: float) -> tuple[np.ndarray, np.ndarray]:
        values = np.take_along_axis(block, ids, axis=1)
        order = np.argsort(sign * values, axis=1, kind="stable")
        return np.take_along_axis(ids, order, axis=1), np.take_along_axis(values, order, axis=1)

    top = ordered(np.argpartition(block, block.shape[1] - k, axis=1)[:, -k:], -1.0)
    bottom = ordered(np.argpartition(block, k - 1, axis=1)[:, :k], 1.0)
    return (*top, *bottom)


def logit_effects(W_dec: Any, W_U: np.ndarray, latents: Sequence[int] | None = None, k: int = 10,
                  block_latents: int = 256, hook_name: str = "") -> LogitEffects:
    """The ``k`` largest and smallest entries of ``W_dec[latents] @ W_U``, ``block_latents`` rows at a time.

    Args:
      W_dec: the decoder ``[d_sae, d_model]`` (a transcoder's: ``[d_sae, d_out]``).
      W_U: the unembedding ``[d_model, d_vocab]`` (:func:`read_unembedding`).
      latents: the latent ids (default: all).
      hook_name: named in the error when the widths differ.

    Raises:
      ConfigError: the dictionary's output width is not the model's ``d_model`` (e.g. an MLP-post hook).
    """
    W_dec = np.asarray(W_dec, np.float32)
    d_sae, d_out = W_dec.shape
    d_model, d_vocab = W_U.shape
    if d_out != d_model:
        hook = f" ({hook_name})" if hook_name else ""
        raise ConfigError(f"config field 'sae': its decoder writes {d_out}-wide vectors{hook}, not the model's "
                          f"d_model {d_model}; logit effects need a residual-width dictionary")
    ids = np.arange(d_sae) if latents is None else np.asarray(latents, np.int64)
    if ids.size and not (0 <= ids.min() and ids.max() < d_sae):
        raise ConfigError(f"config field 'latents': ids must be in 0..{d_sae - 1}")
    k = min(k, d_vocab)
    top_ids, top_values, bottom_ids, bottom_values = [], [], [], []
    for start in range(0, len(ids), block_latents):
        block = W_dec[ids[start: start + block_latents]] @ W_U  # [block, d_vocab]
        ids_up, values_up, ids_down, values_down = _extremes(block, k)
        top_ids.append(ids_up)
        top_values.append(values_up)
        bottom_ids.append(ids_down)
        bottom_values.append(values_down)
    if not top_ids:
        empty = np.zeros((0, k))
        return LogitEffects(ids, empty.astype(np.int64), empty.astype(np.float32), empty.astype(np.int64),
                            empty.astype(np.float32))
    return LogitEffects(ids, np.concatenate(top_ids).astype(np.int64), np.concatenate(top_values),
                        np.concatenate(bottom_ids).astype(np.int64), np.concatenate(bottom_values))


def token_texts(tokenizer: Any) -> Callable[[int], str]:
    """``token id → text`` as the tokenizer decodes it alone (``" the"``, not ``"Ġthe"``), memoised per id."""
    texts: dict[int, str] = {}

    def text(token: int) -> str:
        token = int(token)
        if token not in texts:
            texts[token] = tokenizer.decode([token])
        return texts[token]

    return text
