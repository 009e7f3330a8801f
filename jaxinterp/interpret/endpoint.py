"""An OpenAI-compatible HTTP endpoint (vLLM, llama.cpp's server, SGLang, a hosted API) as explainer or scorer.

Two routes of the OpenAI API, which those servers all implement:

- ``POST /v1/chat/completions``: an explanation from chat messages (the server applies its chat template).
- ``POST /v1/completions`` with ``max_tokens: 1`` and ``logprobs: top``: the top log-probabilities of the next
  token after a prompt given as token ids (so the server sees exactly the tokens our tokenizer made). A scorer
  reads the answer tokens' probabilities from them; an answer token outside the server's top ``top`` gets
  -inf (for a two-way answer that puts all the mass on the other one, the best the server says).

Only the standard library is used (``urllib``, threads for concurrent requests); no client package is needed.
``api_key`` is sent as a bearer token when given; a key is read from the environment variable the config names,
never from the config itself.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from jaxinterp.config import ConfigError

__all__ = ["OpenAIEndpoint", "endpoint_next_token_logits"]


class OpenAIEndpoint:
    """A client of one OpenAI-compatible server at ``url`` (e.g. ``http://127.0.0.1:8000/v1``).

    Args:
      model: the served model's name; '' = the first one ``GET /models`` lists.
      api_key_env: environment variable holding an API key ('' = none sent).
      concurrency: requests in flight at once.
    """

    def __init__(self, url: str, model: str = "", api_key_env: str = "", timeout_s: float = 300.0,
                 concurrency: int = 8, field: str = "endpoint"):
        self.url = url.rstrip("/")
        self.field = field  # the config field errors name
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self._headers = {"Content-Type": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env, "")
            if not key:
                raise ConfigError(f"config field 'endpoint_api_key_env': ${api_key_env} is not set")
            self._headers["Authorization"] = f"Bearer {key}"
        self.model = model or self._first_model()

    def _request(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=self._headers,
                                         method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode(errors="replace")
            raise ConfigError(f"config field '{self.field}': {self.url}{path} answered HTTP {error.code}: "
                              f"{detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            reason = getattr(error, "reason", error)
            raise ConfigError(f"config field '{self.field}': cannot reach {self.url}{path} ({reason})") from None

    def _first_model(self) -> str:
        models = self._request("/models").get("data") or []
        if not models:
            raise ConfigError(f"config field '{self.field}': {self.url}/models lists no model")
        return models[0]["id"]

    def _map(self, function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        with ThreadPoolExecutor(max(1, min(self.concurrency, len(items)))) as pool:
            return list(pool.map(function, items))

    def chat(self, conversations: Sequence[Sequence[dict[str, str]]], max_tokens: int, temperature: float = 0.0,
             seed: int = 0) -> list[str]:
        """The assistant's reply to each conversation (a list of ``{"role", "content"}`` messages)."""

        def one(messages: Sequence[dict[str, str]]) -> str:
            answer = self._request("/chat/completions", {"model": self.model, "messages": list(messages),
                                                         "max_tokens": max_tokens, "temperature": temperature,
                                                         "seed": seed})
            return answer["choices"][0]["message"]["content"] or ""

        return self._map(one, conversations)

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], top: int = 20) -> list[dict[str, float]]:
        """``{token text: log-probability}`` of the ``top`` likeliest next tokens after each token-id prompt."""

        def one(prompt: Sequence[int]) -> dict[str, float]:
            answer = self._request("/completions", {"model": self.model, "prompt": [int(t) for t in prompt],
                                                    "max_tokens": 1, "temperature": 0.0, "logprobs": top})
            logprobs = answer["choices"][0].get("logprobs") or {}
            tops = logprobs.get("top_logprobs") or [None]
            if not tops[0]:
                raise ConfigError(f"config field '{self.field}': {self.url}/completions returned no top_logprobs "
                                  "(the server must support the completions API's logprobs)")
            return {token: float(value) for token, value in tops[0].items()}

        return self._map(one, prompts)


def endpoint_next_token_logits(endpoint: OpenAIEndpoint, tokenizer: Any, vocab_size: int,
                               top: int = 20) -> Callable[[Sequence[Sequence[int]]], np.ndarray]:
    """A ``next_token_logits(token_rows) -> [rows, vocab]`` function backed by ``endpoint``: each row's top
    log-probabilities at the ids ``tokenizer`` gives their texts (a text that is not one token is skipped),
    -inf elsewhere. Log-probabilities are logits up to a constant, so a softmax over answer tokens is exact."""

    ids: dict[str, int | None] = {}

    def token_id(text: str) -> int | None:
        if text not in ids:
            encoded = tokenizer.encode(text, add_special_tokens=False)
            ids[text] = encoded[0] if len(encoded) == 1 else None
        return ids[text]

    def next_token_logits(token_rows: Sequence[Sequence[int]]) -> np.ndarray:
        logits = np.full((len(token_rows), vocab_size), -np.inf, np.float32)
        for row, tops in enumerate(endpoint.next_token_logprobs(token_rows, top)):
            for text, value in tops.items():
                index = token_id(text)
                if index is not None:
                    logits[row, index] = max(logits[row, index], value)
        return logits

    return next_token_logits
