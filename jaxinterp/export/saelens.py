"""SAELens v6 directory export: ``cfg.json``, ``sae_weights.safetensors``, ``sparsity.safetensors``.

Written to a temporary sibling directory and renamed into place, so a reader never sees half an
export; an existing target is replaced only with ``overwrite``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from jaxinterp.eval.metrics import log10_firing_frequency
from jaxinterp.export.atomic import atomic_directory
from jaxinterp.sae import topk
from jaxinterp.train.trained import TrainedSAE

__all__ = ["export_saelens", "saelens_config", "saelens_weights", "SAELENS_ARCHITECTURE", "SAELENS_VERSION"]

# The SAELens major version whose on-disk format this writes.
SAELENS_VERSION = "6.0.0"


# Our architecture → SAELens v6's. BatchTopK and Matryoshka run inference as JumpReLU with their
# learned global threshold (Bussmann et al. 2024), which SAELens' jumprelu computes exactly.
SAELENS_ARCHITECTURE = {"topk": "topk", "relu": "standard", "jumprelu": "jumprelu", "batch_topk": "jumprelu",
                        "matryoshka": "jumprelu"}


def saelens_config(trained: TrainedSAE) -> dict[str, Any]:
    """SAELens v6 ``cfg.json`` (any input normalisation is folded into the weights)."""
    cfg, source = trained.config, trained.run_config["source"]
    architecture = SAELENS_ARCHITECTURE[cfg["architecture"]]
    extra = {"k": cfg["k"], "rescale_acts_by_decoder_norm": False} if architecture == "topk" else {}
    return {
        "architecture": architecture,
        "d_in": cfg["d_in"],
        "d_sae": cfg["d_sae"],
        **extra,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAELENS_VERSION,
            "sae_lens_training_version": None,
            "model_name": source["model_name"],
            "hook_name": cfg["hook_name"],
            "hook_head_index": None,
            "context_size": source["context_size"],
            "prepend_bos": source["prepend_bos"],
            "dataset_path": source["dataset_path"],
            "model_class_name": source["model_class"],
            "exclude_special_tokens": trained.run_config["train"]["exclude_bos"],
            "trained_with": "jaxinterp",
            "jaxinterp_architecture": cfg["architecture"],
            "training_steps": trained.step,
            "training_tokens": int(trained.tokens_seen),
        },
    }


def saelens_weights(trained: TrainedSAE) -> dict[str, np.ndarray]:
    """The safetensors arrays of a SAELens export, acting on raw (unnormalised) activations."""
    params = topk.fold_input_scale(trained.state.params, trained.input_scale)
    weights = {name: np.asarray(params[name], np.float32) for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    architecture = trained.config["architecture"]
    if architecture == "jumprelu":
        weights["threshold"] = np.exp(np.asarray(params["log_threshold"], np.float32))
    elif SAELENS_ARCHITECTURE[architecture] == "jumprelu":
        weights["threshold"] = np.full(trained.config["d_sae"], float(trained.state.arch_state["threshold"]), np.float32)
    return weights


def export_saelens(trained: TrainedSAE, out: str, overwrite: bool = False) -> Path:
    """Writes a SAELens v6 directory that ``sae_lens.SAE.load_from_disk`` reads."""
    weights = saelens_weights(trained)
    sparsity = np.asarray(log10_firing_frequency(trained.state.fire_count, trained.tokens_seen), np.float32)

    def write(directory: Path) -> None:
        (directory / "cfg.json").write_text(json.dumps(saelens_config(trained), indent=2))
        save_file(weights, str(directory / "sae_weights.safetensors"))
        save_file({"sparsity": sparsity}, str(directory / "sparsity.safetensors"))

    return atomic_directory(out, overwrite, write)
