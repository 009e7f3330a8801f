"""SAELens v6 directories: ``cfg.json``, ``sae_weights.safetensors``, ``sparsity.safetensors``.

Export writes to a temporary sibling directory renamed into place, so a reader never sees half an
export; an existing target is replaced only with ``overwrite``. Import reads the ``standard``,
``topk`` and ``jumprelu`` architectures into a :class:`~jaxinterp.export.portable.PortableSAE`.

A ReLU or JumpReLU transcoder is exported as SAELens' ``transcoder`` / ``jumprelu_transcoder`` (with a
skip connection ``skip_transcoder`` / ``jumprelu_skip_transcoder``, ``W_skip`` [d_out, d_in], our
``W_skipᵀ``): ``d_out``, ``apply_b_dec_to_input: false`` (its encoder reads ``x`` itself), ``hook_name``
the input hook and ``metadata.hook_name_out`` the target (SAELens 6 records none). SAELens has no TopK
transcoder, so a TopK-family transcoder is refused (:func:`~jaxinterp.export.portable.require_format`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, so bf16 safetensors load)
import numpy as np
from safetensors.numpy import load_file, save_file

from jaxinterp.atomic import atomic_directory
from jaxinterp.export.portable import PortableSAE, SAEFileError, require_format
from jaxinterp.faults import read_json
from jaxinterp.sae.spec import FAMILY_BUILTINS

__all__ = ["export_saelens", "read_saelens", "saelens_config", "saelens_weights", "SAELENS_ARCHITECTURE",
           "SAELENS_VERSION"]

# The SAELens major version whose on-disk format this writes.
SAELENS_VERSION = "6.0.0"

# Our family → SAELens v6's architecture. BatchTopK and Matryoshka are of the jumprelu family: inference
# is a JumpReLU with their learned global threshold (Bussmann et al. 2024), which SAELens' jumprelu
# computes exactly.
SAELENS_ARCHITECTURE = {"topk": "topk", "relu": "standard", "jumprelu": "jumprelu", "gated": "gated",
                        "matching_pursuit": "matching_pursuit"}


def _matching_pursuit_config(sae: PortableSAE) -> dict[str, Any]:
    # k pursuit steps; the threshold is in raw units (the portable form's 0-d residual_threshold)
    return {"max_iterations": sae.k, "residual_threshold": float(sae.params["residual_threshold"]),
            "stop_on_duplicate_support": bool(sae.params["stop_on_duplicate_support"])}


def _extra_config(sae: PortableSAE) -> dict[str, Any]:
    """The family's own cfg.json keys (an SAE's; a transcoder's are ``d_out`` alone)."""
    if sae.family == "topk":
        return {"k": sae.k, "rescale_acts_by_decoder_norm": False}
    if sae.family == "matching_pursuit":
        return _matching_pursuit_config(sae)
    return {}


_STANDARD_WEIGHTS = ("W_enc", "b_enc", "W_dec", "b_dec")

# Family → the weights its SAELens architecture reads (gated and matching pursuit under SAELens' own names).
_WEIGHTS = {"topk": _STANDARD_WEIGHTS, "relu": _STANDARD_WEIGHTS, "jumprelu": _STANDARD_WEIGHTS + ("threshold",),
            "gated": ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"), "matching_pursuit": ("W_dec", "b_dec")}

# SAELens v6's architecture → our family, for import.
_FROM_SAELENS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated",
                 "matching_pursuit": "matching_pursuit"}
_SUPPORTED_NORMALIZATION = (None, "none")


def saelens_config(sae: PortableSAE) -> dict[str, Any]:
    """SAELens v6 ``cfg.json`` (any input normalisation is already folded into the weights)."""
    require_format(sae, "saelens")
    architecture, extra = SAELENS_ARCHITECTURE[sae.family], _extra_config(sae)
    if sae.transcode:
        architecture = _transcoder_architecture(sae)
        extra = {"d_out": sae.d_out}
    own = ("sae_lens_version", "sae_lens_training_version", "model_name", "hook_name", "hook_head_index")
    return {
        "architecture": architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        **extra,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": not sae.transcode,
        "normalize_activations": "none",
        # SAELens flattens TransformerLens' hook_z [.., n_heads, d_head] to [.., n_heads * d_head] (head-major),
        # which is jaxinterp's attn.hook_z activation
        "reshape_activations": "hook_z" if _is_hook_z(sae.hook_name) else "none",
        "metadata": {
            "sae_lens_version": SAELENS_VERSION,
            "sae_lens_training_version": sae.metadata.get("sae_lens_training_version"),
            "model_name": sae.metadata.get("model_name"),
            "hook_name": sae.hook_name,
            "hook_head_index": None,
            **({"hook_name_out": sae.target_hook} if sae.transcode else {}),
            **{key: value for key, value in sae.metadata.items() if key not in own},
        },
    }


def _transcoder_architecture(sae: PortableSAE) -> str:
    base = "jumprelu_" if sae.family == "jumprelu" else ""
    return base + ("skip_transcoder" if "W_skip" in sae.params else "transcoder")


def _is_hook_z(hook_name: str | None) -> bool:
    return bool(hook_name) and hook_name.endswith(".attn.hook_z")


def saelens_weights(sae: PortableSAE) -> dict[str, np.ndarray]:
    """The ``sae_weights.safetensors`` arrays: ``threshold`` only for SAELens' jumprelu."""
    require_format(sae, "saelens")
    weights = {name: np.ascontiguousarray(sae.params[name], np.float32) for name in _WEIGHTS[sae.family]}
    if "W_skip" in sae.params:  # SAELens adds x @ W_skipᵀ
        weights["W_skip"] = np.ascontiguousarray(np.asarray(sae.params["W_skip"], np.float32).T)
    return weights


def export_saelens(sae: PortableSAE, out: str, overwrite: bool = False) -> Path:
    """Writes a SAELens v6 directory that ``sae_lens.SAE.load_from_disk`` reads; returns ``out``.

    Raises:
      FileExistsError: ``out`` exists and ``overwrite`` is false.
    """
    config, weights = saelens_config(sae), saelens_weights(sae)

    def write(directory: Path) -> None:
        (directory / "cfg.json").write_text(json.dumps(config, indent=2))
        save_file(weights, str(directory / "sae_weights.safetensors"))
        if sae.log10_frequency is not None:
            sparsity = {"sparsity": np.asarray(sae.log10_frequency, np.float32)}
            save_file(sparsity, str(directory / "sparsity.safetensors"))

    return atomic_directory(out, overwrite, write, "saelens", ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors"))


def _refuse(path: Path, field: str, value: Any, why: str) -> SAEFileError:
    return SAEFileError(f"{path / 'cfg.json'}: {field}={value!r} {why}")


def _architecture(path: Path, cfg: dict[str, Any]) -> str:
    architecture = cfg.get("architecture", "standard")
    if architecture == "standard" and cfg.get("activation_fn") == "topk":  # SAELens < 6 wrote TopK this way
        architecture = "topk"
    if architecture not in _FROM_SAELENS:
        raise _refuse(path, "architecture", architecture,
                      f"has no jaxinterp equivalent; importable SAELens architectures: {', '.join(_FROM_SAELENS)}")
    return architecture


def _check_options(path: Path, cfg: dict[str, Any], metadata: dict[str, Any]) -> None:
    normalize = cfg.get("normalize_activations", "none")
    if normalize not in _SUPPORTED_NORMALIZATION:
        raise _refuse(path, "normalize_activations", normalize,
                      "transforms activations at run time, which jaxinterp SAEs do not; only 'none' is "
                      "importable (fold a constant scale into the weights with SAELens first: "
                      "sae.fold_activation_norm_scaling_factor(factor), then sae.save_model(dir))")
    reshape = cfg.get("reshape_activations", "none")
    hook_name = metadata.get("hook_name") or cfg.get("hook_name") or ""
    if reshape not in ("none", None) and not (reshape == "hook_z" and _is_hook_z(hook_name)):
        raise _refuse(path, "reshape_activations", reshape,
                      f"reshapes per-head activations, which jaxinterp reads only at blocks.L.attn.hook_z (flattened "
                      f"n_heads * d_head), not at hook_name={hook_name!r}")
    head = metadata.get("hook_head_index", cfg.get("hook_head_index"))
    if head is not None:
        raise _refuse(path, "hook_head_index", head, "selects one attention head; jaxinterp hooks have no heads")
    if cfg.get("finetuning_scaling_factor"):
        raise _refuse(path, "finetuning_scaling_factor", True, "scales latents; not importable")


def _weights(path: Path, cfg: dict[str, Any], architecture: str) -> dict[str, np.ndarray]:
    raw = load_file(str(path / "sae_weights.safetensors"))
    weights = {name: np.asarray(value, np.float32) for name, value in raw.items()}
    if "log_threshold" in weights:  # older SAELens JumpReLU checkpoints
        weights["threshold"] = np.exp(weights.pop("log_threshold"))
    if "scaling_factor" in weights and np.all(weights["scaling_factor"] == 1):
        del weights["scaling_factor"]  # SAELens itself drops an all-ones scaling factor
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    wanted = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if architecture == "jumprelu":
        wanted["threshold"] = (d_sae,)
    if architecture == "gated":  # SAELens' names: the gate and magnitude paths share W_enc
        wanted = {"W_enc": (d_in, d_sae), "b_gate": (d_sae,), "r_mag": (d_sae,), "b_mag": (d_sae,),
                  "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if architecture == "matching_pursuit":  # tied: its encoder is W_decᵀ
        wanted = {"W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if set(weights) != set(wanted):
        missing, unexpected = sorted(set(wanted) - set(weights)), sorted(set(weights) - set(wanted))
        raise SAEFileError(f"{path / 'sae_weights.safetensors'}: a SAELens {architecture} SAE needs exactly "
                         f"{', '.join(wanted)}; missing {missing}, unexpected {unexpected}")
    for name, shape in wanted.items():
        if weights[name].shape != shape:
            raise SAEFileError(f"{path / 'sae_weights.safetensors'}: {name} has shape {weights[name].shape}, "
                             f"cfg.json's d_in/d_sae say {shape}")
    return weights


def read_saelens(path: str | Path) -> PortableSAE:
    """Reads a SAELens v6 directory (``standard`` → ``relu``, ``topk``, ``jumprelu``, ``gated``, ``matching_pursuit``).

    Exact conversions, folded into the weights: ``apply_b_dec_to_input=false`` (``b_enc`` gains
    ``b_dec @ W_enc``), TopK's ``rescale_acts_by_decoder_norm=true`` (as SAELens'
    ``fold_W_dec_norm``: the same latents and reconstruction, up to float32 rounding), JumpReLU's
    ``log_threshold`` (older checkpoints). Weights of any float dtype are read as float32.

    Raises:
      ValueError: what jaxinterp cannot represent: other architectures,
        ``normalize_activations`` other than ``none``, ``hook_z`` reshaping at a hook other than
        ``blocks.L.attn.hook_z``, a head index,
        a fine-tuning scaling factor, or weights that do not match ``cfg.json``.
    """
    path = Path(path)
    cfg = read_json(path / "cfg.json", "SAELens config")
    metadata = dict(cfg.get("metadata") or {})
    architecture = _architecture(path, cfg)
    _check_options(path, cfg, metadata)
    weights = _weights(path, cfg, architecture)
    k = int(cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k") or 0)
    if not cfg.get("apply_b_dec_to_input", True):
        weights.update(_without_b_dec_on_input(weights, architecture))
    if architecture == "matching_pursuit":  # its options travel as 0-d portable arrays
        k = int(cfg.get("max_iterations") or cfg["d_in"])  # SAELens: None = d_in steps
        weights["residual_threshold"] = np.asarray(cfg.get("residual_threshold", 1e-2), np.float32)
        weights["stop_on_duplicate_support"] = np.asarray(float(cfg.get("stop_on_duplicate_support", True)),
                                                          np.float32)
    if architecture == "topk" and cfg.get("rescale_acts_by_decoder_norm", False):
        norms = np.maximum(np.linalg.norm(weights["W_dec"].astype(np.float64), axis=-1), 1e-8)
        weights["W_enc"] = (weights["W_enc"] * norms).astype(np.float32)
        weights["b_enc"] = (weights["b_enc"] * norms).astype(np.float32)
        weights["W_dec"] = (weights["W_dec"] / norms[:, None]).astype(np.float32)
    sparsity = path / "sparsity.safetensors"
    frequency = load_file(str(sparsity)).get("sparsity") if sparsity.exists() else None
    hook_name = metadata.pop("hook_name", None) or cfg.get("hook_name") or ""
    for key in ("model_name", "context_size", "prepend_bos", "dataset_path"):  # SAELens < 6: top level
        if key not in metadata and key in cfg:
            metadata[key] = cfg[key]
    return PortableSAE(FAMILY_BUILTINS[_FROM_SAELENS[architecture]], weights, int(cfg["d_in"]), int(cfg["d_sae"]), k, hook_name,
                       metadata, None if frequency is None else np.asarray(frequency, np.float32))


def _without_b_dec_on_input(weights: dict[str, np.ndarray], architecture: str) -> dict[str, np.ndarray]:
    """Weights that subtract ``b_dec`` from the input, for a file whose encoder reads ``x`` itself."""
    if architecture == "matching_pursuit":  # SAELens then adds b_dec neither to the input nor to the output
        return {"b_dec": np.zeros_like(weights["b_dec"])}
    if architecture == "gated":  # both paths see b_dec @ W_enc more; the magnitude path scaled by exp(r_mag)
        shift = weights["b_dec"].astype(np.float64) @ weights["W_enc"].astype(np.float64)
        return {"b_gate": (weights["b_gate"] + shift).astype(np.float32),
                "b_mag": (weights["b_mag"] + shift * np.exp(weights["r_mag"].astype(np.float64))).astype(np.float32)}
    return {"b_enc": _fold_b_dec(weights)}


def _fold_b_dec(weights: dict[str, np.ndarray]) -> np.ndarray:
    """``b_enc + b_dec @ W_enc``: the bias that gives the same pre-activations when ``b_dec`` is
    subtracted from the input first (computed in float64, rounded once)."""
    b_enc, b_dec, W_enc = (weights[name].astype(np.float64) for name in ("b_enc", "b_dec", "W_enc"))
    return (b_enc + b_dec @ W_enc).astype(np.float32)
