"""``open_bracket``: is a bracket open where a cut Python line ends? (labels from :mod:`tokenize`)"""

from __future__ import annotations

import functools
import io
import textwrap
import token
import tokenize
from typing import Any

import numpy as np

from jaxinterp.probe.tasks.stdlib import per_file_cap, printable, read_source, too_little

__all__ = ["MAX_BRACKET_CHARS", "build_open_bracket"]

MAX_BRACKET_CHARS = 200
"""Longest ``open_bracket`` text, in characters."""

_MAX_CUT_TOKEN_CHARS = 40  # strings and comments longer than this are never the cut token
_MAX_CONTEXT_LINES = 2
_OPENERS = frozenset("([{")
_CLOSERS = frozenset(")]}")
_FSTRING_START = getattr(token, "FSTRING_START", None)  # Python >= 3.12 tokenizes f-strings into parts
_FSTRING_END = getattr(token, "FSTRING_END", None)
_CUT_TYPES = frozenset({token.NAME, token.NUMBER, token.STRING, token.COMMENT, token.OP})


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
    source = read_source(rel)
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
    if len(text) > MAX_BRACKET_CHARS or not text.strip() or not printable(text):
        return None
    return text


def build_open_bracket(n: int, rng: np.random.Generator, order: list[str]) -> list[dict[str, Any]]:
    if n % 2:
        raise ValueError(f"task 'open_bracket': n must be even (the two classes are balanced exactly), got {n}")
    per_class = n // 2
    cap = per_file_cap(per_class, 128, 16)
    if per_class > cap * len(order):
        raise too_little("open_bracket", n, {0: 0, 1: 0}, per_class)
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
        raise too_little("open_bracket", n, {label: len(texts) for label, texts in chosen.items()}, per_class)
    examples = [{"text": text, "label": label} for label in (0, 1) for text in chosen[label]]
    return [examples[i] for i in rng.permutation(len(examples))]
