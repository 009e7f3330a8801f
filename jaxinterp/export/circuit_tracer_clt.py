"""circuit-tracer 0.5.0 cross-layer transcoders: one directory of per-layer encoder and decoder files.

The layout ``circuit_tracer.transcoder.cross_layer_transcoder.load_clt`` reads (and its own
``CrossLayerTranscoder.to_safetensors`` writes), for layers ``ℓ = 0..L−1``::

    W_enc_ℓ.safetensors   W_enc_ℓ [n, d_model]     (ours W_enc[ℓ] [d_in, n], transposed: it computes x·W_encᵀ)
                          b_enc_ℓ [n], b_dec_ℓ [d_model]   (b_dec_ℓ: target layer ℓ's bias)
                          threshold_ℓ [n]          JumpReLU only: its activation is pre · 1[pre > θ]
    W_dec_ℓ.safetensors   W_dec_ℓ [n, L − ℓ, d_model]   (source ℓ into targets ℓ..L−1, as ours)
    config.yaml           model_kind: cross_layer_transcoder, feature_input_hook, feature_output_hook, scan

``load_clt`` counts the layers by globbing ``W_enc_*.safetensors`` and picks JumpReLU when
``threshold_0`` exists, ReLU otherwise; it reads no skip connection (ours have none).

Activations: ReLU as it is; JumpReLU with ``θ = exp(log_threshold)`` (> 0, so ``pre · 1[pre > θ]`` is
ours, ``relu(pre) · 1[pre > θ]``); BatchTopK as JumpReLU with its running global threshold for every
latent, ``max(θ, 0)`` (BatchTopK's inference rule, Bussmann et al. 2024). Per-token TopK has no
circuit-tracer activation and is refused. A CLT is read back by :func:`read_circuit_tracer_clt`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from safetensors.numpy import load_file, save_file

from jaxinterp.atomic import atomic_directory
from jaxinterp.config import ConfigError
from jaxinterp.export.circuit_tracer import (FEATURE_INPUT_HOOKS, TARGET_KIND, feature_output_hook, layer_and_kind,
                                             refuse, yaml_text)
from jaxinterp.sae import clt
from jaxinterp.store.paths import location, on_object_store

if TYPE_CHECKING:
    from jaxinterp.runs import TrainedSAE

__all__ = ["CircuitTracerCLT", "clt_files", "clt_feature_hooks", "export_circuit_tracer_clt",
           "read_circuit_tracer_clt"]

_EXPORTED_ACTIVATIONS = ("relu", "jumprelu", "batch_topk")


class CircuitTracerCLT(NamedTuple):
    """A circuit-tracer CLT directory read back into jaxinterp's CLT layout (:mod:`jaxinterp.sae.clt`).

    Attributes:
      params: float32 ``W_enc [L, d, n]``, ``b_enc [L, n]``, ``b_dec [L, d]``, ``W_dec_ℓ [n, L − ℓ, d]`` and,
        for JumpReLU, ``log_threshold [L, n]``.
      activation: ``jumprelu`` or ``relu`` (what circuit-tracer computes).
      config: ``config.yaml``'s fields.
    """

    params: dict[str, np.ndarray]
    activation: str
    config: dict[str, str]


def clt_feature_hooks(config: dict[str, Any], n_layers: int = 0) -> str:
    """The circuit-tracer ``feature_input_hook`` of a CLT with ``cfg.json`` entry ``config``, checked.

    Args:
      config: the run's ``saes`` entry of the CLT (``hook_names``, ``target_hooks``, ``activation``).
      n_layers: the source model's depth when known (0 = unknown): the CLT must span all of it, since
        circuit-tracer's ``ReplacementModel`` replaces every layer's MLP.

    Raises:
      ConfigError (naming 'format'): a per-token TopK CLT, or layers that are not ``blocks.ℓ.mlp.hook_in``
        (or ``hook_resid_mid``) → ``blocks.ℓ.hook_mlp_out`` for ``ℓ = 0..L−1``.
    """
    activation = config.get("activation", "batch_topk")
    if activation not in _EXPORTED_ACTIVATIONS:
        raise refuse(f"cannot hold a per-token {activation!r} CLT: circuit-tracer's CLTs are ReLU or JumpReLU; train "
                     "sae.activation=batch_topk (exported as JumpReLU with its threshold), jumprelu or relu")
    inputs, targets = config["hook_names"], config["target_hooks"]
    kinds = {layer_and_kind(hook)[1] for hook in inputs}
    layers = [layer_and_kind(hook)[0] for hook in inputs]
    expected_targets = [f"blocks.{layer}.{TARGET_KIND}" for layer in range(len(inputs))]
    if len(kinds) != 1 or not kinds <= set(FEATURE_INPUT_HOOKS) or layers != list(range(len(inputs))) \
            or list(targets) != expected_targets:
        raise refuse(f"holds CLTs over blocks.ℓ.{{{', '.join(FEATURE_INPUT_HOOKS)}}} -> blocks.ℓ.hook_mlp_out for "
                     f"layers 0..L-1; this one maps {inputs[0]}..{inputs[-1]} -> {targets[0]}..{targets[-1]}")
    if n_layers and len(inputs) != n_layers:
        raise refuse(f"needs a CLT over every one of the model's {n_layers} layers (circuit-tracer's "
                     f"ReplacementModel replaces every MLP); this one spans {len(inputs)}")
    return FEATURE_INPUT_HOOKS[kinds.pop()]


def clt_files(params: dict[str, Any], arch_state: dict[str, Any], activation: str) -> dict[str, dict[str, np.ndarray]]:
    """file name → its tensors (float32, circuit-tracer's orientation) for a CLT's params."""
    params = {name: np.asarray(value, np.float32) for name, value in params.items()}
    layers, n_latents = params["b_enc"].shape
    if activation == "jumprelu":
        threshold = np.exp(params["log_threshold"])
    elif activation == "batch_topk":
        # relu(pre)·1[pre > θ] = pre·1[pre > max(θ, 0)] for any θ: BatchTopK's inference rule as a JumpReLU.
        theta = np.maximum(np.asarray(arch_state["threshold"], np.float32), np.float32(0))
        threshold = np.full((layers, n_latents), theta, np.float32)
    else:
        threshold = None
    files = {}
    for layer in range(layers):
        encoder = {f"W_enc_{layer}": np.ascontiguousarray(params["W_enc"][layer].T),
                   f"b_enc_{layer}": params["b_enc"][layer], f"b_dec_{layer}": params["b_dec"][layer]}
        if threshold is not None:
            encoder[f"threshold_{layer}"] = threshold[layer]
        files[f"W_enc_{layer}.safetensors"] = encoder
        files[f"W_dec_{layer}.safetensors"] = {f"W_dec_{layer}": params[clt.decoder_key(layer)]}
    return files


def export_circuit_tracer_clt(trained: TrainedSAE, out: str, overwrite: bool = False, n_layers: int = 0) -> Path:
    """Writes the CLT ``trained`` as a circuit-tracer ``cross_layer_transcoder`` directory at ``out``.

    Load it with ``circuit_tracer.utils.caching.load_transcoders_from_cache(name, cache_dir=parent)`` or
    ``circuit_tracer.transcoder.cross_layer_transcoder.load_clt(out)``.

    Raises:
      ConfigError: a CLT circuit-tracer cannot hold (:func:`clt_feature_hooks`), or ``out`` is a URL.
      FileExistsError: ``out`` exists and ``overwrite`` is false.
    """
    config, source = trained.config, trained.run_config["source"]
    input_hook = clt_feature_hooks(config, n_layers)
    if trained.input_scale != 1.0 or trained.target_scale != 1.0:
        raise refuse("holds CLTs on raw activations; this run scaled its inputs (normalize=true)")
    if on_object_store(location(out, "out")):
        raise ConfigError(f"config field 'out': circuit-tracer reads local files; {out} is on an object store")
    files = clt_files(trained.state.params, trained.state.arch_state, config.get("activation", "batch_topk"))
    final = Path(location(out, "out")).absolute()
    yaml_config = {"model_name": source.get("model_name") or "", "model_kind": "cross_layer_transcoder",
                   "feature_input_hook": input_hook,
                   "feature_output_hook": feature_output_hook(source.get("model_class") or ""),
                   "scan": f"jaxinterp/{final.name}"}

    def write(directory: Path) -> None:
        for name, tensors in files.items():
            save_file(tensors, str(directory / name))
        (directory / "config.yaml").write_text(yaml_text(yaml_config))  # last: circuit-tracer's cache's "complete"

    return atomic_directory(str(final), overwrite, write, "circuit_tracer", ("config.yaml", *files))


def _yaml_fields(text: str) -> dict[str, str]:
    # What yaml_text writes: one `key: "json string"` per line (a CLT's config has no lists).
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if value.strip():
            fields[key.strip()] = json.loads(value.strip()) if value.strip().startswith('"') else value.strip()
    return fields


def read_circuit_tracer_clt(path: str) -> CircuitTracerCLT:
    """The CLT of a circuit-tracer ``cross_layer_transcoder`` directory, in jaxinterp's layout.

    Raises:
      FileNotFoundError: no ``config.yaml`` or no ``W_enc_0.safetensors`` at ``path``.
      ConfigError: ``config.yaml`` is not a ``cross_layer_transcoder``, or a layer file is missing.
    """
    root = Path(path)
    if not (root / "config.yaml").is_file():
        raise FileNotFoundError(f"{root}: no config.yaml (a circuit-tracer CLT directory has one)")
    config = _yaml_fields((root / "config.yaml").read_text())
    if config.get("model_kind") != "cross_layer_transcoder":
        raise ConfigError(f"{root / 'config.yaml'}: model_kind {config.get('model_kind')!r}; expected "
                          "'cross_layer_transcoder'")
    layers = len(list(root.glob("W_enc_*.safetensors")))
    if not layers:
        raise FileNotFoundError(f"{root}: no W_enc_0.safetensors (a circuit-tracer CLT has one per layer)")
    encoders, params = [], {}
    for layer in range(layers):
        for kind in ("enc", "dec"):
            if not (root / f"W_{kind}_{layer}.safetensors").is_file():
                raise ConfigError(f"{root}: W_{kind}_{layer}.safetensors is missing ({layers} encoder files)")
        encoders.append(load_file(str(root / f"W_enc_{layer}.safetensors")))
        params[clt.decoder_key(layer)] = load_file(str(root / f"W_dec_{layer}.safetensors"))[f"W_dec_{layer}"]
    params["W_enc"] = np.stack([np.ascontiguousarray(e[f"W_enc_{i}"].T) for i, e in enumerate(encoders)])
    params["b_enc"] = np.stack([e[f"b_enc_{i}"] for i, e in enumerate(encoders)])
    params["b_dec"] = np.stack([e[f"b_dec_{i}"] for i, e in enumerate(encoders)])
    jump = "threshold_0" in encoders[0]
    if jump:
        with np.errstate(divide="ignore"):  # θ = 0 → log θ = −inf: exp gives back 0, a ReLU
            params["log_threshold"] = np.log(np.stack([e[f"threshold_{i}"] for i, e in enumerate(encoders)]))
    return CircuitTracerCLT({name: np.asarray(value, np.float32) for name, value in params.items()},
                            "jumprelu" if jump else "relu", config)
