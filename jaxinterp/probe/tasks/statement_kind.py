"""``statement_kind``: the AST class of a one-line Python statement (labels from :mod:`ast`)."""

from __future__ import annotations

import ast
import functools
import heapq
import re
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np

from jaxinterp.probe.tasks.stdlib import per_file_cap, printable, read_source, too_little

__all__ = ["MAX_STATEMENT_CHARS", "STATEMENT_KINDS", "build_statement_kind"]

STATEMENT_KINDS: tuple[str, ...] = ("Assign", "Return", "Expr", "Import", "ImportFrom", "Raise", "AugAssign",
                                    "Assert")
"""The labels of ``statement_kind`` (AST class names)."""

MAX_STATEMENT_CHARS = 160
"""Longest ``statement_kind`` text, in characters."""

# Cheap (unparsed) finders of lines that may hold a single-line statement of a rare kind: a line
# starting with a keyword, or holding an augmented-assignment operator ("**=" and "//=" contain "*=", "/=").
_KEYWORD_LINE = re.compile(r"\n[ \t]*(return|import|from|raise|assert)\b[^\n#;]*")
_KEYWORD_KINDS = {"return": "Return", "import": "Import", "from": "ImportFrom", "raise": "Raise", "assert": "Assert"}
_AUG_OPERATORS = ("+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "@=", "<<=", ">>=")
_RARE_KINDS = frozenset(_KEYWORD_KINDS.values()) | {"AugAssign"}
# A line that continues an open compound statement (a prefix of a file cannot end just before one).
_CLAUSE_LINE = re.compile(r"(?:else|elif|except|finally)\b")
_SPARSE_CHARS = 3000  # a file needing more source characters than this per new rare statement waits


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
    source = read_source(rel)
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
        if text and len(text) <= MAX_STATEMENT_CHARS and printable(text):
            texts[text] = None
    return {kind: tuple(texts) for kind, texts in found.items()}


@functools.lru_cache(maxsize=2048)
def _keyword_candidates(rel: str) -> tuple[tuple[int, str, str], ...]:
    """(line offset, kind, text guess) of the file's lines that start with ``return``, ``import``,
    ``from``, ``raise`` or ``assert``, in source order; found without parsing.

    The guess is the line up to a ``#`` or ``;``, stripped. Lines in strings are candidates too, and
    a statement after ``if x:`` or ``;`` is missed: candidates only decide which files to parse.
    """
    source = read_source(rel)
    if source is None:
        return ()
    # the "\n" shift makes match.start() the offset of the line's first character in source
    return tuple((match.start(), _KEYWORD_KINDS[match.group(1)], match.group(0).strip())
                 for match in _KEYWORD_LINE.finditer("\n" + source))


@functools.lru_cache(maxsize=2048)
def _augassign_candidates(rel: str) -> tuple[tuple[int, str, str], ...]:
    """Like :func:`_keyword_candidates`, for the lines that hold an augmented-assignment operator."""
    source = read_source(rel)
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
    return (0, 0) if count == 0 else (_prefix_end(read_source(rel), last), count)


def _prefix_statements(rel: str, kinds: tuple[str, ...], stop: int) -> dict[str, tuple[str, ...]] | None:
    """:func:`_file_statements` of the file's first ``stop`` characters, or of all of it if those do
    not parse on their own."""
    statements = _file_statements(rel, kinds, stop) if stop < len(read_source(rel)) else None
    return statements if statements is not None else _file_statements(rel, kinds)


def build_statement_kind(n: int, rng: np.random.Generator, order: list[str]) -> list[dict[str, Any]]:
    kinds = len(STATEMENT_KINDS)
    if n % kinds:
        raise ValueError(f"task 'statement_kind': n must be a multiple of {kinds} (one equal share per class: "
                         f"{', '.join(STATEMENT_KINDS)}), got {n}")
    per_class = n // kinds
    cap = per_file_cap(per_class, 16, 32)
    if per_class > cap * len(order):
        raise too_little("statement_kind", n, {kind: 0 for kind in STATEMENT_KINDS}, per_class)
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
        raise too_little("statement_kind", n, {kind: len(texts) for kind, texts in chosen.items()}, per_class)
    examples = [{"text": text, "label": kind} for kind in STATEMENT_KINDS for text in chosen[kind]]
    return [examples[i] for i in rng.permutation(len(examples))]
