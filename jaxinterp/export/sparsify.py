"""EleutherAI sparsify / delphi directories: ``<out>/<hookpoint>/cfg.json`` + ``sae.safetensors``.

The layout ``SparseCoder.load_from_disk(<out>/<hookpoint>)`` and
``SparseCoder.load_many(<out>, local=True)`` read (sparsify 1.3): ``cfg.json`` holds the
``SparseCoderConfig`` fields plus ``d_in``; ``sae.safetensors`` holds ``encoder.weight``
[d_sae, d_in] (our ``W_encᵀ``), ``encoder.bias`` [d_sae], ``W_dec`` [d_sae, d_in], ``b_dec`` [d_in].
Encoding is ``topk(relu((x − b_dec) @ encoder.weightᵀ + encoder.bias))``: jaxinterp's TopK, which
is the only architecture sparsify has. Hookpoints are HF module paths
(:mod:`jaxinterp.export.hookpoints`).

A TopK transcoder is written with ``transcode: true`` (sparsify's encoder then reads ``x`` itself, not
``x − b_dec``) under the hookpoint of the module whose input it reads and whose output it predicts
(``layers.L.mlp``); a skip transcoder adds ``skip_connection: true`` and ``W_skip`` [d_out, d_in] (our
``W_skipᵀ``: sparsify adds ``x @ W_skipᵀ``). sparsify sizes every weight by ``d_in``, so the target
must be as wide as the input.

Each hookpoint directory is written atomically, so SAEs of several hooks of one model can be
exported into the same ``<out>`` (as sparsify saves a multi-layer run); an existing hookpoint
directory is replaced only with ``overwrite``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, so bf16 safetensors load)
import numpy as np
from etils import epath
from safetensors.numpy import load_file, save_file

from jaxinterp.atomic import atomic_directory
from jaxinterp.config import ConfigError
from jaxinterp.export.hookpoints import hook_for_hookpoint, hookpoint_for_hook, transcoder_hookpoint
from jaxinterp.export.portable import PortableSAE, SAEFileError, require_format
from jaxinterp.faults import read_json
from jaxinterp.sae.spec import FAMILY_BUILTINS
from jaxinterp.store.paths import location

__all__ = ["export_sparsify", "read_sparsify", "sparsify_config", "sparsify_hookpoint", "sparsify_weights",
           "hookpoint_dirs"]


def sparsify_hookpoint(sae: PortableSAE) -> str:
    """The hookpoint (subdirectory name) of ``sae``, from its hook(s) and the source model's class."""
    if sae.transcode:
        return transcoder_hookpoint(sae.hook_name, sae.target_hook, sae.metadata.get("model_class_name") or "")
    return hookpoint_for_hook(sae.hook_name, sae.metadata.get("model_class_name") or "")


def sparsify_config(sae: PortableSAE) -> dict[str, Any]:
    """sparsify's ``cfg.json``: ``SparseCoderConfig`` fields and ``d_in``.

    ``num_latents`` fixes the width (sparsify ignores ``expansion_factor`` when it is non-zero);
    ``normalize_decoder`` says whether the decoder rows are unit-norm, which is false after an input
    normalisation was folded into them (sparsify would renormalise them if training went on).
    """
    require_format(sae, "sparsify")
    if sae.d_out != sae.d_in:
        raise ConfigError(f"config field 'format': sparsify sizes a transcoder's output by its input (d_in), but "
                          f"{sae.hook_name} -> {sae.target_hook} maps {sae.d_in} to {sae.d_out} wide; export it as "
                          "'saelens' (ReLU/JumpReLU)")
    norms = np.linalg.norm(np.asarray(sae.params["W_dec"], np.float64), axis=-1)
    return {
        "activation": "topk",
        "expansion_factor": max(1, sae.d_sae // sae.d_in),
        "normalize_decoder": bool(np.allclose(norms, 1.0, atol=1e-4)),
        "num_latents": sae.d_sae,
        "k": sae.k,
        "multi_topk": sae.multi_topk,
        "skip_connection": "W_skip" in sae.params,
        "transcode": sae.transcode,
        "d_in": sae.d_in,
    }


def sparsify_weights(sae: PortableSAE) -> dict[str, np.ndarray]:
    """The ``sae.safetensors`` arrays (float32, contiguous)."""
    require_format(sae, "sparsify")
    p = sae.params
    weights = {
        "encoder.weight": np.ascontiguousarray(np.asarray(p["W_enc"], np.float32).T),
        "encoder.bias": np.ascontiguousarray(p["b_enc"], np.float32),
        "W_dec": np.ascontiguousarray(p["W_dec"], np.float32),
        "b_dec": np.ascontiguousarray(p["b_dec"], np.float32),
    }
    if "W_skip" in p:  # sparsify adds x @ W_skipᵀ
        weights["W_skip"] = np.ascontiguousarray(np.asarray(p["W_skip"], np.float32).T)
    return weights


def export_sparsify(sae: PortableSAE, out: str, overwrite: bool = False) -> Path:
    """Writes ``<out>/<hookpoint>/{cfg.json, sae.safetensors}``; returns the hookpoint directory.

    Raises:
      ConfigError: ``sae`` is not TopK, or its hook has no sparsify hookpoint.
      FileExistsError: ``<out>/<hookpoint>`` exists and ``overwrite`` is false, or ``<out>`` is
        itself an SAE directory (holds a ``cfg.json``).
    """
    config, weights, hookpoint = sparsify_config(sae), sparsify_weights(sae), sparsify_hookpoint(sae)
    root = location(out, "out")
    if (root / "cfg.json").exists():
        raise FileExistsError(f"{out} holds a cfg.json, so it is an SAE directory, not a sparsify export root; "
                              f"choose another --config.out")

    def write(directory: Path) -> None:
        (directory / "cfg.json").write_text(json.dumps(config, indent=2))
        save_file(weights, str(directory / "sae.safetensors"))

    return atomic_directory(str(root / hookpoint), overwrite, write, "sparsify", ("cfg.json", "sae.safetensors"))


def hookpoint_dirs(path: str | Path | epath.Path) -> list[epath.Path]:
    """The hookpoint directories under a sparsify export root (those holding ``sae.safetensors``)."""
    return sorted(p.parent for p in location(path).glob("*/sae.safetensors"))


def _hookpoint_dir(path: Path) -> Path:
    if (path / "sae.safetensors").exists():
        return path
    found = hookpoint_dirs(path)
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise SAEFileError(f"{path}: a sparsify directory is one hookpoint directory (cfg.json + sae.safetensors) or "
                         f"a root holding exactly one; found {len(found)} hookpoints ({names}): pass one of them")
    return found[0]


def read_sparsify(path: str | Path) -> PortableSAE:
    """Reads a sparsify SAE: a hookpoint directory, or a root holding exactly one.

    Weights of any float dtype (sparsify often saves bfloat16) are read as float32; the hook name is
    the hookpoint's jaxinterp hook (``''`` when it has none; the hookpoint is kept in
    ``metadata["hookpoint"]``).

    Raises:
      ValueError: not TopK (``groupmax``), a transcoder or skip connection, no decoder, or weights
        that do not match ``cfg.json``.
    """
    directory = _hookpoint_dir(Path(path))
    cfg = read_json(directory / "cfg.json", "sparsify config")
    where = directory / "cfg.json"
    for field, allowed in (("activation", "topk"), ("transcode", False), ("skip_connection", False)):
        if cfg.get(field, allowed) != allowed:
            raise SAEFileError(f"{where}: {field}={cfg[field]!r} is not importable; jaxinterp reads sparsify "
                             f"TopK autoencoders ({field}={allowed!r})")
    d_in = int(cfg["d_in"])
    d_sae = int(cfg.get("num_latents") or d_in * cfg.get("expansion_factor", 32))
    raw = load_file(str(directory / "sae.safetensors"))
    wanted = {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if set(raw) != set(wanted) or any(raw[name].shape != shape for name, shape in wanted.items()):
        found = {name: tuple(value.shape) for name, value in raw.items()}
        raise SAEFileError(f"{directory / 'sae.safetensors'}: expected {wanted} from cfg.json, found {found}")
    params = {
        "W_enc": np.ascontiguousarray(np.asarray(raw["encoder.weight"], np.float32).T),
        "b_enc": np.asarray(raw["encoder.bias"], np.float32),
        "W_dec": np.asarray(raw["W_dec"], np.float32),
        "b_dec": np.asarray(raw["b_dec"], np.float32),
    }
    metadata = {"hookpoint": directory.name}
    return PortableSAE(FAMILY_BUILTINS["topk"], params, d_in, d_sae, int(cfg.get("k", 32)),
                       hook_for_hookpoint(directory.name),
                       metadata, None, bool(cfg.get("multi_topk", False)))
