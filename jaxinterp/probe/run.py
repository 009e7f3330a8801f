"""``jaxinterp probe``: labelled texts → pooled activations (or SAE latents) → probe sweep → files.

Everything lands in ``cfg.out`` at once (written to a temporary sibling, then renamed):
``results.json``, ``results.md``, ``layer_sweep.png``, ``probes/<hook>/<family>[_k<k>].safetensors``
with a ``.json`` beside each, and for binary tasks on activations ``steering/<hook>.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxinterp.atomic import atomic_directory
from jaxinterp.config import ConfigError
from jaxinterp.export.probe import steering_vector, write_probe, write_steering_vector
from jaxinterp.models import HookPoint, load_hf_config, load_source_model, load_tokenizer, parse_hooks, resolve_model
from jaxinterp.models.hooks import layer_count
from jaxinterp.probe.data import LabelledTexts, Splits, apply_regime, encode_targets, load_labelled, split_rows
from jaxinterp.probe.families import FittedProbe, fit_probes
from jaxinterp.probe.features import pool_activations, tokenize_texts
from jaxinterp.probe.latents import SparseRows, encode_sparse, pool_sparse
from jaxinterp.probe.report import format_table, plot_layer_sweep
from jaxinterp.store.paths import location

__all__ = ["ProbeData", "probe_features", "run_probe"]


class ProbeData(NamedTuple):
    """Features and targets of a probing task, row-aligned.

    Attributes:
      features: ``{hook: [rows, d] float32}`` or ``{hook: SparseRows}`` of SAE latents.
      targets: ``[rows]`` class ids or floats (training rows after the data regime).
      kind: ``binary``, ``multiclass`` or ``regression``.
      classes: class names in id order (empty for regression).
      splits: train/validation/test rows (split by text, so a text's tokens never straddle splits).
      hooks: the parsed hook points.
      model_name: the source model's name.
      dropped_labels: texts dropped for a missing label, plus per-token labels set to null
        (``missing_labels="drop"``; 0 otherwise).
    """

    features: dict[str, np.ndarray | SparseRows]
    targets: np.ndarray
    kind: str
    classes: list[str]
    splits: Splits
    hooks: list[HookPoint]
    model_name: str
    dropped_labels: int = 0


def _hooks(cfg: Mapping[str, Any], config: Any) -> list[HookPoint]:
    """The hooks ``cfg`` names (``all``: every block's residual output), checked against the model's ``config``."""
    n_layers = layer_count(config)
    if cfg["hooks"] == "all":
        return parse_hooks([f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)], n_layers, config)
    return parse_hooks(cfg["hooks"], n_layers, config)


def _row_labels(data: LabelledTexts, text_index: np.ndarray,
                position: np.ndarray) -> tuple[np.ndarray, list[Any], list[str]]:
    """Rows that carry a label, those labels (per-token labels when given, else the text's), and
    where each label is in the file (for messages)."""
    lines = data.lines or [f"row {t + 1}" for t in range(len(data.texts))]
    if data.token_labels is None:
        return np.arange(len(text_index)), [data.labels[t] for t in text_index], [lines[t] for t in text_index]
    keep, out, places = [], [], []
    for row, (t, p) in enumerate(zip(text_index, position)):
        token_labels = data.token_labels[t]
        if p >= len(token_labels):
            raise ConfigError(f"config field 'token_label_field': the text at {lines[t]} has {len(token_labels)} "
                              f"token labels but more tokens; give one label (or null) per token of "
                              f"{data.texts[t][:40]!r}")
        if token_labels[p] is not None:
            keep.append(row)
            out.append(token_labels[p])
            places.append(f"{lines[t]} token {p + 1}")
    return np.asarray(keep, np.int64), out, places


def probe_features(cfg: Mapping[str, Any], model=None, progress: bool = True) -> ProbeData:
    """Loads the labelled data, runs the source model, pools, and splits (by text, seeded).

    Args:
      cfg: a probe config.
      model: an already loaded source model for ``cfg.model`` (loaded on demand when ``None``).
    """
    if cfg["token_label_field"] and cfg["pooling"] != "token":
        raise ConfigError("config field 'token_label_field' labels tokens: it needs pooling='token'")
    data = load_labelled(cfg["data"], cfg["text_field"], cfg["label_field"], cfg["token_label_field"],
                         cfg["n_examples"], cfg["seed"], cfg["missing_labels"])
    files = resolve_model(cfg["model"])
    config = load_hf_config(files)
    sae = None
    if cfg["features"] == "sae":
        from jaxinterp.export import load_sae, require_same_model

        sae = load_sae(cfg["sae_run"], name=cfg["sae_name"])
        require_same_model(sae, files.fingerprint(), files.name, "sae_run", cfg["allow_other_model"])
        if not sae.sae.hook_name:
            raise ConfigError(f"config field 'sae_run': {cfg['sae_run']} does not say which hook it reads")
        hooks = parse_hooks([sae.sae.hook_name], layer_count(config), config)
    else:
        hooks = _hooks(cfg, config)
    tokenizer = load_tokenizer(files)
    tokens = tokenize_texts(tokenizer, data.texts, cfg["max_length"], cfg["prepend_bos"])
    model = model or load_source_model(cfg["model"], backend=cfg["backend"], dtype=cfg["model_dtype"])
    # SAEBench pools latents, not activations: SAE features are encoded per token, then pooled
    pool_tokens = sae is not None and cfg["pooling"] in ("mean", "max")
    pooled = pool_activations(model, tokens, [h.name for h in hooks], "token" if pool_tokens else cfg["pooling"],
                              skip_first=cfg["prepend_bos"], pad_id=tokenizer.pad_token_id or 0,
                              batch_tokens=cfg["batch_tokens"], progress=progress)
    features: dict[str, np.ndarray | SparseRows] = dict(pooled.features)
    text_index, position = pooled.text_index, pooled.position
    if sae is not None:
        hook = hooks[0].name
        features[hook] = encode_sparse(sae, features[hook])
        if pool_tokens:
            features[hook] = pool_sparse(features[hook], text_index, len(data.texts), cfg["pooling"])
            text_index, position = np.arange(len(data.texts)), np.full(len(data.texts), -1)
    rows, labels, places = _row_labels(data, text_index, position)
    label_column = cfg["token_label_field"] or cfg["label_field"]
    targets, kind, classes = encode_targets(labels, cfg["target"], places, label_column,
                                            "token_label_field" if cfg["token_label_field"] else "label_field")
    # split texts, not rows: stratified by the text's label unless labels are per token
    text_targets, text_kind, _ = ((np.zeros(len(data.texts)), "regression", None) if data.token_labels is not None
                                  else encode_targets(data.labels, cfg["target"], data.lines, label_column))
    text_splits = split_rows(text_targets, text_kind, cfg["validation_fraction"], cfg["test_fraction"], cfg["seed"])
    row_text = text_index[rows]
    splits = Splits(*(np.flatnonzero(np.isin(row_text, part)) for part in text_splits))
    train, targets = apply_regime(splits.train, targets, kind, cfg["seed"], cfg["regime"]["subsample"],
                                  cfg["regime"]["positive_fraction"], cfg["regime"]["label_noise"])
    features = {h: _take(f, rows) for h, f in features.items()}
    return ProbeData(features, targets, kind, classes, Splits(train, splits.validation, splits.test), hooks,
                     files.name, data.dropped + data.dropped_tokens)


def _take(features, rows: np.ndarray):
    """The given rows of dense or sparse features (all rows: the same object, no copy)."""
    if len(rows) == _n_rows(features) and (rows == np.arange(len(rows))).all():
        return features
    if isinstance(features, SparseRows):
        starts, stops = features.indptr[rows], features.indptr[rows + 1]
        entries = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)]) if len(rows) else np.zeros(0, int)
        return SparseRows(np.concatenate([[0], np.cumsum(stops - starts)]), features.indices[entries],
                          features.values[entries], features.n_cols)
    return features[rows]


def _n_rows(features) -> int:
    return features.n_rows if isinstance(features, SparseRows) else len(features)


def _stem(record: dict[str, Any]) -> str:
    return record["family"] if record["k"] is None else f"{record['family']}_k{record['k']}"


def run_probe(cfg: Mapping[str, Any], model=None, mesh=None, progress: bool = True) -> dict[str, Any]:
    """Runs a probe config end to end and writes its results to ``cfg.out``; returns the summary.

    Raises:
      FileExistsError: ``cfg.out`` exists and ``cfg.overwrite`` is false (checked before any work).
    """
    out = location(cfg["out"], "out")  # a local path or a file://, gs:// or s3:// URL
    if out.exists() and not cfg["overwrite"]:
        raise FileExistsError(f"{out} exists; pass --config.overwrite=true to replace it")
    if mesh is None and cfg["mesh"]["data"] != 1:
        import jax

        from jaxinterp.mesh import make_mesh

        # This process's devices: with several processes each fits the (small) sweep itself.
        mesh = make_mesh(data=cfg["mesh"]["data"], model=1, devices=jax.local_devices())
    began = time.perf_counter()
    data = probe_features(cfg, model, progress)
    features_s = time.perf_counter() - began
    fitted = fit_probes(data.features, data.targets, data.kind, data.splits, cfg, mesh)
    fit_s = time.perf_counter() - began - features_s
    records = [f.record for f in fitted]
    metric = "r2" if data.kind == "regression" else "accuracy"
    summary = {
        "out": str(out), "model": data.model_name, "data": cfg["data"], "kind": data.kind, "classes": data.classes,
        "pooling": cfg["pooling"], "features": cfg["features"],
        "rows": {"train": len(data.splits.train), "validation": len(data.splits.validation),
                 "test": len(data.splits.test)},
        # missing_labels=drop: texts dropped for a missing label (+ per-token labels set to null)
        "dropped_missing_labels": data.dropped_labels,
        "seconds": {"features": round(features_s, 2), "fit": round(fit_s, 2)},
        "best": max(records, key=lambda r: r["validation"][r["select_by"]]),
        "results": records,
    }
    hook_points = {h.name: h for h in data.hooks}

    def write(directory: Path) -> None:
        for probe in fitted:
            _write_one(directory, probe, cfg, data, hook_points[probe.record["hook"]])
        (directory / "results.json").write_text(json.dumps(summary, indent=2))
        (directory / "results.md").write_text(format_table(records) + "\n")
        plot_layer_sweep(records, metric, directory / "layer_sweep.png")

    atomic_directory(str(out), cfg["overwrite"], write, "probe",
                     ("results.json", "results.md", "layer_sweep.png", "probes", "steering"))
    return {k: v for k, v in summary.items() if k != "results"}


def _write_one(directory: Path, probe: FittedProbe, cfg, data: ProbeData, hook: HookPoint) -> None:
    record = probe.record
    config = {"model": data.model_name, "hook_name": hook.name, "pooling": cfg["pooling"],
              "features": cfg["features"], "kind": data.kind, "classes": data.classes,
              "standardized_into_weights": bool(cfg["standardize"]), **record}
    if cfg["features"] == "sae":
        config.update(sae_run=cfg["sae_run"], sae_name=cfg["sae_name"])
    write_probe(directory / "probes" / hook.name, _stem(record), probe.tensors, config)
    if data.kind == "binary" and cfg["features"] == "activations" and record["family"] == "logistic":
        vector = steering_vector(data.model_name, hook.name, hook.layer, hook.kind, probe.tensors["W"],
                                 label=f"{cfg['data']}: {data.classes[1]} vs {data.classes[0]}")
        write_steering_vector(directory / "steering" / f"{hook.name}.json", vector)
