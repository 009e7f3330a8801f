"""Auto-interpretation after delphi: latent caches in its layout, per-latent examples, prompts, scorers, dashboards,
and the ``jaxinterp interpret`` run that chains them (dashboards, logit effects, Neuronpedia JSON and the HTTP
endpoint client live in their submodules)."""

from jaxinterp.interpret.cache import ACTIVE_ABOVE, LatentCacheEntries, latent_cache, read_latent_cache, split_ranges
from jaxinterp.interpret.examples import (ExampleConfig, ExampleSet, LatentExamples, examples_of, latent_examples,
                                          normalized_activations)
from jaxinterp.interpret.prompts import (EXPLANATION_MARKER, detection_messages, explainer_messages, fuzzing_messages,
                                         highlight, parse_explanation, render_prompt, token_strings)
from jaxinterp.interpret.run import STAGES, interpret
from jaxinterp.interpret.scoring import (LatentScore, answer_probabilities, answer_token_ids, auroc,
                                         classification_metrics, model_next_token_logits, score_explanations,
                                         scorer_samples)

__all__ = ["ACTIVE_ABOVE", "LatentCacheEntries", "latent_cache", "read_latent_cache", "split_ranges",
           "ExampleConfig", "ExampleSet", "LatentExamples", "examples_of", "latent_examples", "normalized_activations",
           "EXPLANATION_MARKER", "detection_messages", "explainer_messages", "fuzzing_messages", "highlight",
           "parse_explanation", "render_prompt", "token_strings",
           "LatentScore", "answer_probabilities", "answer_token_ids", "auroc", "classification_metrics",
           "model_next_token_logits", "score_explanations", "scorer_samples", "STAGES", "interpret"]
