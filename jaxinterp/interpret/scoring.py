"""Detection and fuzzing scores of explanations from next-token probabilities, no generation (Paulo et al. 2024).

Each prompt shows one explanation and one example and ends where the one-digit answer goes; the example's
score is ``p("1") / (p("1") + p("0"))`` at the prompt's last position (delphi's log-prob score,
``delphi/scorers/classifier/classifier.py`` ``_parse_logprobs``, read here from the logits directly). Samples
follow delphi's ``scorers/classifier/detection.py``, ``fuzz.py`` and ``sample.py``:

- detection: the latent's test examples (label 1) and its non-activating examples (label 0), unmarked;
- fuzzing: the test examples marked where activation ≥ 0.3 × the example's maximum (label 1), and
  ``fuzz_type='default'``: the non-activating examples, or ``'active'``: the test examples again, with
  ``n_incorrect`` tokens below that threshold marked (label 0); ``n_incorrect`` is the ceiling of the mean
  number of non-zero activations per test example; delphi always marks position ``w - w // 4`` when it is
  below the threshold and draws the rest with Python's ``random`` seeded 22, as here.

Any backend plugs in as ``next_token_logits(token_rows) -> [n, vocab]``; ``model_next_token_logits`` builds
one from a jaxinterp source model (``.logits(tokens [b, s])``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from jaxinterp.config import ConfigError
from jaxinterp.interpret.examples import LatentExamples, examples_of
from jaxinterp.interpret.prompts import detection_messages, fuzzing_messages, highlight, render_prompt, token_strings

__all__ = ["LatentScore", "answer_token_ids", "answer_probabilities", "model_next_token_logits", "auroc",
           "classification_metrics", "scorer_samples", "score_explanations"]

NextTokenLogits = Callable[[list[list[int]]], np.ndarray]
KINDS = ("detection", "fuzz")


class LatentScore(NamedTuple):
    """One latent's scores: ``probabilities [n]`` (p of "1"), ``labels [n]`` (1: activating / correctly
    marked), ``accuracy`` (threshold 0.5), ``balanced_accuracy`` and ``auroc``."""

    probabilities: np.ndarray
    labels: np.ndarray
    accuracy: float
    balanced_accuracy: float
    auroc: float


def answer_token_ids(tokenizer: Any, answers: tuple[str, str] = ("1", "0")) -> tuple[int, int]:
    """The ids of the (yes, no) answers, each of which must be exactly one token of ``tokenizer``."""
    ids = []
    for answer in answers:
        encoded = tokenizer.encode(answer, add_special_tokens=False)
        if len(encoded) != 1:
            raise ConfigError(f"config field 'answers': {answer!r} is {len(encoded)} tokens in this tokenizer "
                              f"({encoded}); each answer must be one token")
        ids.append(int(encoded[0]))
    return ids[0], ids[1]


def answer_probabilities(logits: np.ndarray, yes_id: int, no_id: int) -> np.ndarray:
    """``p(yes) / (p(yes) + p(no))`` per row of next-token ``logits [n, vocab]``: the softmax's normaliser
    cancels, leaving the logistic of the two logits' difference (0.5 when both are -inf)."""
    with np.errstate(invalid="ignore", over="ignore"):  # an endpoint's -inf for an answer outside its top-k
        difference = np.asarray(logits[:, yes_id], np.float64) - np.asarray(logits[:, no_id], np.float64)
        p = 1.0 / (1.0 + np.exp(-difference))
    return np.where(np.isnan(p), 0.5, p)  # neither answer among an endpoint's top-k: no information


def _common_prefix(rows: list[list[int]]) -> int:
    """The length of the longest prefix every row shares."""
    first, length = rows[0], min(len(row) for row in rows)
    for row in rows[1:]:
        length = next((i for i in range(length) if row[i] != first[i]), length)
    return length


def _right_padded(rows: list[list[int]], batch_size: int, bucket: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """([batch_size, width] tokens, [batch_size] last real positions): ``rows`` right-padded to a multiple of
    ``bucket`` and the batch filled up with copies of its first row, so a jitted model sees few shapes."""
    rows = rows + [rows[0]] * (batch_size - len(rows))
    width = int(math.ceil(max(map(len, rows)) / bucket) * bucket)
    tokens = np.full((batch_size, width), pad_id, np.int32)
    for slot, row in enumerate(rows):
        tokens[slot, :len(row)] = row
    return tokens, np.array([len(row) - 1 for row in rows])


def model_next_token_logits(model: Any, pad_id: int = 0, batch_size: int = 8, length_bucket: int = 64,
                            min_prefix: int = 64) -> NextTokenLogits:
    """``next_token_logits`` from a model with ``.logits(tokens [b, s]) -> [b, s, vocab]``.

    Rows are sorted lexicographically, so a batch of ``batch_size`` neighbours shares the longest prefix (a
    scorer's system prompt, few-shot turns and one explanation), and cut into batches, each right-padded to a
    multiple of ``length_bucket`` so a jitted model compiles once per bucket; causal attention leaves each
    row's last real position exactly as it would be unpadded. A model with ``prefixed_last_logits`` (the JAX
    backend's KV cache) runs a shared prefix of ``min_prefix`` tokens or more once per batch (left-padded to the
    bucket) and only the rows' suffixes after it; one with ``last_logits`` unembeds the read positions only."""

    def next_token_logits(token_rows: list[list[int]]) -> np.ndarray:
        lengths = np.array([len(row) for row in token_rows])
        if (lengths == 0).any():
            raise ValueError(f"row {int(np.argmin(lengths))} is empty: there is no last position to read")
        order = sorted(range(len(token_rows)), key=lambda i: token_rows[i])
        out: np.ndarray | None = None
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = [list(token_rows[i]) for i in rows]
            shared = min(_common_prefix(batch), int(lengths[rows].min()) - 1)  # each row keeps a suffix token
            if hasattr(model, "prefixed_last_logits") and shared >= min_prefix:
                width = int(math.ceil(shared / length_bucket) * length_bucket)
                prefix = np.full(width, pad_id, np.int32)
                prefix[width - shared:] = batch[0][:shared]
                suffixes, last = _right_padded([row[shared:] for row in batch], batch_size, length_bucket, pad_id)
                picked = model.prefixed_last_logits(prefix, width - shared, suffixes, last)
            else:
                tokens, last = _right_padded(batch, batch_size, length_bucket, pad_id)
                if hasattr(model, "last_logits"):
                    picked = model.last_logits(tokens, last)
                else:
                    picked = model.logits(tokens)[np.arange(batch_size), last]
            picked = np.asarray(picked, np.float32)[:len(rows)]
            if out is None:
                out = np.zeros((len(token_rows), picked.shape[1]), np.float32)
            out[rows] = picked
        return out if out is not None else np.zeros((0, 0), np.float32)

    return next_token_logits


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic, tied scores counted half); NaN with one class."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # average 1-based rank per tie group
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """``(accuracy, balanced accuracy, AUROC)`` of ``probabilities > 0.5`` against ``labels``; the balanced
    accuracy averages the recall of the classes present (scikit-learn's convention)."""
    labels, predicted = np.asarray(labels).astype(bool), np.asarray(probabilities) > 0.5
    accuracy = float((predicted == labels).mean()) if len(labels) else float("nan")
    recalls = [float((predicted[labels == cls] == cls).mean()) for cls in (False, True) if (labels == cls).any()]
    return accuracy, float(np.mean(recalls)) if recalls else float("nan"), auroc(probabilities, labels)


def _false_marks(activations: np.ndarray, n_incorrect: int, threshold: float) -> np.ndarray | None:
    """delphi's wrong marks: ``n_incorrect`` tokens at or below the threshold, ``w - w // 4`` first if among
    them, the rest by ``random.Random(22).sample`` (sample.py); None when no token is below it."""
    below = np.flatnonzero(activations <= threshold * activations.max()).tolist()
    if not below:
        return None
    count, width = min(n_incorrect, len(below)), len(activations)
    fixed = width - width // 4
    rng = random.Random(22)
    if fixed in below:
        rest = [i for i in below if i != fixed]
        chosen = [fixed] + (rng.sample(rest, count - 1) if count > 1 else [])
    else:
        chosen = rng.sample(below, count)
    marked = np.zeros(width, bool)
    marked[chosen] = True
    return marked


def scorer_samples(examples: LatentExamples, latent: int, kind: str, tokenizer: Any, threshold: float = 0.3,
                   fuzz_type: str = "default") -> tuple[list[str], np.ndarray]:
    """``(texts, labels [n])`` of one latent's detection or fuzzing samples (see the module docstring)."""
    if kind not in KINDS:
        raise ConfigError(f"config field 'kind': one of {KINDS}, got {kind!r}")
    if fuzz_type not in ("default", "active"):
        raise ConfigError(f"config field 'fuzz_type': 'default' or 'active', got {fuzz_type!r}")
    test, non = examples_of(examples.test, latent), examples_of(examples.non_activating, latent)
    texts, labels = [], []
    if kind == "detection":
        for tokens, label in [(t, 1) for t in test.tokens] + [(t, 0) for t in non.tokens]:
            texts.append("".join(token_strings(tokenizer, tokens)))
            labels.append(label)
        return texts, np.asarray(labels, np.int64)
    n_incorrect = math.ceil(np.count_nonzero(test.activations, axis=1).mean()) if len(test.tokens) else 0
    wrong = non if fuzz_type == "default" else test
    for tokens, activations in zip(test.tokens, test.activations):
        texts.append(highlight(token_strings(tokenizer, tokens), activations >= threshold * activations.max()))
        labels.append(1)
    for tokens, activations in zip(wrong.tokens, wrong.activations):
        marked = _false_marks(activations, n_incorrect, threshold)
        if marked is not None:  # delphi shows a stock sentence there; such a sample tells nothing, so it is left out
            texts.append(highlight(token_strings(tokenizer, tokens), marked))
            labels.append(0)
    return texts, np.asarray(labels, np.int64)


def score_explanations(examples: LatentExamples, explanations: dict[int, str], kind: str, tokenizer: Any,
                       next_token_logits: NextTokenLogits, answers: tuple[str, str] = ("1", "0"),
                       few_shot: bool = True, fuzz_type: str = "default", chunk: int = 256,
                       text_tokenizer: Any = None, progress: bool = False) -> dict[int, LatentScore]:
    """Each latent's ``LatentScore`` for its explanation, ``chunk`` prompts per ``next_token_logits`` call. ``tokenizer`` is the scorer's (prompts, answers); ``text_tokenizer`` the source
    model's, whose ids the examples hold (default: the same)."""
    yes_id, no_id = answer_token_ids(tokenizer, answers)
    build = detection_messages if kind == "detection" else fuzzing_messages
    rows, spans, all_labels = [], {}, {}
    for latent, explanation in explanations.items():
        texts, labels = scorer_samples(examples, latent, kind, text_tokenizer or tokenizer, fuzz_type=fuzz_type)
        spans[latent] = (len(rows), len(rows) + len(texts))
        all_labels[latent] = labels
        rows += [render_prompt(build(explanation, text, few_shot), tokenizer) for text in texts]
    probabilities = np.zeros(len(rows))
    # in chunks, so only [chunk, vocab] logits are ever held; latent by latent, so a chunk's prompts share prefixes
    bar = tqdm(total=len(rows), unit="prompt", desc=f"score {kind}", disable=not progress)
    for start in range(0, len(rows), chunk):
        picked = rows[start:start + chunk]
        probabilities[start:start + len(picked)] = answer_probabilities(next_token_logits(picked), yes_id, no_id)
        bar.update(len(picked))
    bar.close()
    scores = {}
    for latent, (start, end) in spans.items():
        p = probabilities[start:end]
        scores[latent] = LatentScore(p, all_labels[latent], *classification_metrics(p, all_labels[latent]))
    return scores
