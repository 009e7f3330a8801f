"""Explainer and scorer prompts as chat messages, in our words after delphi's (Paulo et al. 2024).

- the explainer follows ``delphi/explainers/default/prompts.py`` and ``prompt_builder.py`` (the default
  explainer, ``activations=True``, no chain of thought): examples with the activating tokens between ``<<`` and
  ``>>``, each followed by its marked tokens' 0-10 activations, and the explanation on a last line after
  ``[EXPLANATION]:``; ``parse_explanation`` is ``delphi/explainers/explainer.py``'s regular expression;
- detection follows ``delphi/scorers/classifier/prompts/detection_prompt.py`` and fuzzing
  ``.../fuzz_prompt.py``, with one example per prompt and a one-digit answer (1: it has the latent / its
  marks are right; 0: not), so the scorer's answer is the very next token after the rendered prompt.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

__all__ = ["EXPLANATION_MARKER", "LEFT", "RIGHT", "token_strings", "highlight", "explainer_messages",
           "detection_messages", "fuzzing_messages", "render_prompt", "parse_explanation"]

EXPLANATION_MARKER = "[EXPLANATION]:"
LEFT, RIGHT = "<<", ">>"  # delphi's marks (scorers/classifier/sample.py)
UNPARSED = "Explanation could not be parsed."  # delphi's text for a reply without the marker

_EXPLAINER_SYSTEM = f"""You study patterns in text for an interpretability investigation: you will read text \
examples in which some tokens are marked like {LEFT}this{RIGHT} (a run of consecutive marked tokens shares one pair \
of marks, {LEFT}like this run{RIGHT}), and you describe what the marked tokens have in common.
After each example, its marked tokens are listed with how strongly each one matters, from 0 to 10.

- Keep the final description short and specific: say what the marked tokens, or the text around them, share.
- Summarise the pattern instead of listing the tokens; skip examples that tell you nothing.
- Do not mention the marks themselves, and do not give several alternative explanations.
- End with one line holding the explanation, after {EXPLANATION_MARKER}
"""

_EXPLAINER_SHOTS = [  # (examples, explanation): our own, in the shape of delphi's three few-shot examples
    (f"Example 1: she was {LEFT}over the moon{RIGHT} about it\nActivations: (\"over\" : 6), (\" the\" : 5), "
     f"(\" moon\" : 9)\nExample 2: there is more {LEFT}than meets the eye{RIGHT}!\nActivations: (\"than\" : 5), "
     f"(\" meets\" : 7), (\" the\" : 6), (\" eye\" : 8)",
     "Common idioms expressing something positive or surprising."),
    (f"Example 1: the river is wide but the sea is wid{LEFT}er{RIGHT}.\nActivations: (\"er\" : 8)\n"
     f"Example 2: each year you grow tall{LEFT}er{RIGHT}\nActivations: (\"er\" : 3)",
     'The suffix "er" closing a comparative adjective.'),
]

_DETECTION_SYSTEM = """You are a careful linguistics researcher. You are given the explanation of a latent \
feature of text, such as "male pronouns" or "text with negative sentiment", and one text example.
Decide whether the example contains the feature. Answer with a single digit: 1 if it does, 0 if it does not. \
Write nothing else."""

_FUZZING_SYSTEM = f"""You are a careful linguistics researcher. You are given the explanation of a latent \
feature of text and one text example in which some tokens are marked between {LEFT} and {RIGHT}. Some examples are \
marked wrongly.
Decide whether every marked token is one the feature describes. Answer with a single digit: 1 if all marks are \
correct, 0 if any is wrong. Write nothing else."""

_DETECTION_SHOTS = [  # our own, after detection_prompt.py's (neuronpedia-derived) examples
    ("Words for positions in American football.", "Patriots tight end Rob Gronkowski had his best game", "1"),
    ('The word "guys" in the phrase "you guys".', "the committee will vote on the proposal next week", "0"),
]

_FUZZING_SHOTS = [  # our own, after fuzz_prompt.py's examples
    ('"of" before a capitalised word.', f"she was named Head{LEFT} of{RIGHT} Talent Development", "1"),
    ('The word "guys" in the phrase "you guys".', f"I hope you{LEFT} really{RIGHT} like her, and be nice", "0"),
]


def token_strings(tokenizer: Any, tokens: np.ndarray) -> list[str]:
    """Each token decoded alone, as delphi's ``tokenizer.batch_decode(example.tokens)``."""
    return [tokenizer.decode([int(token)]) for token in tokens]


def highlight(str_tokens: list[str], marked: np.ndarray) -> str:
    """The text with each run of marked tokens between ``<<`` and ``>>`` (delphi's ``_highlight``)."""
    out, inside = [], False
    for text, mark in zip(str_tokens, np.asarray(marked, bool).tolist()):
        if mark != inside:
            out.append(LEFT if mark else RIGHT)
            inside = mark
        out.append(text)
    return "".join(out + ([RIGHT] if inside else []))


def _explainer_example(index: int, str_tokens: list[str], activations: np.ndarray, max_activation: float,
                       threshold: float, show_activations: bool) -> str:
    """One explainer example: marked where activation > threshold × the example's maximum (explainer.py)."""
    marked = activations > activations.max() * threshold
    text = f"Example {index}: {highlight(str_tokens, marked)}"
    if not show_activations:
        return text
    scale = np.clip(np.ceil(activations * 10 / max(max_activation, 1e-6)), 0, 10)  # delphi's normalisation
    shown = [f'("{str_tokens[i]}" : {int(scale[i])})' for i in np.flatnonzero(marked)[:11]]  # delphi lists <= 11
    return text + "\nActivations: " + ", ".join(shown)


def explainer_messages(examples: list[tuple[list[str], np.ndarray]], max_activation: float, threshold: float = 0.3,
                       show_activations: bool = True) -> list[dict[str, str]]:
    """The explainer's chat: system, two few-shot turns, then ``examples`` (``(str_tokens, activations [w])``)."""
    messages = [{"role": "system", "content": _EXPLAINER_SYSTEM}]
    for shown, explanation in _EXPLAINER_SHOTS:
        messages += [{"role": "user", "content": shown}, {"role": "assistant",
                                                          "content": f"{EXPLANATION_MARKER} {explanation}"}]
    body = "\n".join(_explainer_example(i + 1, toks, np.asarray(acts, np.float32), max_activation, threshold,
                                        show_activations) for i, (toks, acts) in enumerate(examples))
    return messages + [{"role": "user", "content": body}]


def _scorer_user(explanation: str, text: str) -> str:
    return f"Latent explanation: {explanation}\n\nText example:\n{text}"


def _scorer_messages(system: str, shots: list[tuple[str, str, str]], explanation: str, text: str,
                     few_shot: bool) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}]
    for shot_explanation, shot_text, answer in shots if few_shot else []:
        messages += [{"role": "user", "content": _scorer_user(shot_explanation, shot_text)},
                     {"role": "assistant", "content": answer}]
    return messages + [{"role": "user", "content": _scorer_user(explanation, text)}]


def detection_messages(explanation: str, text: str, few_shot: bool = True) -> list[dict[str, str]]:
    """Detection: does ``text`` (unmarked) have the latent ``explanation`` describes? (detection_prompt.py)"""
    return _scorer_messages(_DETECTION_SYSTEM, _DETECTION_SHOTS, explanation, text, few_shot)


def fuzzing_messages(explanation: str, highlighted_text: str, few_shot: bool = True) -> list[dict[str, str]]:
    """Fuzzing: are all of ``highlighted_text``'s marked tokens the latent's? (fuzz_prompt.py)"""
    return _scorer_messages(_FUZZING_SYSTEM, _FUZZING_SHOTS, explanation, highlighted_text, few_shot)


def render_prompt(messages: list[dict[str, str]], tokenizer: Any) -> list[int]:
    """Token ids of ``messages`` in the tokenizer's chat template, ending where the assistant's reply starts."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no chat template")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    return [int(i) for i in ids]


def parse_explanation(text: str, first_line: bool = False) -> str:
    """The explanation after the last line's marker (delphi's ``\\[EXPLANATION\\]:\\s*(.*)``, DOTALL), or
    delphi's fallback text; with ``first_line``, only the first non-empty line after the marker (a reply that
    was started at the marker, whose model may ramble on after its answer)."""
    match = re.search(re.escape(EXPLANATION_MARKER) + r"\s*(.*)", text, re.DOTALL)
    if not match:
        return UNPARSED
    if first_line:
        return next((line.strip() for line in match.group(1).splitlines() if line.strip()), UNPARSED)
    return match.group(1).strip()
