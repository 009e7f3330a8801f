"""The explainer and scorer language models: a local jaxinterp backend or an OpenAI-compatible endpoint.

An *explainer* maps chat conversations to replies; a *scorer* maps prompts (token ids) to next-token logits.
Locally both run on jaxinterp's own backends (:func:`jaxinterp.models.load_source_model`: JAX, the same code on
a TPU slice, or torch): explanations by :func:`jaxinterp.models.generate` with a KV cache, scores by one batched
forward pass per bucket of prompts (:func:`~jaxinterp.interpret.scoring.model_next_token_logits`), no generation.
Remotely, :class:`~jaxinterp.interpret.endpoint.OpenAIEndpoint`'s chat and completions routes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxinterp.interpret.endpoint import OpenAIEndpoint, endpoint_next_token_logits
from jaxinterp.interpret.prompts import render_prompt
from jaxinterp.interpret.scoring import model_next_token_logits

__all__ = ["LanguageModel", "Timer", "load_language_model"]

Messages = Sequence[dict[str, str]]


class Timer:
    """Seconds spent and tokens handled by one kind of call, for the run's tokens/s."""

    def __init__(self) -> None:
        self.seconds, self.tokens, self.calls = 0.0, 0, 0

    def add(self, seconds: float, tokens: int) -> None:
        self.seconds, self.tokens, self.calls = self.seconds + seconds, self.tokens + tokens, self.calls + 1

    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


class LanguageModel(NamedTuple):
    """One model as explainer and scorer: ``name``, its ``tokenizer`` (the scorer's prompts are its tokens),
    ``chat(conversations, reply_prefix="") -> replies`` (a local model's reply is started with ``reply_prefix``)
    and ``next_token_logits(token_rows) -> [rows, vocab]``; ``generated``
    counts new tokens and ``scored`` prompt tokens with their seconds."""

    name: str
    tokenizer: Any
    chat: Callable[[Sequence[Messages]], list[str]]
    next_token_logits: Callable[[list[list[int]]], np.ndarray]
    generated: Timer
    scored: Timer


def _stop_ids(tokenizer: Any) -> list[int]:
    """The ids that end an assistant turn: EOS and the chat template's end-of-turn token where it has one."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for text in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        token = tokenizer.convert_tokens_to_ids(text)
        if isinstance(token, int) and token != tokenizer.unk_token_id and token >= 0:
            ids.add(token)
    return sorted(ids)


def _timed(next_token_logits: Callable[[list[list[int]]], np.ndarray],
           timer: Timer) -> Callable[[list[list[int]]], np.ndarray]:
    """``next_token_logits`` adding its seconds and prompt tokens to ``timer``."""

    def timed(rows: list[list[int]]) -> np.ndarray:
        start = time.perf_counter()
        logits = next_token_logits(rows)
        timer.add(time.perf_counter() - start, sum(map(len, rows)))
        return logits

    return timed


def load_language_model(spec: str, backend: str, endpoint: str, field: str, max_new_tokens: int,
                        temperature: float, seed: int, generation_batch: int, score_batch: int,
                        api_key_env: str = "") -> LanguageModel:
    """The explainer/scorer ``spec`` names: a local model (``smollm2``, a .gguf, an HF directory) on ``backend``,
    or, when ``endpoint`` is a URL, that server (``spec`` then names the tokenizer the prompts are made with)."""
    from jaxinterp.models import generate, load_source_model, load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(spec))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    generated, scored = Timer(), Timer()
    if endpoint:
        server = OpenAIEndpoint(endpoint, api_key_env=api_key_env, field=field)
        remote_logits = endpoint_next_token_logits(server, tokenizer, len(tokenizer))

        def chat(conversations: Sequence[Messages], reply_prefix: str = "") -> list[str]:
            del reply_prefix  # the chat route has no portable way to start the assistant's turn
            start = time.perf_counter()
            replies = server.chat(conversations, max_new_tokens, temperature, seed)
            generated.add(time.perf_counter() - start, sum(len(tokenizer.encode(r)) for r in replies))
            return replies

        return LanguageModel(f"{server.model} at {endpoint}", tokenizer, chat, _timed(remote_logits, scored),
                             generated, scored)

    model = load_source_model(spec, backend=backend)
    local_logits = model_next_token_logits(model, pad_id=pad_id, batch_size=score_batch)
    stops = _stop_ids(tokenizer)

    def chat(conversations: Sequence[Messages], reply_prefix: str = "") -> list[str]:
        # A reply_prefix starts the assistant's turn (e.g. the explanation marker): the model continues from it.
        prefix = tokenizer.encode(reply_prefix, add_special_tokens=False) if reply_prefix else []
        prompts = [render_prompt(list(messages), tokenizer) + prefix for messages in conversations]
        start = time.perf_counter()
        new = generate(model, prompts, max_new_tokens, temperature=temperature, seed=seed, stop_token_ids=stops,
                       batch_size=generation_batch)
        generated.add(time.perf_counter() - start, sum(map(len, new)))
        return [reply_prefix + tokenizer.decode(tokens, skip_special_tokens=True) for tokens in new]

    return LanguageModel(f"{spec} ({model.backend})", tokenizer, chat, _timed(local_logits, scored), generated,
                         scored)
