"""Auto-interpretation: latent caches in delphi's layout (more to come: examples, explainers, scorers)."""

from jaxinterp.interpret.cache import ACTIVE_ABOVE, LatentCacheEntries, latent_cache, read_latent_cache, split_ranges
from jaxinterp.interpret.run import STAGES, interpret

__all__ = ["ACTIVE_ABOVE", "STAGES", "LatentCacheEntries", "interpret", "latent_cache", "read_latent_cache",
           "split_ranges"]
