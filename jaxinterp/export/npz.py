"""Gemma-Scope-style ``params.npz``: ``W_enc``, ``W_dec``, ``b_enc``, ``b_dec``, ``threshold`` (float32).

Gemma Scope's JumpReLU encodes ``relu(x @ W_enc + b_enc) · 1[x @ W_enc + b_enc > threshold]``
without subtracting ``b_dec`` from the input (SAELens loads these files with
``apply_b_dec_to_input=False``), so the file's ``b_enc`` is ours with ``b_dec`` folded in:
``b_enc − b_dec @ W_enc`` (float64, rounded once). The other arrays are ours unchanged. The fold
cannot be exact in float32 (where ``|b_dec @ W_enc|`` exceeds ``|b_enc|`` the file's ``b_enc`` has
coarser steps than ours), so an npz round trip gives back ``b_enc`` to within one float32 step of
``b_dec @ W_enc``, and pre-activations to within float32 rounding; every other array is bitwise.

An export is a directory, written atomically like the others, holding ``params.npz`` (the only file
a Gemma-Scope loader reads; the same layout as a Gemma Scope release folder) and a ``cfg.json``
describing it (``format``, ``architecture``, sizes, hook and model metadata, the encoding). The
jumprelu family (JumpReLU, BatchTopK, Matryoshka) exports directly; a ReLU SAE is a JumpReLU with
threshold 0; the topk family is refused (its per-token top-k selection is no threshold).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxinterp.atomic import atomic_directory
from jaxinterp.export.portable import PortableSAE, SAEFileError, require_format
from jaxinterp.faults import read_json
from jaxinterp.sae.spec import FAMILY_BUILTINS

__all__ = ["NPZ_FORMAT", "export_npz", "npz_arrays", "npz_config", "read_npz"]

NPZ_FORMAT = "gemma_scope_npz"
_ENCODING = "relu(x @ W_enc + b_enc) * (x @ W_enc + b_enc > threshold); x_hat = acts @ W_dec + b_dec"


def npz_arrays(sae: PortableSAE) -> dict[str, np.ndarray]:
    """The ``params.npz`` arrays of ``sae`` (Gemma Scope's convention: ``b_dec`` folded into ``b_enc``)."""
    require_format(sae, "npz")
    p = {name: np.asarray(value, np.float32) for name, value in sae.params.items()}
    threshold = p["threshold"] if "threshold" in p else np.zeros(sae.d_sae, np.float32)
    return {"W_enc": p["W_enc"], "W_dec": p["W_dec"], "b_enc": _gemma_b_enc(p), "b_dec": p["b_dec"],
            "threshold": threshold}


def _b_dec_term(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """``b_dec @ W_enc`` in float64: what Gemma Scope's ``b_enc`` holds beyond ours."""
    return arrays["b_dec"].astype(np.float64) @ arrays["W_enc"].astype(np.float64)


def _gemma_b_enc(params: dict[str, np.ndarray]) -> np.ndarray:
    """``b_enc − b_dec @ W_enc``, computed in float64 and rounded once to float32."""
    return (params["b_enc"].astype(np.float64) - _b_dec_term(params)).astype(np.float32)


def npz_config(sae: PortableSAE) -> dict[str, Any]:
    """The ``cfg.json`` beside ``params.npz``."""
    require_format(sae, "npz")
    return {"format": NPZ_FORMAT, "architecture": "jumprelu", "d_in": sae.d_in, "d_sae": sae.d_sae,
            "dtype": "float32", "apply_b_dec_to_input": False, "encoding": _ENCODING, "hook_name": sae.hook_name,
            "k": sae.k, "metadata": sae.metadata}


def export_npz(sae: PortableSAE, out: str, overwrite: bool = False) -> Path:
    """Writes ``<out>/params.npz`` and ``<out>/cfg.json``; returns ``out``.

    Raises:
      ConfigError: a TopK SAE.
      FileExistsError: ``out`` exists and ``overwrite`` is false.
    """
    arrays, config = npz_arrays(sae), npz_config(sae)

    def write(directory: Path) -> None:
        np.savez(directory / "params.npz", **arrays)
        (directory / "cfg.json").write_text(json.dumps(config, indent=2))

    return atomic_directory(out, overwrite, write, "npz", ("params.npz", "cfg.json"))


def read_npz(path: str | Path) -> PortableSAE:
    """Reads a Gemma-Scope-style ``params.npz`` (the file, or a directory holding it) as a JumpReLU.

    ``cfg.json`` beside it (written by :func:`export_npz`) supplies the hook and metadata when
    present; a Gemma Scope release has none. Gemma Scope's ``b_enc`` is converted to jaxinterp's
    ``b_dec``-subtracted convention (``b_enc + b_dec @ W_enc``).

    Raises:
      ValueError: a missing array or inconsistent shapes.
    """
    path = Path(path)
    file = path / "params.npz" if path.is_dir() else path
    with np.load(file) as data:
        # some releases spell the weights w_enc / w_dec (SAELens' Gemma Scope loader renames them too)
        arrays = {("W_" + name[2:] if name.startswith("w_") else name): np.asarray(data[name], np.float32)
                  for name in data.files}
    missing = sorted({"W_enc", "W_dec", "b_enc", "b_dec", "threshold"} - set(arrays))
    if missing:
        raise SAEFileError(f"{file}: a Gemma-Scope params.npz needs W_enc, W_dec, b_enc, b_dec, threshold; "
                         f"missing {', '.join(missing)}")
    d_in, d_sae = arrays["W_enc"].shape
    shapes = {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,), "threshold": (d_sae,)}
    wrong = {name: arrays[name].shape for name, shape in shapes.items() if arrays[name].shape != shape}
    if wrong:
        raise SAEFileError(f"{file}: W_enc is {(d_in, d_sae)}, so expected {shapes}; got {wrong}")
    cfg_file = file.parent / "cfg.json"
    cfg = read_json(cfg_file, "Gemma-Scope config") if cfg_file.exists() else {}
    if cfg.get("format", NPZ_FORMAT) != NPZ_FORMAT:
        cfg = {}  # someone else's cfg.json: nothing in it describes this file
    b_enc = (arrays["b_enc"].astype(np.float64) + _b_dec_term(arrays)).astype(np.float32)
    params = {"W_enc": arrays["W_enc"], "b_enc": b_enc, "W_dec": arrays["W_dec"],
              "b_dec": arrays["b_dec"], "threshold": arrays["threshold"]}
    return PortableSAE(FAMILY_BUILTINS["jumprelu"], params, d_in, d_sae, int(cfg.get("k", 0)),
                       cfg.get("hook_name", ""),
                       dict(cfg.get("metadata", {})))
