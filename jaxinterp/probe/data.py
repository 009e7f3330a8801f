"""Labelled text datasets for probing: loading, target encoding, seeded stratified splits, data regimes.

A dataset is a .csv or .jsonl file with a text column and a label column (``builtin:NAME`` builds
one of :mod:`jaxinterp.probe.tasks` instead). Labels are binary or multiclass (any strings or
integers; classes are sorted) or a float target. Optionally a token-label column holds, per text,
one label per token of the text as the source model's tokenizer splits it (``null`` = no label).

Missing labels (the rule, also in the README): a label is missing when it is JSON ``null``, an
absent key, an empty (or blank) CSV cell or string, or a float NaN; in a column whose other labels
all parse as numbers, the spellings in :data:`NA_SPELLINGS` (``n/a``, ``NaN``, ``null``, ...) are
missing too (elsewhere they are class names). Missing labels are an error naming their lines,
or, with ``missing_labels="drop"``, their texts are dropped and counted. A per-token label that is
``null`` means "no label for this token" and is never missing; the other missing spellings are.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxinterp.config import ConfigError

__all__ = ["LabelledTexts", "Splits", "NA_SPELLINGS", "MISSING_LABELS", "load_labelled", "encode_targets",
           "split_rows", "apply_regime"]

BUILTIN_PREFIX = "builtin:"
# Spellings of "no value" that count as missing only in an otherwise numeric label column.
NA_SPELLINGS = frozenset({"na", "n/a", "#n/a", "nan", "null", "none", "nil", "missing", "?", "-"})
MISSING_LABELS = ("error", "drop")
# Error messages name this many offending places, then count the rest.
_SHOWN = 5
# auto target: more distinct classes than this, over half of them single rows, is not a classification task.
_MANY_CLASSES = 20


class LabelledTexts(NamedTuple):
    """Texts with their raw labels and optional per-token labels (lists aligned to the tokenisation).

    Attributes:
      lines: where each text is in the file (``line 7``; ``row 7`` for a built-in task), for messages.
      dropped: texts dropped for a missing label (``missing_labels="drop"``).
      dropped_tokens: per-token labels dropped (set to ``null``) for being missing spellings.
    """

    texts: list[str]
    labels: list[Any]
    token_labels: list[list[Any]] | None
    lines: list[str] | None = None
    dropped: int = 0
    dropped_tokens: int = 0


class Splits(NamedTuple):
    """Row indices of the train, validation and test splits (disjoint, sorted)."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def _read_rows(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The file's records and the line each starts on (1-based, as an editor numbers them)."""
    rows, lines = [], []
    if path.suffix == ".jsonl":
        with open(path) as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ConfigError(f"config field 'data': line {number} of {path} is not JSON ({error})") from None
                if not isinstance(row, dict):
                    raise ConfigError(f"config field 'data': line {number} of {path} is not a JSON object")
                rows.append(row)
                lines.append(f"line {number}")
        return rows, lines
    if path.suffix == ".csv":
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                # DictReader fills short rows with None: an absent cell, same as an empty one
                rows.append({k: v for k, v in row.items() if k is not None and v is not None})
                lines.append(f"line {reader.line_num}")  # the record's last line (its only one, unless quoted newlines)
        return rows, lines
    raise ConfigError(f"config field 'data': {path} is not a .csv or .jsonl file (or builtin:NAME)")


def _name_places(places: Sequence[str]) -> str:
    """``lines 3, 17, 40 and 2 more`` from ``["line 3", "line 17", ...]``."""
    shown = list(places[:_SHOWN])
    words = {p.split(" ", 1)[0] for p in shown}
    if len(words) == 1 and all(" " in p for p in shown):
        word = words.pop()
        text = (word + "s " if len(places) > 1 else word + " ") + ", ".join(p.split(" ", 1)[1] for p in shown)
    else:
        text = ", ".join(shown)
    return text + (f" and {len(places) - len(shown)} more" if len(places) > len(shown) else "")


def _is_blank(value: Any) -> bool:
    """JSON null / absent key (None), an empty or blank string, or a float NaN."""
    return (value is None or (isinstance(value, str) and not value.strip())
            or (isinstance(value, float) and math.isnan(value)))


def _missing(values: Sequence[Any]) -> list[int]:
    """Indices of missing values (see the module docstring for the rule)."""
    blank = [_is_blank(v) for v in values]
    spelled = [not b and isinstance(v, str) and v.strip().lower() in NA_SPELLINGS for v, b in zip(values, blank)]
    others = [v for v, b, s in zip(values, blank, spelled) if not b and not s]
    # "n/a" is a class name among strings, but a missing number among numbers
    numeric = bool(others) and all(_as_float(v) is not None for v in others)
    return [i for i, (b, s) in enumerate(zip(blank, spelled)) if b or (s and numeric)]


def _shown_values(values: Sequence[Any]) -> str:
    """Up to a few distinct offending values, repr'd (``None`` shown as null)."""
    distinct = list(dict.fromkeys("null" if v is None else repr(v) for v in values))
    return ", ".join(distinct[:_SHOWN]) + (", ..." if len(distinct) > _SHOWN else "")


def _token_label_list(value: Any, field: str, place: str) -> list[Any] | None:
    """A text's per-token labels from a list or a JSON list string; ``None`` when the cell is missing."""
    if _is_blank(value):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, list):
        raise ConfigError(f"config field 'token_label_field': {place} has no JSON list of per-token labels in "
                          f"column {field!r}; give one label (or null) per token, e.g. [null, 1, 0]")
    return value


def load_labelled(data: str, text_field: str = "text", label_field: str = "label",
                  token_label_field: str = "", n_examples: int = 2000, seed: int = 0,
                  missing_labels: str = "error") -> LabelledTexts:
    """Reads a labelled dataset; ``builtin:NAME`` builds ``n_examples`` of a built-in task.

    Args:
      missing_labels: ``error`` (name the lines with a missing label) or ``drop`` (drop those texts,
        and set missing per-token labels to null; both counted in the result).

    Raises:
      ConfigError: unknown file type, a missing column or text, or missing labels with
        ``missing_labels="error"`` (the message names the field and the lines).
    """
    if missing_labels not in MISSING_LABELS:
        raise ConfigError(f"config field 'missing_labels': {missing_labels!r} is not one of "
                          f"{', '.join(MISSING_LABELS)}")
    if data.startswith(BUILTIN_PREFIX):
        from jaxinterp.probe.tasks import TASKS, build_task

        name = data[len(BUILTIN_PREFIX):]
        if name not in TASKS:
            raise ConfigError(f"config field 'data': unknown built-in task {name!r}; built-ins: {', '.join(TASKS)}")
        rows = build_task(name, n_examples, seed)
        lines = [f"row {i}" for i in range(1, len(rows) + 1)]
    else:
        path = Path(data).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"config field 'data': no file at {path}")
        rows, lines = _read_rows(path)
    if not rows:
        raise ConfigError(f"config field 'data': {data} has no rows")
    # with per-token labels a text-level label column is optional
    fields = [("text_field", text_field),
              ("token_label_field", token_label_field) if token_label_field else ("label_field", label_field)]
    for field, column in fields:
        # a column absent from every row is a wrong field name, not missing values
        if not any(column in row for row in rows):
            raise ConfigError(f"config field '{field}': no row of {data} has a column {column!r} "
                              f"(row 0's columns: {', '.join(rows[0])})")
    no_text = [i for i, row in enumerate(rows) if row.get(text_field) is None]
    if no_text:
        # str(None) would probe the text "None"
        raise ConfigError(f"config field 'text_field': {data} has no {text_field!r} at "
                          f"{_name_places([lines[i] for i in no_text])} ({len(no_text)} of {len(rows)} rows); "
                          f"fix or remove them")
    labels = [row.get(label_field) for row in rows]
    token_labels, dropped_tokens = None, 0
    if token_label_field:
        token_labels = [_token_label_list(row.get(token_label_field), token_label_field, line)
                        for row, line in zip(rows, lines)]
        missing = [i for i, t in enumerate(token_labels) if t is None]
        what, column = "per-token labels", token_label_field
        token_labels, dropped_tokens = _clean_token_labels(token_labels, lines, token_label_field, missing_labels)
    else:
        missing = _missing(labels)
        what, column = "label", label_field
    if missing and missing_labels == "error":
        field = "token_label_field" if token_label_field else "label_field"
        raise ConfigError(f"config field '{field}': column {column!r} of {data} has no {what} at "
                          f"{_name_places([lines[i] for i in missing])} ({len(missing)} of {len(rows)} rows: "
                          f"{_shown_values([rows[i].get(column) for i in missing])}); fill them in or set "
                          f"missing_labels=drop")
    keep = sorted(set(range(len(rows))) - set(missing))
    if not keep:
        raise ConfigError(f"config field 'missing_labels': every row of {data} lacks a label in column {column!r}; "
                          f"check label_field/token_label_field")
    texts = [str(rows[i][text_field]) for i in keep]
    return LabelledTexts(texts, [labels[i] for i in keep],
                         None if token_labels is None else [token_labels[i] for i in keep],
                         [lines[i] for i in keep], len(missing), dropped_tokens)


def _clean_token_labels(token_labels: list[list[Any] | None], lines: list[str], field: str,
                        missing_labels: str) -> tuple[list[list[Any] | None], int]:
    """Per-token labels with missing spellings (not null: that is "no label") set to null, and their count.

    Raises:
      ConfigError: a missing spelling with ``missing_labels="error"``.
    """
    places, values = [], []
    for t, labels in enumerate(token_labels):
        for p, value in enumerate(labels or []):
            if value is not None:
                places.append((t, p))
                values.append(value)
    missing = _missing(values)
    if missing and missing_labels == "error":
        shown = [f"{lines[places[i][0]]} token {places[i][1] + 1}" for i in missing]
        raise ConfigError(f"config field 'token_label_field': column {field!r} has missing per-token labels at "
                          f"{_name_places(shown)} ({len(missing)} of {len(values)} labels: "
                          f"{_shown_values([values[i] for i in missing])}); use null for an unlabelled token, "
                          f"or set missing_labels=drop")
    cleaned = [None if labels is None else list(labels) for labels in token_labels]
    for i in missing:
        t, p = places[i]
        cleaned[t][p] = None
    return cleaned, len(missing)


def _as_float(value: Any) -> float | None:
    """The finite float a label spells, else ``None`` (booleans are classes, not numbers)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _class_names(labels: Sequence[Any], numbers: Sequence[float | None]) -> list[str]:
    """Each label's class name: its text, except that in a numeric column two spellings of one
    number (``1`` and ``1.0``, ``"2"`` and ``" 2"``) name one class, not two."""
    names = [str(v) for v in labels]
    if any(n is None for n in numbers) or len(set(numbers)) == len(set(names)):
        return names  # no two spellings of a number: names as written (clean inputs keep theirs)
    return [str(int(n)) if n.is_integer() else repr(n) for n in numbers]


def _are(indices: Sequence[int], what: str) -> str:
    """``is not a number`` for one index, ``are not numbers`` for several."""
    if len(indices) == 1:
        return "is " + what
    return "are " + what.replace("a finite number", "finite numbers").replace("a number", "numbers")


def encode_targets(labels: list[Any], target: str = "auto", places: Sequence[str] | None = None,
                   column: str = "", field: str = "label_field") -> tuple[np.ndarray, str, list[str]]:
    """Raw labels → (targets, kind, class names).

    ``kind`` is ``binary``, ``multiclass`` or ``regression``. ``auto`` picks regression only for
    numeric labels with more than 20 distinct values that are not all integers; classes are the
    sorted distinct labels (as strings), and targets are class ids (int32) or floats (float32).
    ``auto`` refuses a column mixing numbers and other strings, and a would-be classification with
    more than 20 classes, over half of them a single row (a numeric target with stray strings).

    Args:
      places: where each label is (``line 7``), for messages; default ``row 1``, ``row 2``, ...
      column: the labels' column, and field: the config field naming it, for messages.

    Raises:
      ConfigError: missing labels, a mixed or singleton-class column under auto, too few classes.
    """
    places = list(places) if places is not None else [f"row {i}" for i in range(1, len(labels) + 1)]
    named = f"config field '{field}'" + (f" (column {column!r})" if column else "")

    def at(indices: Sequence[int]) -> str:
        count = f"{len(indices)} labels: " if len(indices) > 1 else ""
        return f"{_name_places([places[i] for i in indices])} ({count}{_shown_values([labels[i] for i in indices])})"

    missing = _missing(labels)
    if missing:
        raise ConfigError(f"{named}: no label at {at(missing)}; fill them in or set "
                          f"missing_labels=drop")
    numbers = [_as_float(v) for v in labels]
    not_numbers = [i for i, v in enumerate(numbers) if v is None]
    is_numeric = not not_numbers
    if target == "auto":
        if 0 < len(not_numbers) < len(labels):
            # a few stray strings among numbers (or the reverse) is a data error, not a new class
            are_numbers = [i for i, v in enumerate(numbers) if v is not None]
            if len(not_numbers) <= len(are_numbers):
                raise ConfigError(f"{named}: {at(not_numbers)} {_are(not_numbers, 'not a number')} while "
                                  f"{len(are_numbers)} other labels are; fix them (write a missing one as null, an "
                                  f"empty cell or n/a, and set missing_labels=drop to drop it), or set "
                                  f"target=multiclass to take every label as a class name")
            raise ConfigError(f"{named}: {at(are_numbers)} {_are(are_numbers, 'a number')} while {len(not_numbers)} "
                              f"other labels are not; fix them, or set target=multiclass to take every label as a "
                              f"class name")
        integral = is_numeric and all(v.is_integer() for v in numbers)
        counts = Counter(_class_names(labels, numbers))
        target = "regression" if is_numeric and not integral and len(counts) > _MANY_CLASSES else (
            "binary" if len(counts) == 2 else "multiclass")
        singletons = [i for i, name in enumerate(_class_names(labels, numbers)) if counts[name] == 1]
        if target != "regression" and len(counts) > _MANY_CLASSES and 2 * len(singletons) > len(counts):
            raise ConfigError(f"{named}: {len(counts)} classes, {len(singletons)} of them a single "
                              f"row, at {at(singletons)}: no classification task; set target=regression for a numeric "
                              f"target, or target=multiclass to keep them as classes")
    if target == "regression":
        if not_numbers:
            raise ConfigError(f"config field 'target': regression needs numeric labels; {at(not_numbers)} "
                              f"{_are(not_numbers, 'not a finite number')}")
        return np.asarray(numbers, np.float32), "regression", []
    names = _class_names(labels, numbers)
    distinct = sorted(set(names))
    if len(distinct) < 2:
        raise ConfigError(f"{named}: the labels have one class only ({distinct})")
    if target == "binary" and len(distinct) != 2:
        raise ConfigError(f"config field 'target': binary needs 2 classes, the labels have {len(distinct)}")
    # integer-like classes sort numerically (so 0/1 keep their meaning), others as strings
    if is_numeric and all(n.is_integer() for n in numbers):
        distinct = sorted(distinct, key=float)
    index = {name: i for i, name in enumerate(distinct)}
    kind = "binary" if len(distinct) == 2 else "multiclass"
    return np.asarray([index[name] for name in names], np.int32), kind, distinct


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
