"""The OpenAI-compatible endpoint client against a local server (tests/openai_server.py) that answers with our
own SmolLM2 backend: the replies and next-token log-probabilities it returns equal the local model's."""

import numpy as np
import pytest

from jaxinterp.config import ConfigError
from jaxinterp.interpret.endpoint import OpenAIEndpoint, endpoint_next_token_logits
from jaxinterp.models import load_source_model, load_tokenizer, resolve_model
from tests.openai_server import chat_tokens, log_softmax, serving

pytestmark = pytest.mark.real_model


def greedy(model):
    """The server's generation: jaxinterp's KV-cache greedy decoding (tests/test_generate.py checks it against full
    forwards)."""
    from jaxinterp.models import generate

    def run(prompts, max_new_tokens, temperature, seed):
        return generate(model, prompts, max_new_tokens, temperature=temperature, seed=seed)

    return run


@pytest.fixture(scope="module")
def smollm2():
    model = load_source_model("smollm2", backend="jax")
    return model, load_tokenizer(resolve_model("smollm2"))


def test_chat_and_logprobs_through_the_endpoint_equal_the_local_model(smollm2):
    model, tokenizer = smollm2
    generate = greedy(model)
    messages = [[{"role": "user", "content": "Name one colour."}], [{"role": "user", "content": "Say hello."}]]
    with serving("smollm2-local", model, tokenizer, generate) as url:
        endpoint = OpenAIEndpoint(url, concurrency=2)
        assert endpoint.model == "smollm2-local"
        replies = endpoint.chat(messages, max_tokens=8)
        prompts = [tokenizer.encode("The capital of France is"), tokenizer.encode("def f(x):\n    return")]
        logits = endpoint_next_token_logits(endpoint, tokenizer, len(tokenizer), top=20)(prompts)
    for conversation, reply in zip(messages, replies):
        prompt = chat_tokens(tokenizer, conversation)
        assert reply == tokenizer.decode(generate([prompt], 8, 0.0, 0)[0], skip_special_tokens=True)
        assert reply.strip()
    for prompt, row in zip(prompts, logits):
        local = log_softmax(np.asarray(model.logits(np.asarray([prompt], np.int32)))[0, -1])
        shown = np.isfinite(row)
        assert 15 <= shown.sum() <= 20  # the top 20, less any text that is not one token
        np.testing.assert_allclose(row[shown], local[shown], atol=1e-5)
        assert np.argmax(row) == np.argmax(local)


def test_an_unreachable_endpoint_is_one_line_naming_the_field():
    with pytest.raises(ConfigError, match=r"config field 'endpoint': cannot reach http://127.0.0.1:9/v1/models") as err:
        OpenAIEndpoint("http://127.0.0.1:9/v1", timeout_s=5)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="config field 'endpoint_api_key_env': \\$JAXINTERP_NO_SUCH_KEY is not set"):
        OpenAIEndpoint("http://127.0.0.1:9/v1", model="m", api_key_env="JAXINTERP_NO_SUCH_KEY")


def test_interpret_explains_and_scores_through_endpoints(tiny_llama_run, tmp_path):
    import json

    from jaxinterp import schemas
    from jaxinterp.config import load_config
    from jaxinterp.interpret import interpret

    model = load_source_model("smollm2", backend="torch")  # no compile per prompt shape: one request per prompt
    tokenizer = load_tokenizer(resolve_model("smollm2"))
    with serving("smollm2-torch", model, tokenizer, greedy(model)) as url:
        summary = interpret(load_config("configs/interpret.py", {
            "run": str(tiny_llama_run / "run"), "out": str(tmp_path / "i"), "n_tokens": 64 * 64, "min_examples": 20,
            "n_latents": 2, "n_examples_train": 3, "n_examples_test": 2, "n_non_activating": 2, "n_quantiles": 1,
            "max_new_tokens": 8, "explainer_endpoint": url, "stages": "cache,explain,score"},
            schemas.INTERPRET, "interpret"))
    assert summary["score"]["scorer"] == f"smollm2-torch at {url}"
    replies = [json.loads(line)["reply"] for line in (tmp_path / "i" / "explanations.jsonl").read_text().splitlines()]
    assert len(replies) == 2 and all(reply.strip() for reply in replies)
    scores = [json.loads(line) for line in (tmp_path / "i" / "scores.jsonl").read_text().splitlines()]
    for record in scores:  # the scorer's p("1") from the server's top-20 log-probabilities
        probabilities = record["detection"]["true"]["probabilities"]
        assert len(probabilities) == 4 and all(0 <= p <= 1 for p in probabilities)
