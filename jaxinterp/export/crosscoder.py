"""Crosscoder exports (``format=crosscoder``): one directory with ``crosscoder.safetensors`` and ``cfg.json``.

No peer tool holds a crosscoder of arbitrary store hooks in one agreed layout (dictionary_learning's
``CrossCoder`` stacks models on a ``num_layers`` axis; SAELens has none), so this format states jaxinterp's
own convention, on raw activations, float32, ``S`` sources of width ``d`` and ``n`` shared latents::

    pre = Σ_s x_s @ W_enc[s] + b_enc          W_enc [S, d, n], b_enc [n]
    a   = topk_k(relu(pre))                   activation "topk" (k per token)
        | relu(pre) · 1[pre > threshold]      "batch_topk" (its global threshold), "jumprelu", "relu" (0)
    x̂_s = a @ W_dec[:, s] + b_dec[s]          W_dec [n, S, d], b_dec [S, d]

``threshold [n]`` is in the safetensors for ``batch_topk`` (the running threshold, broadcast) and
``jumprelu``. ``cfg.json`` names the sources in order (``hook_names``: store hooks, e.g. a two-model store's
``m1/blocks.3.hook_resid_post``), ``d_in`` (= d), ``d_sae`` (= n), ``activation``, ``k``, and the source model
(``metadata``, keyed as the other exports key it, with ``sources``: each source's model name, hash and
class and its hook name in that model). :func:`read_crosscoder` reads it back exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from jaxinterp.atomic import atomic_directory
from jaxinterp.config import ConfigError
from jaxinterp.eval.metrics import log10_firing_frequency
from jaxinterp.export.portable import PortableSAE, SAEFileError
from jaxinterp.faults import read_json
from jaxinterp.sae import Architecture, make_architecture
from jaxinterp.store.manifest import hook_model

if TYPE_CHECKING:
    from jaxinterp.runs import TrainedSAE

__all__ = ["CONFIG_FILE", "CROSSCODER_FORMAT", "WEIGHTS_FILE", "crosscoder_config", "export_crosscoder",
           "is_crosscoder_export", "portable_crosscoder", "read_crosscoder", "to_crosscoder"]

CROSSCODER_FORMAT = "crosscoder"
WEIGHTS_FILE = "crosscoder.safetensors"
CONFIG_FILE = "cfg.json"
_FORMAT_TAG = "jaxinterp_crosscoder"  # cfg.json's "format": what a reader checks before trusting the rest
_THRESHOLDED = ("batch_topk", "jumprelu")


def portable_crosscoder(trained: TrainedSAE) -> PortableSAE:
    """A trained crosscoder as portable arrays: ``params`` the file's tensors, ``hook_name`` its sources
    comma-separated, ``metadata`` the source model plus ``activation`` and ``hook_names``.

    Raises:
      ConfigError: naming ``format``, when the SAE is not a crosscoder.
    """
    cfg, source, state = trained.config, trained.run_config["source"], trained.state
    if cfg["architecture"] != "crosscoder":
        raise ConfigError(f"config field 'format': {CROSSCODER_FORMAT!r} holds crosscoders; SAE {trained.name!r} is "
                          f"a {cfg['architecture']!r}")
    if trained.input_scale != 1.0:
        raise NotImplementedError("a crosscoder trained with normalize=true: folding per-source scales is not "
                                  "implemented")
    weights = {name: np.asarray(state.params[name], np.float32) for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    n_latents = weights["b_enc"].shape[0]
    if cfg["activation"] == "jumprelu":
        weights["threshold"] = np.exp(np.asarray(state.params["log_threshold"], np.float32))
    elif cfg["activation"] == "batch_topk":
        weights["threshold"] = np.full((n_latents,), np.asarray(state.arch_state["threshold"], np.float32))
    metadata = {
        "model_name": source["model_name"],
        "jaxinterp_model_hash": source["model_hash"],
        "context_size": source["context_size"],
        "prepend_bos": source["prepend_bos"],
        "dataset_path": source["dataset_path"],
        "model_class_name": source["model_class"],
        "exclude_special_tokens": trained.run_config["train"]["exclude_bos"],
        "trained_with": "jaxinterp",
        "jaxinterp_architecture": "crosscoder",
        "training_steps": trained.step,
        "training_tokens": int(trained.tokens_seen),
        "activation": cfg["activation"],
        "hook_names": list(cfg["hook_names"]),
        # Per source, the model it was read from and its hook name there (a two-model store's m1/… hooks).
        "sources": [{"hook_name": bare, **model} for model, bare in
                    (hook_model(source, hook) for hook in cfg["hook_names"])],
    }
    frequency = np.asarray(log10_firing_frequency(state.fire_count, trained.tokens_seen), np.float32)
    return PortableSAE("crosscoder", weights, int(cfg["d_in"]), n_latents, int(cfg["k"]),
                       ",".join(cfg["hook_names"]), metadata, frequency)


def crosscoder_config(sae: PortableSAE) -> dict[str, Any]:
    """``cfg.json``'s content."""
    metadata = {key: value for key, value in sae.metadata.items() if key not in ("activation", "hook_names")}
    threshold = sae.params.get("threshold")
    return {"format": _FORMAT_TAG, "format_version": 1, "architecture": "crosscoder",
            "hook_names": list(sae.metadata["hook_names"]), "n_sources": len(sae.metadata["hook_names"]),
            "d_in": sae.d_in, "d_sae": sae.d_sae, "activation": sae.metadata["activation"], "k": sae.k,
            "threshold": float(threshold[0]) if threshold is not None and sae.metadata["activation"] == "batch_topk"
            else None, "metadata": metadata}


def export_crosscoder(sae: PortableSAE, out: str, overwrite: bool = False) -> Path:
    """Writes ``sae`` (:func:`portable_crosscoder`) to the directory ``out`` atomically; returns it.

    Raises:
      FileExistsError: ``out`` exists and ``overwrite`` is false.
    """
    config = crosscoder_config(sae)

    def write(directory: Path) -> None:
        save_file(dict(sae.params), str(directory / WEIGHTS_FILE))
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))

    return atomic_directory(out, overwrite, write, CROSSCODER_FORMAT, (WEIGHTS_FILE, CONFIG_FILE))


def is_crosscoder_export(path: Path) -> bool:
    """Whether the local directory ``path`` holds a crosscoder export."""
    return (path / WEIGHTS_FILE).is_file() and (path / CONFIG_FILE).is_file()


def read_crosscoder(path: str | Path) -> PortableSAE:
    """The :class:`PortableSAE` of the export at local directory ``path``, checked against its ``cfg.json``.

    Raises:
      SAEFileError: naming the file and field that disagree (format tag, activation, a tensor's shape).
    """
    path = Path(path)
    cfg = read_json(path / CONFIG_FILE, "crosscoder config")
    if cfg.get("format") != _FORMAT_TAG:
        raise SAEFileError(f"{path / CONFIG_FILE}: format {cfg.get('format')!r}, expected {_FORMAT_TAG!r}")
    activation, hooks = cfg["activation"], list(cfg["hook_names"])
    from jaxinterp.sae.crosscoder import ACTIVATIONS

    if activation not in ACTIVATIONS:
        raise SAEFileError(f"{path / CONFIG_FILE}: activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}")
    n_sources, d_model, n_latents = len(hooks), int(cfg["d_in"]), int(cfg["d_sae"])
    shapes = {"W_enc": (n_sources, d_model, n_latents), "b_enc": (n_latents,), "W_dec": (n_latents, n_sources, d_model),
              "b_dec": (n_sources, d_model), **({"threshold": (n_latents,)} if activation in _THRESHOLDED else {})}
    weights = load_file(str(path / WEIGHTS_FILE))
    if sorted(weights) != sorted(shapes):
        raise SAEFileError(f"{path / WEIGHTS_FILE}: tensors {', '.join(sorted(weights))}; a {activation} crosscoder "
                           f"has {', '.join(sorted(shapes))}")
    for name, shape in shapes.items():
        if weights[name].shape != shape:
            raise SAEFileError(f"{path / WEIGHTS_FILE}: {name} has shape {weights[name].shape}, cfg.json says {shape}")
    metadata = {**cfg.get("metadata", {}), "activation": activation, "hook_names": hooks}
    return PortableSAE("crosscoder", {name: np.asarray(w, np.float32) for name, w in weights.items()}, d_model,
                       n_latents, int(cfg["k"]), ",".join(hooks), metadata)


def to_crosscoder(sae: PortableSAE) -> tuple[Architecture, dict[str, jnp.ndarray], dict[str, jnp.ndarray]]:
    """``(architecture, params, arch_state)`` of a portable crosscoder: the trained activation exactly
    (JumpReLU's ``log_threshold = log(threshold)``, BatchTopK's global threshold)."""
    activation = sae.metadata["activation"]
    params = {name: jnp.asarray(sae.params[name], jnp.float32) for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    arch_state = {}
    if activation == "jumprelu":
        params["log_threshold"] = jnp.log(jnp.asarray(sae.params["threshold"], jnp.float32))
    elif activation == "batch_topk":
        arch_state["threshold"] = jnp.asarray(sae.params["threshold"][0], jnp.float32)
    architecture = make_architecture({"architecture": "crosscoder", "activation": activation, "k": sae.k})
    return architecture, params, arch_state
