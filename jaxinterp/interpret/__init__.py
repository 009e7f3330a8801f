"""Auto-interpretation after delphi: latent caches in its layout, per-latent examples, prompts and scorers."""

from jaxinterp.interpret.cache import ACTIVE_ABOVE, LatentCacheEntries, latent_cache, read_latent_cache, split_ranges
from jaxinterp.interpret.examples import (ExampleConfig, ExampleSet, LatentExamples, examples_of, latent_examples,
                                          normalized_activations)

__all__ = ["ACTIVE_ABOVE", "LatentCacheEntries", "latent_cache", "read_latent_cache", "split_ranges",
           "ExampleConfig", "ExampleSet", "LatentExamples", "examples_of", "latent_examples", "normalized_activations"]
