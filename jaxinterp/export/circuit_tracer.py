"""circuit-tracer 0.5.0 transcoder sets: one directory with ``config.yaml`` and ``layer_<i>.safetensors``.

A transcoder set is one per-layer transcoder (PLT; Dunefsky et al. 2024) for every layer ``0..n-1``,
each reading ``blocks.i.<input>`` and predicting ``blocks.i.hook_mlp_out``; circuit-tracer's
``ReplacementModel`` replaces every MLP of the model by them (Ameisen et al. 2025). Each layer file
holds what ``circuit_tracer.transcoder.single_layer_transcoder.load_relu_transcoder`` reads::

    W_enc [d_sae, d_model]   (ours transposed: it computes F.linear(x, W_enc, b_enc))
    b_enc [d_sae], W_dec [d_sae, d_model], b_dec [d_model]
    W_skip [d_model, d_model]   (ours transposed: it adds x @ W_skipᵀ), skip transcoders only
    activation_function.threshold [d_sae]   JumpReLU only: its activation is pre · 1[pre > θ]

A ReLU transcoder has no threshold (circuit-tracer then uses ``F.relu``); JumpReLU, BatchTopK and
Matryoshka (``relu(pre) · 1[pre > θ]``, the latter two with their global threshold) get
``max(θ, 0)``, with which ``pre · 1[pre > max(θ, 0)]`` equals ours for every θ. Per-token TopK has no
circuit-tracer activation that its loader reads, and is refused.

``config.yaml`` holds ``model_name``, ``model_kind: transcoder_set``, ``feature_input_hook`` /
``feature_output_hook`` in circuit-tracer's block-relative names (``mlp.hook_in`` or
``hook_resid_mid``; ``mlp.hook_out``, the MLP's output, or for a model with a post-MLP norm (Gemma 2/3)
``hook_mlp_out``, the normed output: what jaxinterp's ``hook_mlp_out`` is on each), ``scan``, and
``transcoders``, the absolute paths of the layer files (``circuit_tracer.utils.hf_utils.load_transcoders``
reads them; ``load_transcoders_from_cache`` globs the layer files instead, so a moved directory still loads
that way).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from jaxinterp.atomic import atomic_directory
from jaxinterp.config import ConfigError
from jaxinterp.export.portable import PortableSAE
from jaxinterp.store.paths import location, on_object_store

__all__ = ["CIRCUIT_TRACER_FAMILIES", "FEATURE_INPUT_HOOKS", "TARGET_KIND", "circuit_tracer_config", "circuit_tracer_tensors",
           "export_circuit_tracer", "feature_output_hook", "layer_and_kind", "refuse", "transcoder_set_layers",
           "yaml_text"]

# The families circuit-tracer's single-layer loader runs exactly: ReLU (no threshold) and JumpReLU (BatchTopK and
# Matryoshka with their global threshold).
CIRCUIT_TRACER_FAMILIES = ("relu", "jumprelu")

# jaxinterp's input hook kind → circuit-tracer's feature_input_hook (both block-relative TransformerLens names).
FEATURE_INPUT_HOOKS = {"mlp.hook_in": "mlp.hook_in", "hook_resid_mid": "hook_resid_mid"}
TARGET_KIND = "hook_mlp_out"
# Models whose MLP output passes a post-MLP norm before the residual sum: jaxinterp's hook_mlp_out is then
# circuit-tracer's hook_mlp_out, not its mlp.hook_out (the bare MLP output).
_POST_MLP_NORM_CLASSES = ("gemma2", "gemma3")
_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def layer_and_kind(hook: str) -> tuple[int, str]:
    """``blocks.3.mlp.hook_in`` → ``(3, 'mlp.hook_in')``; ``(-1, hook)`` for a hook outside the blocks."""
    match = _HOOK.match(hook)
    return (int(match.group(1)), match.group(2)) if match else (-1, hook)


def refuse(why: str) -> ConfigError:
    """The error for a dictionary circuit-tracer cannot hold, naming the 'format' field."""
    return ConfigError(f"config field 'format': 'circuit_tracer' {why}")


def transcoder_set_layers(saes: Sequence[PortableSAE], n_layers: int = 0) -> list[PortableSAE]:
    """``saes`` ordered by layer, checked to form one circuit-tracer transcoder set.

    Args:
      saes: the transcoders, in any order.
      n_layers: the source model's depth when known (0 = unknown): the set must then cover all of it,
        since circuit-tracer's ``ReplacementModel`` replaces every layer's MLP.

    Raises:
      ConfigError (naming 'format'): an SAE, a TopK transcoder, one reading or predicting another hook
        than ``blocks.i.mlp.hook_in`` / ``hook_resid_mid`` → ``blocks.i.hook_mlp_out``, two for one layer, a
        missing layer, or transcoders that differ in model, input hook kind, width, d_sae or skip connection.
    """
    if not saes:
        raise refuse("needs at least one transcoder")
    by_layer: dict[int, PortableSAE] = {}
    for sae in saes:
        if not sae.transcode:
            raise refuse(f"holds transcoders, and the SAE at {sae.hook_name} is not one; export it as 'saelens'")
        if sae.family == "topk":
            raise refuse(f"cannot hold a per-token TopK transcoder ({sae.hook_name} -> {sae.target_hook}): "
                          "circuit-tracer's transcoders are ReLU or JumpReLU; train architecture=batch_topk (exported "
                          "as JumpReLU with its threshold) or export this one as 'sparsify'")
        if sae.family not in CIRCUIT_TRACER_FAMILIES:
            raise refuse(f"cannot hold a {sae.architecture!r} transcoder "
                          f"(it holds the {', '.join(CIRCUIT_TRACER_FAMILIES)} families)")
        layer, kind = layer_and_kind(sae.hook_name)
        target_layer, target_kind = layer_and_kind(sae.target_hook)
        if kind not in FEATURE_INPUT_HOOKS or target_kind != TARGET_KIND or layer != target_layer:
            raise refuse(f"holds per-layer transcoders blocks.i.{{{', '.join(FEATURE_INPUT_HOOKS)}}} -> "
                          f"blocks.i.hook_mlp_out; this one maps {sae.hook_name} -> {sae.target_hook}")
        if sae.d_in != sae.d_out:
            raise refuse(f"needs d_in == d_out (both d_model); {sae.hook_name} has {sae.d_in} -> {sae.d_out}")
        if layer in by_layer:
            raise refuse(f"holds one transcoder per layer; two read {sae.hook_name}")
        by_layer[layer] = sae
    ordered = [by_layer[layer] for layer in sorted(by_layer)]
    wanted = n_layers or max(by_layer) + 1
    missing = sorted(set(range(wanted)) - set(by_layer))
    if missing:
        what = f"the model's {n_layers} layers" if n_layers else f"layers 0..{wanted - 1}"
        raise refuse(f"needs a transcoder for every one of {what} (circuit-tracer's load_transcoder_set and "
                      f"ReplacementModel index them by layer); missing layers {', '.join(map(str, missing))}")
    first = ordered[0]
    for sae in ordered[1:]:
        for what, ours, theirs in (
                ("source model", sae.metadata.get("jaxinterp_model_hash"), first.metadata.get("jaxinterp_model_hash")),
                ("input hook kind", layer_and_kind(sae.hook_name)[1], layer_and_kind(first.hook_name)[1]),
                ("d_in", sae.d_in, first.d_in), ("d_sae", sae.d_sae, first.d_sae),
                ("skip connection", "W_skip" in sae.params, "W_skip" in first.params)):
            if ours != theirs:
                raise refuse(f"needs one {what} for the whole set: {sae.hook_name} has {ours!r}, "
                              f"{first.hook_name} has {theirs!r}")
    return ordered


def circuit_tracer_tensors(sae: PortableSAE) -> dict[str, np.ndarray]:
    """The ``layer_<i>.safetensors`` tensors of one transcoder (float32, circuit-tracer's orientation)."""
    params = sae.params
    tensors = {"W_enc": np.ascontiguousarray(params["W_enc"].T), "b_enc": params["b_enc"], "W_dec": params["W_dec"],
               "b_dec": params["b_dec"]}
    if "W_skip" in params:
        tensors["W_skip"] = np.ascontiguousarray(params["W_skip"].T)
    if sae.family == "jumprelu":
        # pre · 1[pre > max(θ, 0)] = relu(pre) · 1[pre > θ] for any θ (a negative θ passes no negative pre)
        tensors["activation_function.threshold"] = np.maximum(params["threshold"], np.float32(0))
    return {name: np.asarray(value, np.float32) for name, value in tensors.items()}


def feature_output_hook(model_class: str) -> str:
    """circuit-tracer's name of jaxinterp's ``hook_mlp_out`` on a model of class ``model_class``."""
    return "hook_mlp_out" if (model_class or "").lower().startswith(_POST_MLP_NORM_CLASSES) else "mlp.hook_out"


def circuit_tracer_config(saes: Sequence[PortableSAE], layer_paths: Sequence[str], scan: str) -> dict[str, object]:
    """``config.yaml``'s content for the ordered set ``saes`` whose layer files are ``layer_paths``."""
    first = saes[0]
    return {
        "model_name": first.metadata.get("model_name") or "",
        "model_kind": "transcoder_set",
        "feature_input_hook": FEATURE_INPUT_HOOKS[layer_and_kind(first.hook_name)[1]],
        "feature_output_hook": feature_output_hook(first.metadata.get("model_class_name") or ""),
        "scan": scan,
        "transcoders": list(layer_paths),
    }


def yaml_text(config: dict[str, object]) -> str:
    """``config`` (strings and lists of strings) as YAML."""
    # JSON scalars are YAML scalars: every string is written double-quoted, a list as a block sequence.
    lines = []
    for key, value in config.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines.extend(f"  - {json.dumps(item)}" for item in value)
        else:
            lines.append(f"{key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def export_circuit_tracer(saes: Sequence[PortableSAE], out: str, overwrite: bool = False, n_layers: int = 0) -> Path:
    """Writes the transcoder set ``saes`` (one per layer, any order) as a circuit-tracer directory at ``out``.

    Load it with ``circuit_tracer.utils.caching.load_transcoders_from_cache(name, cache_dir=parent)``, or
    ``ReplacementModel.from_pretrained(model, name)`` with ``CIRCUIT_TRACER_CACHE_DIR=parent``.

    Raises:
      ConfigError: the set is not one circuit-tracer can hold (:func:`transcoder_set_layers`), or ``out``
        is a URL (circuit-tracer reads local paths).
      FileExistsError: ``out`` exists and ``overwrite`` is false.
    """
    ordered = transcoder_set_layers(saes, n_layers)
    if on_object_store(location(out, "out")):
        raise ConfigError(f"config field 'out': circuit-tracer reads local files; {out} is on an object store")
    final = Path(location(out, "out")).absolute()
    names = [f"layer_{i}.safetensors" for i in range(len(ordered))]
    config = circuit_tracer_config(ordered, [str(final / name) for name in names], f"jaxinterp/{final.name}")

    def write(directory: Path) -> None:
        for name, sae in zip(names, ordered):
            save_file(circuit_tracer_tensors(sae), str(directory / name))
        (directory / "config.yaml").write_text(yaml_text(config))  # last: circuit-tracer's cache treats it as "complete"

    return atomic_directory(str(final), overwrite, write, "circuit_tracer", ("config.yaml", *names))
