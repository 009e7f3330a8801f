"""Detection and fuzzing scores from next-token probabilities: an oracle scorer, scikit-learn's metrics, prompts."""

import re

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from jaxinterp.config import ConfigError
from jaxinterp.interpret.scoring import _false_marks
from jaxinterp.interpret import (ExampleConfig, LatentCacheEntries, answer_token_ids, auroc, classification_metrics,
                                 explainer_messages, examples_of, highlight, latent_examples, model_next_token_logits,
                                 parse_explanation, render_prompt, score_explanations, scorer_samples, token_strings)

WORDS = {0: " the", 1: " ("}


@pytest.fixture(scope="module")
def tokenizer():
    from jaxinterp.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model("smollm2"))


def one_token_cache(tokenizer, contexts: int = 48, context_size: int = 64, seed: int = 0) -> LatentCacheEntries:
    """pydoc text; latent ``i`` fires exactly on the token ``WORDS[i]``, with distinct random activations."""
    from pydoc_data.topics import topics

    text = "".join(topics[key] for key in sorted(topics))[:60000]
    tokens = np.asarray(tokenizer.encode(text, add_special_tokens=False)[:contexts * context_size], np.int64)
    tokens = tokens.reshape(contexts, context_size)
    rng, locations, values = np.random.default_rng(seed), [], []
    for latent, word in WORDS.items():
        (word_id,) = tokenizer.encode(word, add_special_tokens=False)
        context, position = np.nonzero(tokens == word_id)
        locations.append(np.stack([context, position, np.full(len(context), latent)], axis=1))
        values.append(rng.uniform(1.0, 4.0, len(context)).astype(np.float16).astype(np.float32))
    where, act = np.concatenate(locations), np.concatenate(values)
    order = np.lexsort((where[:, 2], where[:, 1], where[:, 0]))
    return LatentCacheEntries(where[order], act[order], tokens, {})


CFG = ExampleConfig(min_examples=20, n_non_activating=20, n_examples_test=20, n_quantiles=5)


def oracle(tokenizer):
    """A fake scorer reading the last prompt's explanation ('The token "X".') and example: detection answers 1
    iff X is in the text, fuzzing iff every marked run is made of X; as [n, vocab] logits."""
    yes, no = answer_token_ids(tokenizer)

    def next_token_logits(rows):
        logits = np.zeros((len(rows), len(tokenizer)), np.float32)
        for i, row in enumerate(rows):
            last = tokenizer.decode(row).split("<|im_start|>user\n")[-1].split("<|im_end|>")[0]
            word = re.search(r'Latent explanation: The token "(.*)"\.', last).group(1)
            text = last.split("Text example:\n", 1)[1]
            marks = re.findall(r"<<(.*?)>>", text, re.DOTALL)
            if marks:
                answer = all(mark.replace(word, "") == "" for mark in marks)
            else:
                answer = re.search(re.escape(word) + (r"(?![A-Za-z])" if word[-1].isalpha() else ""), text) is not None
            logits[i, yes if answer else no] = 5.0
        return logits

    return next_token_logits


def test_an_oracle_scores_true_explanations_high_and_shuffled_ones_at_chance(tokenizer):
    examples = latent_examples(one_token_cache(tokenizer), CFG)
    assert examples.latents.tolist() == [0, 1]
    true = {latent: f'The token "{word}".' for latent, word in WORDS.items()}
    shuffled = {0: true[1], 1: true[0]}
    for kind in ("detection", "fuzz"):
        right = score_explanations(examples, true, kind, tokenizer, oracle(tokenizer))
        wrong = score_explanations(examples, shuffled, kind, tokenizer, oracle(tokenizer))
        for latent in WORDS:
            score = right[latent]
            assert len(score.probabilities) == len(score.labels) == 40 and set(score.labels.tolist()) == {0, 1}
            print(kind, latent, "true", score.balanced_accuracy, score.auroc,
                  "shuffled", wrong[latent].balanced_accuracy, wrong[latent].auroc)
            assert score.balanced_accuracy >= 0.95 and score.auroc >= 0.95, (kind, latent, score)
            assert wrong[latent].balanced_accuracy <= 0.75, (kind, latent, wrong[latent])


def test_fuzzing_samples_follow_delphis_rules(tokenizer):
    examples = latent_examples(one_token_cache(tokenizer), CFG)
    test = examples_of(examples.test, 1)
    texts, labels = scorer_samples(examples, 1, "fuzz", tokenizer)
    assert labels.tolist() == [1] * 20 + [0] * 20
    n_incorrect = int(np.ceil(np.count_nonzero(test.activations, axis=1).mean()))
    for text, tokens, activations in zip(texts[:20], test.tokens, test.activations):
        strings = token_strings(tokenizer, tokens)
        assert text == highlight(strings, activations >= 0.3 * activations.max())
        assert {strings[i] for i in np.flatnonzero(activations)} == {WORDS[1]}  # marks only the latent's token
    non = examples_of(examples.non_activating, 1)
    for text, tokens, activations in zip(texts[20:], non.tokens, non.activations):
        marked = _false_marks(activations, n_incorrect, 0.3)  # pydoc text has its own "<<": check the marks
        assert marked.sum() == n_incorrect and marked[32 - 32 // 4]  # delphi always marks w - w // 4
        assert text == highlight(token_strings(tokenizer, tokens), marked)
    active, labels_active = scorer_samples(examples, 1, "fuzz", tokenizer, fuzz_type="active")
    assert labels_active.tolist() == [1] * 20 + [0] * 20 and active[:20] == texts[:20]
    detection, labels_detection = scorer_samples(examples, 1, "detection", tokenizer)
    assert detection == ["".join(token_strings(tokenizer, t)) for t in (*test.tokens, *non.tokens)]  # unmarked
    assert labels_detection.tolist() == [1] * 20 + [0] * 20
    with pytest.raises(ConfigError, match="config field 'kind'"):
        scorer_samples(examples, 1, "simulation", tokenizer)


def test_metrics_equal_scikit_learns():
    rng = np.random.default_rng(0)
    for n in (2, 7, 50, 301):
        labels = rng.integers(0, 2, n)
        labels[:2] = [0, 1]
        scores = np.round(rng.uniform(0, 1, n), 1)  # with ties
        accuracy, balanced, area = classification_metrics(scores, labels)
        assert area == pytest.approx(roc_auc_score(labels, scores))
        assert balanced == pytest.approx(balanced_accuracy_score(labels, scores > 0.5))
        assert accuracy == pytest.approx(((scores > 0.5) == labels).mean())
    assert np.isnan(auroc(np.array([0.2, 0.9]), np.array([1, 1])))


def test_answers_must_be_single_tokens_and_prompts_render(tokenizer):
    assert answer_token_ids(tokenizer) == tuple(tokenizer.encode(a, add_special_tokens=False)[0] for a in "10")
    with pytest.raises(ConfigError, match="config field 'answers': ' absolutely not' is 2 tokens"):
        answer_token_ids(tokenizer, (" yes", " absolutely not"))
    messages = explainer_messages([(["a", " cat", " sat"], np.array([0.0, 3.0, 0.5]))], max_activation=3.0)
    assert messages[-1]["content"] == 'Example 1: a<< cat>> sat\nActivations: (" cat" : 10)'
    rendered = tokenizer.decode(render_prompt(messages, tokenizer))
    assert rendered.endswith("<|im_start|>assistant\n")
    assert parse_explanation("Some thinking.\n[EXPLANATION]: Cats sitting. ") == "Cats sitting."
    assert parse_explanation("no marker") == "Explanation could not be parsed."


def test_the_model_helper_reads_each_rows_last_real_position():
    class Model:  # logits that encode (row's token at each position): right padding must not leak in
        def __init__(self):
            self.shapes = []

        def logits(self, tokens):
            self.shapes.append(tokens.shape)
            out = np.zeros((*tokens.shape, 8), np.float32)
            out[..., 0] = np.cumsum(tokens, axis=1)  # a causal function of the prefix
            return out

    model = Model()
    rows = [[1, 2, 3], [4] * 70, [5], [6, 7], [1] * 130]
    logits = model_next_token_logits(model, pad_id=0, batch_size=2, length_bucket=64)(rows)
    np.testing.assert_array_equal(logits[:, 0], [sum(r) for r in rows])
    assert model.shapes == [(2, 192), (2, 128), (2, 64)]  # sorted lexicographically, bucketed, fixed batch


def test_a_shared_prefix_run_once_gives_the_full_prompts_logits(tiny_llama):
    from jaxinterp.mesh import make_mesh
    from jaxinterp.models import resolve_model
    from jaxinterp.models.jax_backend import JaxSourceModel

    model = JaxSourceModel(resolve_model(tiny_llama), mesh=make_mesh(data=1, model=1))
    rng = np.random.default_rng(0)
    system = rng.integers(3, 500, size=70).tolist()  # the scorer's instructions and few-shot turns
    explanation = rng.integers(3, 500, size=40).tolist()
    rows = [system + explanation + rng.integers(3, 500, size=n).tolist() for n in (1, 9, 30, 4, 17)]
    rows += [system + rng.integers(3, 500, size=n).tolist() for n in (12, 80, 3)]  # other explanations
    whole = model_next_token_logits(model, batch_size=4, min_prefix=10**9)(rows)  # every row run whole
    calls = []
    prefixed = model.prefixed_last_logits
    model.prefixed_last_logits = lambda *args: calls.append(len(args[0])) or prefixed(*args)
    shared = model_next_token_logits(model, batch_size=4, min_prefix=64)(rows)
    assert len(calls) == 2 and set(calls) <= {64 * 2}  # a prefix of 70 or 110 tokens ran once per batch, left-padded
    np.testing.assert_allclose(shared, whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max())
    full = np.asarray(model.logits(np.asarray([rows[2]], np.int32)))[0, -1]
    np.testing.assert_allclose(shared[2], full, rtol=1e-5, atol=1e-5 * np.abs(full).max())


def test_answer_probabilities_with_an_endpoints_missing_answers():
    from jaxinterp.interpret import answer_probabilities

    logits = np.array([[0.0, 1.0, 2.0], [-np.inf, -np.inf, 0.0], [-np.inf, 0.0, 0.0], [0.0, -np.inf, 0.0]])
    np.testing.assert_allclose(answer_probabilities(logits, 0, 1), [1 / (1 + np.e), 0.5, 0.0, 1.0])
