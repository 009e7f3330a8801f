"""Real SmolLM2-135M-Instruct (JAX) as detection and fuzzing scorer of a synthetic one-token latent.

Measured 2026 (12 test + 12 non-activating examples per latent, few-shot prompts): the 135M scorer answers
"1" to nearly everything (mean p("1") 0.74-0.80 for activating and non-activating alike), so accuracy and
balanced accuracy are 0.5 at the 0.5 threshold, with AUROC 0.40-0.61 for the true explanation and 0.31-0.61
for the shuffled one: no margin between them, so only shapes, finiteness and batching exactness are asserted.
"""

import numpy as np
import pytest

from jaxinterp.interpret import (ExampleConfig, answer_probabilities, answer_token_ids, detection_messages,
                                 latent_examples, model_next_token_logits, render_prompt, score_explanations,
                                 scorer_samples)
from tests.test_scoring import WORDS, one_token_cache

pytestmark = pytest.mark.real_model


def test_smollm2_scores_are_probabilities_and_batching_is_exact():
    from jaxinterp.models import load_source_model, load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model("smollm2"))
    examples = latent_examples(one_token_cache(tokenizer), ExampleConfig(min_examples=20, n_non_activating=6,
                                                                          n_examples_test=8, n_quantiles=4))
    model = load_source_model("smollm2", "jax")
    next_token_logits = model_next_token_logits(model, pad_id=tokenizer.pad_token_id, batch_size=8)
    explanation = {0: f'The token "{WORDS[0]}".'}
    for kind in ("detection", "fuzz"):
        score = score_explanations(examples, explanation, kind, tokenizer, next_token_logits)[0]
        print(kind, f"accuracy {score.accuracy:.3f} balanced {score.balanced_accuracy:.3f} auroc {score.auroc:.3f}",
              "p(1)", np.round(score.probabilities, 3).tolist())
        assert score.probabilities.shape == score.labels.shape == (14,)
        assert np.isfinite(score.probabilities).all() and ((score.probabilities > 0) & (score.probabilities < 1)).all()
        assert 0 <= score.balanced_accuracy <= 1 and 0 <= score.auroc <= 1
    # a bucketed, right-padded batch reads what one unpadded row gives
    texts, _ = scorer_samples(examples, 0, "detection", tokenizer)
    rows = [render_prompt(detection_messages(explanation[0], text), tokenizer) for text in texts[:3]]
    yes, no = answer_token_ids(tokenizer)
    batched = answer_probabilities(next_token_logits(rows), yes, no)
    alone = [answer_probabilities(np.asarray(model.logits(np.asarray([row], np.int32))[:, -1]), yes, no)[0]
             for row in rows[:1]]
    np.testing.assert_allclose(batched[:1], alone, atol=2e-3)
