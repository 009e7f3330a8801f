"""Probe files: weights in safetensors with a JSON config beside them, and steering-vector JSON.

A linear probe is ``W`` ``[d, n_out]`` and ``b`` ``[n_out]`` acting on the raw (unstandardised)
features: ``scores = x @ W + b``; for a k-sparse probe ``x`` is the SAE latents listed in the
config's ``latent_ids``, in that order. An MLP probe adds ``W_in``, ``b_in`` before a ReLU.

The steering vector is the unit-norm probe direction in activation space (toward class 1), in the
shape Neuronpedia's vector upload takes: ``modelId``, ``layerNumber``, ``hookType``, ``vector``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from jaxinterp.faults import read_json

__all__ = ["write_probe", "read_probe", "steering_vector", "write_steering_vector"]


def write_probe(directory: Path, stem: str, tensors: dict[str, np.ndarray], config: dict[str, Any]) -> Path:
    """Writes ``<stem>.safetensors`` and ``<stem>.json`` into ``directory``; returns the weights path."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / f"{stem}.safetensors"
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, str(weights))
    (directory / f"{stem}.json").write_text(json.dumps(config, indent=2, default=float))
    return weights


def read_probe(weights: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Loads a probe written by :func:`write_probe`: (tensors, config)."""
    weights = Path(weights)
    return load_file(str(weights)), read_json(weights.with_suffix(".json"), "probe config")


def steering_vector(model_name: str, hook_name: str, layer: int, hook_type: str, W: np.ndarray,
                    label: str = "") -> dict[str, Any]:
    """The Neuronpedia-style steering JSON of a binary linear probe direction ``W`` ``[d, 1]``."""
    direction = np.asarray(W, np.float64)[:, 0]
    direction = direction / np.linalg.norm(direction)
    return {"modelId": model_name, "layerNumber": layer, "hookType": hook_type, "hookName": hook_name,
            "vectorLabel": label or f"probe direction at {hook_name}", "vector": direction.tolist()}


def write_steering_vector(path: Path, vector: dict[str, Any]) -> Path:
    """Writes a steering-vector JSON from :func:`steering_vector`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(vector))
    return path
