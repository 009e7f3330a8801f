"""SAELens v6 directory export: ``cfg.json``, ``sae_weights.safetensors``, ``sparsity.safetensors``.

Written to a temporary sibling directory and renamed into place, so a reader never sees half an
export; an existing target is replaced only with ``overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from jaxinterp.eval.metrics import log10_firing_frequency
from jaxinterp.sae import topk
from jaxinterp.train.trained import TrainedSAE

__all__ = ["export_saelens", "saelens_config", "SAELENS_VERSION"]

# The SAELens major version whose on-disk format this writes.
SAELENS_VERSION = "6.0.0"


def saelens_config(trained: TrainedSAE) -> dict[str, Any]:
    """SAELens v6 ``cfg.json`` for a TopK SAE (any input normalisation is folded into the weights)."""
    cfg, source = trained.config, trained.config["source"]
    return {
        "architecture": "topk",
        "d_in": cfg["d_in"],
        "d_sae": cfg["d_sae"],
        "k": cfg["k"],
        "rescale_acts_by_decoder_norm": False,
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
            "exclude_special_tokens": cfg["train"]["exclude_bos"],
            "trained_with": "jaxinterp",
            "training_steps": trained.step,
            "training_tokens": int(trained.state.tokens_seen),
        },
    }


def _atomic_directory(out: str, overwrite: bool, write) -> Path:
    target = Path(out)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass --config.overwrite=true to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def export_saelens(trained: TrainedSAE, out: str, overwrite: bool = False) -> Path:
    """Writes a SAELens v6 directory that ``sae_lens.SAE.load_from_disk`` reads."""
    raw = topk.fold_input_scale(trained.state.params, trained.input_scale)  # exports act on raw activations
    params = {name: np.asarray(value, np.float32) for name, value in raw.items()}
    sparsity = np.asarray(log10_firing_frequency(trained.state.fire_count, trained.state.tokens_seen), np.float32)

    def write(directory: Path) -> None:
        (directory / "cfg.json").write_text(json.dumps(saelens_config(trained), indent=2))
        save_file({k: params[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}, str(directory / "sae_weights.safetensors"))
        save_file({"sparsity": sparsity}, str(directory / "sparsity.safetensors"))

    return _atomic_directory(out, overwrite, write)
