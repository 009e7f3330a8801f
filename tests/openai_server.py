"""A minimal OpenAI-compatible server on 127.0.0.1 answering with one of jaxinterp's own model backends.

It implements what :class:`jaxinterp.interpret.endpoint.OpenAIEndpoint` calls, the way vLLM answers:
``GET /v1/models``, ``POST /v1/chat/completions`` (the tokenizer's chat template, then greedy or sampled
generation) and ``POST /v1/completions`` with token-id prompts, ``max_tokens: 1`` and ``logprobs: k``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

# generate(prompts: list[list[int]], max_new_tokens, temperature, seed) -> list[list[int]] (the new tokens)
Generate = Callable[[list[list[int]], int, float, int], list[list[int]]]


def chat_tokens(tokenizer: Any, messages: list[dict]) -> list[int]:
    """The chat template's tokens for ``messages``, ready for the assistant's reply."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _handler(name: str, model: Any, tokenizer: Any, generate: Generate, lock: threading.Lock) -> type:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/v1/models":
                return self._send(200, {"object": "list", "data": [{"id": name, "object": "model"}]})
            return self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:  # one model, one request at a time
                if self.path == "/v1/chat/completions":
                    prompt = chat_tokens(tokenizer, body["messages"])
                    new = generate([prompt], body.get("max_tokens", 16), body.get("temperature", 0.0),
                                   body.get("seed", 0))[0]
                    text = tokenizer.decode(new, skip_special_tokens=True)
                    return self._send(200, {"object": "chat.completion", "model": name, "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})
                if self.path == "/v1/completions":
                    prompt = [int(t) for t in body["prompt"]]
                    logprobs = log_softmax(np.asarray(model.logits(np.asarray([prompt], np.int32)))[0, -1])
                    top = np.argsort(-logprobs)[: int(body.get("logprobs", 5))]
                    tops = {tokenizer.decode([int(i)]): float(logprobs[i]) for i in top}
                    first = tokenizer.decode([int(top[0])])
                    return self._send(200, {"object": "text_completion", "model": name, "choices": [
                        {"index": 0, "text": first, "finish_reason": "length",
                         "logprobs": {"tokens": [first], "token_logprobs": [float(logprobs[top[0]])],
                                      "top_logprobs": [tops], "text_offset": [0]}}]})
            return self._send(404, {"error": {"message": f"no route {self.path}"}})

    return Handler


@contextmanager
def serving(name: str, model: Any, tokenizer: Any, generate: Generate) -> Iterator[str]:
    """Serves ``model`` on a free port of 127.0.0.1 in a thread; yields the base URL (``http://…/v1``)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(name, model, tokenizer, generate, threading.Lock()))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
