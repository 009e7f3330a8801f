"""dictionary_learning directories (saprmarks/dictionary_learning 0.1.0): ``ae.pt`` + ``config.json``.

``dictionary_learning.utils.load_dictionary(dir, device)`` reads ``config["trainer"]["dict_class"]``
and calls that class's ``from_pretrained(dir/ae.pt)`` (``k`` from the config for the TopK classes);
SAEBench's ``load_dictionary_learning_*`` loaders read the same two files plus
``trainer.trainer_class``, ``trainer.layer`` and ``trainer.lm_name``, and want unit-norm decoder rows.
``ae.pt`` is a ``torch.save``'d state dict of plain float32 tensors. Per family:

- ``topk`` → ``AutoEncoderTopK`` (``TopKTrainer``): ``encoder.weight`` [d_sae, d_in] (our ``W_encᵀ``),
  ``encoder.bias``, ``decoder.weight`` [d_in, d_sae] (our ``W_decᵀ``), ``b_dec``, ``k``, ``threshold``
  = −1 (per-token top-k of ``relu(encoder(x − b_dec))``, ours exactly);
- ``jumprelu`` with one threshold shared by every latent and a ``k`` (BatchTopK, Matryoshka) →
  ``BatchTopKSAE`` (``BatchTopKTrainer``), whose inference keeps ``relu(pre)`` above that threshold;
- other ``jumprelu`` → ``JumpReluAutoEncoder`` (``JumpReluTrainer``): ``W_enc``, ``b_enc``, ``W_dec``,
  ``b_dec``, ``threshold``; its encoder reads ``x`` itself, so ``b_enc`` holds ``b_enc − b_dec W_enc``;
- ``relu`` → ``AutoEncoder`` (``StandardTrainer``): ``encoder.*``, ``decoder.weight``, ``bias`` (b_dec).

Decoder rows are written at unit norm wherever that is exact, the norm moved into the encoder column,
its bias and the threshold (``relu(c·z) = c·relu(z)`` for c > 0): always for ReLU and per-latent
JumpReLU thresholds, and for the TopK / global-threshold classes when every row has the same norm (an
input normalisation folded in); otherwise the rows are written as they are, which dictionary_learning
loads exactly but SAEBench flags. Transcoders and other families are refused: dictionary_learning
0.1.0 has no transcoder class. Matryoshka exports as ``BatchTopKSAE``: its inference is the same, and
``MatryoshkaBatchTopKSAE`` only adds the group sizes training used.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from jaxinterp.atomic import atomic_directory
from jaxinterp.config import ConfigError
from jaxinterp.export.portable import PortableSAE

__all__ = ["DICTIONARY_LEARNING_VERSION", "dictionary_learning_config", "dictionary_learning_state",
           "export_dictionary_learning"]

# The dictionary-learning release whose loader (``utils.load_dictionary``) these files are tested with.
DICTIONARY_LEARNING_VERSION = "0.1.0"

# (dict_class, trainer_class) per exported class kind.
_CLASSES = {"topk": ("AutoEncoderTopK", "TopKTrainer"), "batch_topk": ("BatchTopKSAE", "BatchTopKTrainer"),
            "jumprelu": ("JumpReluAutoEncoder", "JumpReluTrainer"), "relu": ("AutoEncoder", "StandardTrainer")}

# Relative spread of decoder row norms below which they count as one shared norm.
_EQUAL_NORMS_RTOL = 1e-5


def _class_kind(sae: PortableSAE) -> str:
    if sae.transcode:
        raise ConfigError(f"config field 'format': dictionary_learning 0.1.0 has no transcoder class, and this SAE "
                          f"is a transcoder ({sae.hook_name} -> {sae.target_hook}); export it as 'saelens' or "
                          "'sparsify'")
    family = sae.family
    if family == "jumprelu":
        threshold = np.asarray(sae.params["threshold"], np.float32)
        shared = threshold.size > 0 and bool(np.all(threshold == threshold.flat[0]))
        return "batch_topk" if shared and sae.k > 0 else "jumprelu"
    if family not in ("topk", "relu"):
        raise ConfigError(f"config field 'format': dictionary_learning cannot hold a {sae.architecture!r} SAE (it "
                          "holds TopK, BatchTopK, Matryoshka, JumpReLU and ReLU SAEs); export it as 'saelens'")
    return family


def _unit_norm(sae: PortableSAE, kind: str) -> dict[str, np.ndarray]:
    """The portable params with decoder rows moved to unit norm where that is exact (module docstring)."""
    params = {name: np.asarray(value, np.float64) for name, value in sae.params.items()}
    norms = np.linalg.norm(params["W_dec"], axis=-1)
    equal = np.ptp(norms) <= _EQUAL_NORMS_RTOL * np.max(norms)
    if np.any(norms == 0) or (kind in ("topk", "batch_topk") and not equal):
        return {name: value.astype(np.float32) for name, value in params.items()}
    if kind in ("topk", "batch_topk"):
        norms = np.full_like(norms, np.mean(norms))  # one factor: the top-k ranking is unchanged
    params["W_dec"] = params["W_dec"] / norms[:, None]
    params["W_enc"] = params["W_enc"] * norms[None, :]
    params["b_enc"] = params["b_enc"] * norms
    if "threshold" in params:
        params["threshold"] = params["threshold"] * norms
    return {name: value.astype(np.float32) for name, value in params.items()}


def dictionary_learning_state(sae: PortableSAE) -> dict[str, np.ndarray]:
    """The ``ae.pt`` state dict as float32 numpy arrays (``k`` as int32), keyed as the class's own."""
    kind = _class_kind(sae)
    p = _unit_norm(sae, kind)
    contiguous = np.ascontiguousarray
    if kind == "jumprelu":  # its encoder reads x itself: fold b_dec into b_enc
        b_enc = (p["b_enc"].astype(np.float64) - p["b_dec"].astype(np.float64) @ p["W_enc"].astype(np.float64))
        return {"W_enc": contiguous(p["W_enc"]), "b_enc": b_enc.astype(np.float32), "W_dec": contiguous(p["W_dec"]),
                "b_dec": contiguous(p["b_dec"]), "threshold": contiguous(p["threshold"])}
    linear = {"encoder.weight": contiguous(p["W_enc"].T), "encoder.bias": contiguous(p["b_enc"]),
              "decoder.weight": contiguous(p["W_dec"].T)}
    if kind == "relu":
        return {"bias": contiguous(p["b_dec"]), **linear}
    # relu(pre)·1[relu(pre) > θ] with θ ≥ 0 is ours; −1 (the classes' "unset") makes it a plain ReLU
    threshold = np.float32(-1.0) if kind == "topk" else np.float32(max(float(p["threshold"].flat[0]), 0.0))
    return {**linear, "b_dec": contiguous(p["b_dec"]), "k": np.asarray(sae.k, np.int32),
            "threshold": np.asarray(threshold, np.float32)}


def _layer(hook_name: str) -> int | None:
    match = re.match(r"blocks\.(\d+)\.", hook_name or "")
    return int(match.group(1)) if match else None


def dictionary_learning_config(sae: PortableSAE) -> dict[str, Any]:
    """``config.json``: the ``trainer`` block the loaders read, and the source facts under ``buffer``."""
    dict_class, trainer_class = _CLASSES[_class_kind(sae)]
    trainer = {"dict_class": dict_class, "trainer_class": trainer_class, "activation_dim": sae.d_in,
               "dict_size": sae.d_sae, "layer": _layer(sae.hook_name), "lm_name": sae.metadata.get("model_name"),
               "submodule_name": sae.hook_name}
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        trainer["k"] = sae.k
    return {"trainer": trainer,
            "buffer": {"d_submodule": sae.d_in, "ctx_len": sae.metadata.get("context_size")},
            "jaxinterp": {"architecture": sae.architecture, "hook_name": sae.hook_name,
                          "dictionary_learning_version": DICTIONARY_LEARNING_VERSION,
                          **{key: sae.metadata[key] for key in ("dataset_path", "prepend_bos", "training_tokens")
                             if key in sae.metadata}}}


def export_dictionary_learning(sae: PortableSAE, out: str, overwrite: bool = False) -> Path:
    """Writes ``<out>/{ae.pt, config.json}`` that ``dictionary_learning.utils.load_dictionary`` reads.

    Raises:
      ConfigError: ``sae`` is a transcoder or of a family dictionary_learning has no class for.
      FileExistsError: ``out`` exists and ``overwrite`` is false.
      ImportError: torch (the ``torch`` extra) is not installed; ``ae.pt`` is a torch pickle.
    """
    config, state = dictionary_learning_config(sae), dictionary_learning_state(sae)
    try:
        import torch
    except ImportError as error:
        raise ImportError("the dictionary_learning format writes ae.pt with torch; install the torch extra "
                          "(pip install 'jaxinterp[torch]')") from error

    def write(directory: Path) -> None:
        tensors = {name: torch.from_numpy(np.array(value)) for name, value in state.items()}
        torch.save(tensors, str(directory / "ae.pt"))
        (directory / "config.json").write_text(json.dumps(config, indent=2))

    return atomic_directory(out, overwrite, write, "dictionary_learning", ("ae.pt", "config.json"))
