"""Labelled text datasets for probing: loading, target encoding, seeded stratified splits, data regimes.

A dataset is a .csv or .jsonl file with a text column and a label column (``builtin:NAME`` builds
one of :mod:`jaxinterp.probe.tasks` instead). Labels are binary or multiclass (any strings or
integers; classes are sorted) or a float target. Optionally a token-label column holds, per text,
one label per token of the text as the source model's tokenizer splits it (``null`` = no label).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxinterp.config import ConfigError

__all__ = ["LabelledTexts", "Splits", "load_labelled", "encode_targets", "split_rows", "apply_regime"]

BUILTIN_PREFIX = "builtin:"


class LabelledTexts(NamedTuple):
    """Texts with their raw labels and optional per-token labels (lists aligned to the tokenisation)."""

    texts: list[str]
    labels: list[Any]
    token_labels: list[list[Any]] | None


class Splits(NamedTuple):
    """Row indices of the train, validation and test splits (disjoint, sorted)."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        with open(path) as handle:
            return [json.loads(line) for line in handle if line.strip()]
    if path.suffix == ".csv":
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    raise ConfigError(f"config field 'data': {path} is not a .csv or .jsonl file (or builtin:NAME)")


def load_labelled(data: str, text_field: str = "text", label_field: str = "label",
                  token_label_field: str = "", n_examples: int = 2000, seed: int = 0) -> LabelledTexts:
    """Reads a labelled dataset; ``builtin:NAME`` builds ``n_examples`` of a built-in task.

    Raises:
      ConfigError: unknown file type, or a missing column (the message names the field and row).
    """
    if data.startswith(BUILTIN_PREFIX):
        from jaxinterp.probe.tasks import TASKS, build_task

        name = data[len(BUILTIN_PREFIX):]
        if name not in TASKS:
            raise ConfigError(f"config field 'data': unknown built-in task {name!r}; built-ins: {', '.join(TASKS)}")
        rows = build_task(name, n_examples, seed)
    else:
        path = Path(data).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"config field 'data': no file at {path}")
        rows = _read_rows(path)
    # with per-token labels a text-level label column is optional
    fields = [("text_field", text_field),
              ("token_label_field", token_label_field) if token_label_field else ("label_field", label_field)]
    for index, row in enumerate(rows):
        for field, column in fields:
            if column not in row:
                raise ConfigError(f"config field '{field}': row {index} of {data} has no column {column!r} "
                                  f"(columns: {', '.join(row)})")
    token_labels = None
    if token_label_field:
        token_labels = [row[token_label_field] if isinstance(row[token_label_field], list)
                        else json.loads(row[token_label_field]) for row in rows]
    return LabelledTexts([str(row[text_field]) for row in rows], [row.get(label_field) for row in rows], token_labels)


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def encode_targets(labels: list[Any], target: str = "auto") -> tuple[np.ndarray, str, list[str]]:
    """Raw labels → (targets, kind, class names).

    ``kind`` is ``binary``, ``multiclass`` or ``regression``. ``auto`` picks regression only for
    numeric labels with more than 20 distinct values that are not all integers; classes are the
    sorted distinct labels (as strings), and targets are class ids (int32) or floats (float32).
    """
    numeric = [_as_float(v) for v in labels]
    distinct = sorted({str(v) for v in labels})
    if target == "auto":
        is_numeric = all(v is not None for v in numeric)
        integral = is_numeric and all(float(v).is_integer() for v in numeric)
        target = "regression" if is_numeric and not integral and len(distinct) > 20 else (
            "binary" if len(distinct) == 2 else "multiclass")
    if target == "regression":
        if any(v is None for v in numeric):
            bad = next(i for i, v in enumerate(numeric) if v is None)
            raise ConfigError(f"config field 'target': regression needs numeric labels; row {bad} has {labels[bad]!r}")
        return np.asarray(numeric, np.float32), "regression", []
    if len(distinct) < 2:
        raise ConfigError(f"config field 'label_field': the labels have one class only ({distinct})")
    if target == "binary" and len(distinct) != 2:
        raise ConfigError(f"config field 'target': binary needs 2 classes, the labels have {len(distinct)}")
    # integer-like classes sort numerically (so 0/1 keep their meaning), others as strings
    if all(v is not None and float(v).is_integer() for v in numeric):
        distinct = sorted(distinct, key=float)
    index = {name: i for i, name in enumerate(distinct)}
    kind = "binary" if len(distinct) == 2 else "multiclass"
    return np.asarray([index[str(v)] for v in labels], np.int32), kind, distinct


def split_rows(targets: np.ndarray, kind: str, validation_fraction: float, test_fraction: float,
               seed: int) -> Splits:
    """Seeded train/validation/test split of rows, stratified by class for classification."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(len(targets))] if kind == "regression" else [
        np.flatnonzero(targets == c) for c in np.unique(targets)]
    parts: list[list[np.ndarray]] = [[], [], []]
    for rows in groups:
        rows = rng.permutation(rows)
        n_test = int(round(test_fraction * len(rows)))
        n_val = int(round(validation_fraction * len(rows)))
        parts[2].append(rows[:n_test])
        parts[1].append(rows[n_test:n_test + n_val])
        parts[0].append(rows[n_test + n_val:])
    train, validation, test = (np.sort(np.concatenate(p)) for p in parts)
    if min(len(train), len(validation), len(test)) == 0:
        raise ConfigError(f"config fields 'validation_fraction'/'test_fraction': a split of {len(targets)} rows is "
                          f"empty (train {len(train)}, validation {len(validation)}, test {len(test)})")
    return Splits(train, validation, test)


def apply_regime(train: np.ndarray, targets: np.ndarray, kind: str, seed: int, subsample: int = 0,
                 positive_fraction: float = 0.0, label_noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A data regime on the training rows only (validation and test stay untouched).

    Args:
      train: training row indices.
      targets: every row's target.
      subsample: keep this many training rows (0 = all), stratified for classification.
      positive_fraction: binary only; drop rows of one class until class 1 is this fraction (0 = off).
      label_noise: flip this fraction of training labels to another class, chosen at random.

    Returns:
      (training rows, targets with the noisy training labels substituted).
    """
    rng = np.random.default_rng([seed, 1])
    targets = targets.copy()
    if positive_fraction:
        if kind != "binary":
            raise ConfigError("config field 'regime.positive_fraction' needs a binary target")
        pos, neg = train[targets[train] == 1], train[targets[train] == 0]
        # keep as many rows as possible with pos / (pos + neg) = positive_fraction
        n_pos = min(len(pos), int(len(neg) * positive_fraction / (1 - positive_fraction)))
        n_neg = min(len(neg), int(n_pos * (1 - positive_fraction) / positive_fraction))
        train = np.sort(np.concatenate([rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)]))
    if subsample and subsample < len(train):
        if kind == "regression":
            train = np.sort(rng.choice(train, subsample, replace=False))
        else:
            keep = []
            for c in np.unique(targets[train]):
                rows = train[targets[train] == c]
                keep.append(rng.choice(rows, max(1, round(subsample * len(rows) / len(train))), replace=False))
            train = np.sort(np.concatenate(keep))
    if label_noise:
        if kind == "regression":
            raise ConfigError("config field 'regime.label_noise' needs a classification target")
        flip = rng.choice(train, int(round(label_noise * len(train))), replace=False)
        n_classes = int(targets.max()) + 1
        targets[flip] = (targets[flip] + rng.integers(1, n_classes, len(flip))) % n_classes
    return train, targets
