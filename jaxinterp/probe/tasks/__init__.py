"""Built-in labelled text tasks that need no download: CPython's own standard library as the corpus.

Texts are cut from the ``.py`` files of the running interpreter's standard library (found with
``sysconfig.get_paths()["stdlib"]``; ``site-packages`` is left out), and labels come from Python's
own tokenizer and parser (:mod:`tokenize`, :mod:`ast`), so every label is exact. They are demo and
test tasks for probes that read the activation at the last token of each text.

``open_bracket`` (binary, labels 0/1)
    A source line cut right after a token, with 0–2 of the lines before it (common indentation
    removed, at most :data:`MAX_BRACKET_CHARS` characters). Label 1 when at least one of ``( [ {``
    is open at the cut. Texts start where no bracket is open, so the label follows from the text alone.
    The cut token is never a bracket, nor a string or comment over 40 characters, nor inside an
    f-string. Classes are exactly balanced.
``statement_kind`` (multiclass, string labels)
    The source of one single-line statement (at most :data:`MAX_STATEMENT_CHARS` characters), at any
    nesting depth; label = its AST class, one of :data:`STATEMENT_KINDS` (``Expr`` only for a call).
    Each text parses on its own to exactly one statement of its label's class. Classes are exactly
    balanced (``n // 8`` each) and texts are distinct.

Files are visited in an order drawn from ``numpy.random.default_rng(seed)`` over the sorted relative
paths, and each file gives at most a few examples per class (more for larger ``n``), so the same
``(name, n, seed)`` gives the same list for a given Python installation. Tokenized and parsed files
are cached (lazily, on first use) for the life of the process.

The material is finite: on CPython 3.11, ``statement_kind`` stops near ``n = 4700`` (the standard
library holds about 590 distinct single-line ``import`` statements), ``open_bracket`` goes far beyond
that. Larger ``n`` raises :class:`ValueError`. Once the common statement kinds are full,
``statement_kind`` parses only the files (and only the leading part of each) that can still add a rare
one, found by a cheap text scan, which keeps ``n = 4000`` to a few seconds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from jaxinterp.probe.tasks.open_bracket import MAX_BRACKET_CHARS, build_open_bracket
from jaxinterp.probe.tasks.statement_kind import MAX_STATEMENT_CHARS, STATEMENT_KINDS, build_statement_kind
from jaxinterp.probe.tasks.stdlib import stdlib_files, stdlib_root

__all__ = ["MAX_BRACKET_CHARS", "MAX_STATEMENT_CHARS", "STATEMENT_KINDS", "TASKS", "build_task", "write_jsonl"]

TASKS: tuple[str, ...] = ("open_bracket", "statement_kind")
"""Names :func:`build_task` accepts."""


def build_task(name: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Builds ``n`` labelled examples ``[{"text": str, "label": int | str}]`` of the task ``name``.

    The result depends only on ``(name, n, seed)`` (and the Python installation's standard library).

    Raises:
      ValueError: ``name`` is not one of :data:`TASKS`; ``n`` is not a positive integer, is odd
        (``open_bracket``) or not a multiple of 8 (``statement_kind``); or the standard library holds
        too little material for ``n`` examples.
    """
    if name not in TASKS:
        raise ValueError(f"unknown built-in task {name!r}; built-in tasks: {', '.join(TASKS)}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"task {name!r}: n must be a positive integer, got {n!r}")
    rng = np.random.default_rng(seed)
    files = stdlib_files()
    if not files:
        raise ValueError(f"task {name!r}: no standard-library .py files under {stdlib_root()}")
    order = [files[i] for i in rng.permutation(len(files))]
    if name == "open_bracket":
        return build_open_bracket(int(n), rng, order)
    return build_statement_kind(int(n), rng, order)


def write_jsonl(examples: Iterable[dict[str, Any]], path: str | os.PathLike) -> str:
    """Writes ``examples`` to ``path`` as JSON Lines (one object per line, UTF-8); returns the path."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(example, ensure_ascii=False) + "\n" for example in examples)
    return str(path)
