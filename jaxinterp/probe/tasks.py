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

import ast
import functools
import heapq
import io
import json
import math
import os
import re
import sysconfig
import textwrap
import token
import tokenize
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MAX_BRACKET_CHARS", "MAX_STATEMENT_CHARS", "STATEMENT_KINDS", "TASKS", "build_task", "write_jsonl"]

TASKS: tuple[str, ...] = ("open_bracket", "statement_kind")
"""Names :func:`build_task` accepts."""

STATEMENT_KINDS: tuple[str, ...] = ("Assign", "Return", "Expr", "Import", "ImportFrom", "Raise", "AugAssign",
                                    "Assert")
"""The labels of ``statement_kind`` (AST class names)."""

MAX_BRACKET_CHARS = 200
"""Longest ``open_bracket`` text, in characters."""

MAX_STATEMENT_CHARS = 160
"""Longest ``statement_kind`` text, in characters."""

_MAX_CUT_TOKEN_CHARS = 40  # strings and comments longer than this are never the cut token
_MAX_CONTEXT_LINES = 2
_OPENERS = frozenset("([{")
_CLOSERS = frozenset(")]}")
_FSTRING_START = getattr(token, "FSTRING_START", None)  # Python >= 3.12 tokenizes f-strings into parts
_FSTRING_END = getattr(token, "FSTRING_END", None)
_CUT_TYPES = frozenset({token.NAME, token.NUMBER, token.STRING, token.COMMENT, token.OP})
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
# Cheap (unparsed) finders of lines that may hold a single-line statement of a rare kind: a line
# starting with a keyword, or holding an augmented-assignment operator ("**=" and "//=" contain "*=", "/=").
_KEYWORD_LINE = re.compile(r"\n[ \t]*(return|import|from|raise|assert)\b[^\n#;]*")
_KEYWORD_KINDS = {"return": "Return", "import": "Import", "from": "ImportFrom", "raise": "Raise", "assert": "Assert"}
_AUG_OPERATORS = ("+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "@=", "<<=", ">>=")
_RARE_KINDS = frozenset(_KEYWORD_KINDS.values()) | {"AugAssign"}
# A line that continues an open compound statement (a prefix of a file cannot end just before one).
_CLAUSE_LINE = re.compile(r"(?:else|elif|except|finally)\b")
_SPARSE_CHARS = 3000  # a file needing more source characters than this per new rare statement waits


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
    files = _stdlib_files()
    if not files:
        raise ValueError(f"task {name!r}: no standard-library .py files under {_stdlib_root()}")
    order = [files[i] for i in rng.permutation(len(files))]
    if name == "open_bracket":
        return _build_open_bracket(int(n), rng, order)
    return _build_statement_kind(int(n), rng, order)


def write_jsonl(examples: Iterable[dict[str, Any]], path: str | os.PathLike) -> str:
    """Writes ``examples`` to ``path`` as JSON Lines (one object per line, UTF-8); returns the path."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(example, ensure_ascii=False) + "\n" for example in examples)
    return str(path)


# --------------------------------------------------------------------------------------------- corpus


@functools.lru_cache(maxsize=1)
def _stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


@functools.lru_cache(maxsize=1)
def _stdlib_files() -> tuple[str, ...]:
    """Sorted paths (relative to the stdlib root, '/'-separated) of the standard library's .py files."""
    root = _stdlib_root()
    found = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in _SKIP_DIRS and not d.startswith(".")]
        rel_dir = os.path.relpath(directory, root)
        for file_name in names:
            if file_name.endswith(".py"):
                rel = file_name if rel_dir == "." else os.path.join(rel_dir, file_name)
                found.append(rel.replace(os.sep, "/"))
    return tuple(sorted(found))


@functools.lru_cache(maxsize=256)
def _source(rel: str) -> str | None:
    """The file's text with '\\n' line ends, or None if it cannot be read or decoded."""
    try:
        with open(os.path.join(_stdlib_root(), rel), "rb") as handle:
            data = handle.read()
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        text = data.decode(encoding)
    except (OSError, SyntaxError, LookupError, UnicodeDecodeError):
        return None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def _printable(text: str) -> bool:
    return all(line.replace("\t", " ").isprintable() for line in text.split("\n"))


def _per_file_cap(per_class: int, divisor: int, most: int) -> int:
    """Examples per class taken from one file: few for small n (more files, more variety), capped."""
    return int(min(most, max(2, math.ceil(per_class / divisor))))


def _too_little(name: str, n: int, found: dict[Any, int], per_class: int) -> ValueError:
    counts = ", ".join(f"{label!r}: {count}" for label, count in found.items())
    return ValueError(f"task {name!r}: the standard library under {_stdlib_root()} gives too few examples for "
                      f"n={n} ({per_class} per class needed; found {counts}); ask for a smaller n")


# --------------------------------------------------------------------------------------- open_bracket


class _Cuts:
    """A tokenized file's lines, its admissible cut points (1-based row, end column, bracket open), and
    the bracket depth where each line's first token starts (-1 for lines no token starts on)."""

    __slots__ = ("cols", "line_depth", "lines", "open", "rows")

    def __init__(self, lines: list[str], rows: np.ndarray, cols: np.ndarray, is_open: np.ndarray,
                 line_depth: np.ndarray):
        self.lines, self.rows, self.cols, self.open, self.line_depth = lines, rows, cols, is_open, line_depth


@functools.lru_cache(maxsize=512)
def _bracket_cuts(rel: str) -> _Cuts | None:
    """Cut points of one file, or None if it does not tokenize cleanly."""
    source = _source(rel)
    if source is None:
        return None
    rows, cols, depths = [], [], []
    depth = 0
    in_fstring = 0
    line_depth = np.full(source.count("\n") + 2, -1, np.int32)
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            kind, string = tok.type, tok.string
            if line_depth[tok.start[0]] < 0:
                line_depth[tok.start[0]] = depth
            if kind == token.ERRORTOKEN:
                return None  # e.g. an unterminated quote: the bracket count after it would be wrong
            if kind == token.OP:
                if string in _OPENERS:
                    depth += 1
                    continue
                if string in _CLOSERS:
                    depth -= 1
                    if depth < 0:
                        return None
                    continue
            elif kind == _FSTRING_START:
                in_fstring += 1
                continue
            elif kind == _FSTRING_END:
                in_fstring -= 1
                continue
            if kind not in _CUT_TYPES or in_fstring:
                continue
            (start_row, _), (end_row, end_col) = tok.start, tok.end
            if start_row != end_row:
                continue  # a multi-line string
            if kind in (token.STRING, token.COMMENT) and len(string) > _MAX_CUT_TOKEN_CHARS:
                continue
            rows.append(end_row)
            cols.append(end_col)
            depths.append(depth)
    except (tokenize.TokenError, SyntaxError):  # IndentationError is a SyntaxError
        return None
    if depth != 0:
        return None
    return _Cuts(source.split("\n"), np.asarray(rows, np.int32), np.asarray(cols, np.int32),
                 np.asarray(depths, np.int32) > 0, line_depth)


def _cut_text(lines: list[str], row: int, col: int, context: int) -> str | None:
    """Up to ``context`` lines before line ``row`` (leading blank ones dropped) + the line up to ``col``."""
    before = lines[max(0, row - 1 - context):row - 1]
    while before and not before[0].strip():
        before = before[1:]
    parts = before + [lines[row - 1][:col]]
    text = textwrap.dedent("\n".join(parts))
    while len(text) > MAX_BRACKET_CHARS and len(parts) > 1:
        parts = parts[1:]
        text = textwrap.dedent("\n".join(parts))
    if len(text) > MAX_BRACKET_CHARS or not text.strip() or not _printable(text):
        return None
    return text


def _build_open_bracket(n: int, rng: np.random.Generator, order: list[str]) -> list[dict[str, Any]]:
    if n % 2:
        raise ValueError(f"task 'open_bracket': n must be even (the two classes are balanced exactly), got {n}")
    per_class = n // 2
    cap = _per_file_cap(per_class, 128, 16)
    if per_class > cap * len(order):
        raise _too_little("open_bracket", n, {0: 0, 1: 0}, per_class)
    chosen: dict[int, list[str]] = {0: [], 1: []}
    seen: set[str] = set()
    for rel in order:
        if all(len(texts) >= per_class for texts in chosen.values()):
            break
        cuts = _bracket_cuts(rel)
        if cuts is None:
            continue
        for label in (0, 1):
            texts = chosen[label]
            if len(texts) >= per_class:
                continue
            candidates = np.flatnonzero(cuts.open == bool(label))
            taken = 0
            for index in rng.permutation(candidates):
                if taken >= cap or len(texts) >= per_class:
                    break
                context = int(rng.integers(0, _MAX_CONTEXT_LINES + 1))
                row = int(cuts.rows[index])
                text = _cut_text(cuts.lines, row, int(cuts.cols[index]), context)
                # the label must follow from the text: no bracket may be open where the text starts
                if text is None or text in seen or cuts.line_depth[row - text.count("\n")] != 0:
                    continue
                seen.add(text)
                texts.append(text)
                taken += 1
    if any(len(texts) < per_class for texts in chosen.values()):
        raise _too_little("open_bracket", n, {label: len(texts) for label, texts in chosen.items()}, per_class)
    examples = [{"text": text, "label": label} for label in (0, 1) for text in chosen[label]]
    return [examples[i] for i in rng.permutation(len(examples))]


# ------------------------------------------------------------------------------------- statement_kind


def _parse(source: str) -> ast.Module:
    """``ast.parse`` without the SyntaxWarnings of odd code (``1if x``, ``is`` with a literal)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        return ast.parse(source)


_COMPOUND = tuple(getattr(ast, name) for name in ("FunctionDef", "AsyncFunctionDef", "ClassDef", "For", "AsyncFor",
                                                  "While", "If", "With", "AsyncWith", "Try", "TryStar", "Match")
                  if hasattr(ast, name))


def _statements(body: list[ast.stmt]) -> Iterable[ast.stmt]:
    """Every statement in ``body``, nested ones included, in source order (skips expressions, for speed)."""
    stack = list(reversed(body))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, _COMPOUND):
            nested: list[ast.stmt] = list(getattr(node, "body", ()))
            for field in ("handlers", "cases"):  # except clauses, match cases
                for holder in getattr(node, field, ()):
                    nested.extend(holder.body)
            nested.extend(getattr(node, "orelse", ()))
            nested.extend(getattr(node, "finalbody", ()))
            stack.extend(reversed(nested))


@functools.lru_cache(maxsize=4096)
def _file_statements(rel: str, kinds: tuple[str, ...], stop: int | None = None) -> dict[str, tuple[str, ...]] | None:
    """Distinct single-line statements of ``kinds`` in the file (or its first ``stop`` characters), in
    source order; None if that does not parse."""
    source = _source(rel)
    if source is None:
        return None
    if stop is not None:
        source = source[:stop]
    try:
        tree = _parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    lines = source.split("\n")
    found: dict[str, dict[str, None]] = {kind: {} for kind in kinds}
    for node in _statements(tree.body):
        texts = found.get(type(node).__name__)
        if texts is None or node.lineno != node.end_lineno:
            continue
        if isinstance(node, ast.Expr) and not isinstance(node.value, ast.Call):
            continue
        raw = lines[node.lineno - 1].encode("utf-8")  # AST columns count UTF-8 bytes
        try:
            text = raw[node.col_offset:node.end_col_offset].decode("utf-8").strip()
        except UnicodeDecodeError:
            continue
        if text and len(text) <= MAX_STATEMENT_CHARS and _printable(text):
            texts[text] = None
    return {kind: tuple(texts) for kind, texts in found.items()}


@functools.lru_cache(maxsize=2048)
def _keyword_candidates(rel: str) -> tuple[tuple[int, str, str], ...]:
    """(line offset, kind, text guess) of the file's lines that start with ``return``, ``import``,
    ``from``, ``raise`` or ``assert``, in source order; found without parsing.

    The guess is the line up to a ``#`` or ``;``, stripped. Lines in strings are candidates too, and
    a statement after ``if x:`` or ``;`` is missed: candidates only decide which files to parse.
    """
    source = _source(rel)
    if source is None:
        return ()
    # the "\n" shift makes match.start() the offset of the line's first character in source
    return tuple((match.start(), _KEYWORD_KINDS[match.group(1)], match.group(0).strip())
                 for match in _KEYWORD_LINE.finditer("\n" + source))


@functools.lru_cache(maxsize=2048)
def _augassign_candidates(rel: str) -> tuple[tuple[int, str, str], ...]:
    """Like :func:`_keyword_candidates`, for the lines that hold an augmented-assignment operator."""
    source = _source(rel)
    if source is None:
        return ()
    starts = set()
    for operator in _AUG_OPERATORS:
        at = source.find(operator)
        while at >= 0:
            starts.add(source.rfind("\n", 0, at) + 1)
            at = source.find(operator, at + len(operator))
    found = []
    for start in sorted(starts):
        end = source.find("\n", start)
        line = source[start:end if end >= 0 else len(source)]
        found.append((start, "AugAssign", re.split(r"[#;]", line, maxsplit=1)[0].strip()))
    return tuple(found)


def _prefix_end(source: str, offset: int) -> int:
    """End of a short prefix of ``source`` that holds the line starting at ``offset`` and stops at a
    line that starts a statement of its own (indented no deeper than that line, and not the
    ``else``/``except``/... clause of an open statement); the whole source if there is none.

    The lines are judged by their layout only. A prefix cut inside a string or a bracket does not
    parse; one that parses holds the same single-line statements as the whole file up to there.
    """
    line_end = source.find("\n", offset)
    if line_end < 0:
        return len(source)
    line = source[offset:line_end]
    limit = len(line) - len(line.lstrip(" \t"))
    position = line_end + 1
    while position < len(source):
        end = source.find("\n", position)
        end = len(source) if end < 0 else end
        stripped = source[position:end].lstrip(" \t")
        if stripped and not stripped.startswith("#"):
            indent = end - position - len(stripped)
            if indent <= limit:
                if not _CLAUSE_LINE.match(stripped):
                    return position
                limit = indent  # inside that clause now: its body is deeper than it
        position = end + 1
    return len(source)


@functools.lru_cache(maxsize=65536)
def _parses_as(text: str, kind: str) -> bool:
    """Whether ``text`` alone parses to exactly one statement of class ``kind``."""
    try:
        body = _parse(text).body
    except (SyntaxError, ValueError):
        return False
    return len(body) == 1 and type(body[0]).__name__ == kind


def _rare_prefix(rel: str, wanted: dict[str, int], seen: set[str]) -> tuple[int, int]:
    """(end of the prefix of the file that holds its first ``wanted[kind]`` new candidates of each
    (rare) kind, how many new candidates it holds); (0, 0) if the file has none."""
    wanted = dict(wanted)
    last, count = -1, 0
    candidates = _keyword_candidates(rel)
    if wanted.get("AugAssign", 0) > 0:
        candidates = heapq.merge(candidates, _augassign_candidates(rel))
    for offset, kind, text in candidates:
        if wanted.get(kind, 0) > 0 and text not in seen and _parses_as(text, kind):
            wanted[kind] -= 1
            last, count = offset, count + 1
            if not any(wanted.values()):
                break
    return (0, 0) if count == 0 else (_prefix_end(_source(rel), last), count)


def _prefix_statements(rel: str, kinds: tuple[str, ...], stop: int) -> dict[str, tuple[str, ...]] | None:
    """:func:`_file_statements` of the file's first ``stop`` characters, or of all of it if those do
    not parse on their own."""
    statements = _file_statements(rel, kinds, stop) if stop < len(_source(rel)) else None
    return statements if statements is not None else _file_statements(rel, kinds)


def _build_statement_kind(n: int, rng: np.random.Generator, order: list[str]) -> list[dict[str, Any]]:
    kinds = len(STATEMENT_KINDS)
    if n % kinds:
        raise ValueError(f"task 'statement_kind': n must be a multiple of {kinds} (one equal share per class: "
                         f"{', '.join(STATEMENT_KINDS)}), got {n}")
    per_class = n // kinds
    cap = _per_file_cap(per_class, 16, 32)
    if per_class > cap * len(order):
        raise _too_little("statement_kind", n, {kind: 0 for kind in STATEMENT_KINDS}, per_class)
    chosen: dict[str, list[str]] = {kind: [] for kind in STATEMENT_KINDS}
    seen: set[str] = set()
    sparse: list[str] = []
    # Once only rare kinds are missing, most files add nothing (their statements are taken already),
    # and a file that can is parsed only as far as its new candidates go; the first pass puts off the
    # files where that is long for few candidates, the second pass (if still needed) takes them.
    for first_pass in (True, False):
        for rel in order if first_pass else sparse:
            missing = tuple(kind for kind in STATEMENT_KINDS if len(chosen[kind]) < per_class)
            if not missing:
                break
            if _RARE_KINDS.issuperset(missing):
                stop, count = _rare_prefix(rel, {kind: min(cap, per_class - len(chosen[kind])) for kind in missing},
                                           seen)
                if count == 0:
                    continue
                if first_pass and stop > _SPARSE_CHARS * count:
                    sparse.append(rel)
                    continue
                statements = _prefix_statements(rel, missing, stop)
            else:
                statements = _file_statements(rel, STATEMENT_KINDS)
            if statements is None:
                continue
            for kind in missing:
                texts, pool = chosen[kind], statements[kind]
                taken = 0
                for index in rng.permutation(len(pool)):
                    if taken >= cap or len(texts) >= per_class:
                        break
                    text = pool[index]
                    if text in seen or not _parses_as(text, kind):
                        continue
                    seen.add(text)
                    texts.append(text)
                    taken += 1
    if any(len(texts) < per_class for texts in chosen.values()):
        raise _too_little("statement_kind", n, {kind: len(texts) for kind, texts in chosen.items()}, per_class)
    examples = [{"text": text, "label": kind} for kind in STATEMENT_KINDS for text in chosen[kind]]
    return [examples[i] for i in rng.permutation(len(examples))]
