"""The stages after the cache: explanations, their detection and fuzzing scores (with a shuffled control), and
the dashboards; each a function of the examples and the language model, writing its files atomically.

- ``explanations.jsonl``: per latent ``{"latent", "explanation", "reply"}`` (the explainer's whole reply, and the
  explanation parsed from it as delphi parses it);
- ``scores.jsonl``: per latent and scorer (``detection``, ``fuzz``) the accuracy, balanced accuracy and AUROC of
  the latent's own explanation and of the control (another latent's explanation, a seeded derangement), the
  example counts and each example's p("1");
- ``summary.json`` / ``summary.md``: the means over latents of every metric, true against control.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from jaxinterp.interpret.examples import LatentExamples, examples_of
from jaxinterp.interpret.llm import LanguageModel
from jaxinterp.interpret.prompts import EXPLANATION_MARKER, explainer_messages, parse_explanation, token_strings
from jaxinterp.interpret.scoring import KINDS, score_explanations

__all__ = ["METRICS", "control_explanations", "explain_latents", "score_latents", "summarize_scores", "write_lines",
           "read_lines", "summary_table"]

METRICS = ("accuracy", "balanced_accuracy", "auroc")


def write_lines(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """``records`` as JSON lines at ``path``, written to a temporary sibling and renamed into place."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(temporary, path)


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def explain_latents(examples: LatentExamples, latents: Sequence[int], explainer: LanguageModel, text_tokenizer: Any,
                    batch: int = 64, progress: bool = False) -> list[dict[str, Any]]:
    """One record per latent: its train examples (token text from ``text_tokenizer``, the source model's) in
    delphi's default explainer prompt, the explainer's reply and the explanation parsed from it; ``batch``
    conversations per generation call."""
    position = {int(latent): i for i, latent in enumerate(examples.latents)}
    conversations = []
    for latent in latents:
        train = examples_of(examples.train, latent)
        shown = [(token_strings(text_tokenizer, tokens), activations)
                 for tokens, activations in zip(train.tokens, train.activations)]
        conversations.append(explainer_messages(shown, float(examples.max_activation[position[latent]])))
    replies = []
    bar = tqdm(total=len(conversations), unit="latent", desc="explain", disable=not progress)
    for start in range(0, len(conversations), batch):
        # The reply starts at delphi's marker, so even a small model answers with the explanation's one line.
        replies += explainer.chat(conversations[start:start + batch], reply_prefix=EXPLANATION_MARKER)
        bar.update(len(conversations[start:start + batch]))
    bar.close()
    return [{"latent": int(latent), "explanation": parse_explanation(reply, first_line=True), "reply": reply}
            for latent, reply in zip(latents, replies)]


def control_explanations(explanations: Mapping[int, str], seed: int) -> dict[int, str]:
    """Each latent gets another latent's explanation: a random cyclic shift of a seeded permutation, so no latent
    keeps its own (with two or more latents)."""
    latents = sorted(explanations)
    order = np.random.default_rng(seed).permutation(len(latents))
    return {latents[order[i]]: explanations[latents[order[(i + 1) % len(latents)]]] for i in range(len(latents))}


def score_latents(examples: LatentExamples, explanations: Mapping[int, str], scorer: LanguageModel, text_tokenizer: Any,
                  kinds: Sequence[str] = KINDS, control_seed: int = 0, progress: bool = False) -> list[dict[str, Any]]:
    """Per latent: each scorer's metrics for its explanation and for the control (:func:`control_explanations`)."""
    control = control_explanations(explanations, control_seed) if len(explanations) > 1 else {}
    records = {latent: {"latent": int(latent), "explanation": explanations[latent],
                        "control_explanation": control.get(latent)} for latent in explanations}
    for kind in kinds:
        for which, chosen in (("true", explanations), ("control", control)):
            if not chosen:
                continue
            scores = score_explanations(examples, dict(chosen), kind, scorer.tokenizer, scorer.next_token_logits,
                                        text_tokenizer=text_tokenizer, progress=progress)
            for latent, score in scores.items():
                records[latent].setdefault(kind, {})[which] = {  # NaN (one class only) as JSON null
                    **{metric: (value if value == value else None) for metric, value in (
                        ("accuracy", score.accuracy), ("balanced_accuracy", score.balanced_accuracy),
                        ("auroc", score.auroc))},
                    "n_positive": int(score.labels.sum()), "n_negative": int((1 - score.labels).sum()),
                    "probabilities": [round(float(p), 5) for p in score.probabilities]}
    return [records[latent] for latent in sorted(records)]


def summarize_scores(records: Sequence[Mapping[str, Any]], kinds: Sequence[str] = KINDS) -> dict[str, Any]:
    """Means over latents (null AUROCs, a latent with one class, left out) of every metric, true and control."""
    summary: dict[str, Any] = {"latents": len(records)}
    for kind in kinds:
        for which in ("true", "control"):
            for metric in METRICS:
                values = [r[kind][which][metric] for r in records if which in r.get(kind, {})]
                values = [v for v in values if v is not None]
                summary[f"{kind}_{which}_{metric}"] = float(np.mean(values)) if values else None
    return summary


def summary_table(summary: Mapping[str, Any], kinds: Sequence[str] = KINDS) -> str:
    """The means as a Markdown table: one row per scorer and explanation, one column per metric."""
    lines = ["| scorer | explanations | " + " | ".join(METRICS) + " |", "|---|---|" + "---:|" * len(METRICS)]
    for kind in kinds:
        for which, label in (("true", "the latent's own"), ("control", "shuffled (control)")):
            cells = [summary.get(f"{kind}_{which}_{metric}") for metric in METRICS]
            lines.append(f"| {kind} | {label} | " + " | ".join("–" if c is None else f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"
