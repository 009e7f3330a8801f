"""Auto-interpretation: latent caches in delphi's layout (more to come: examples, explainers, scorers)."""

from jaxinterp.interpret.cache import ACTIVE_ABOVE, LatentCacheEntries, latent_cache, read_latent_cache, split_ranges

__all__ = ["ACTIVE_ABOVE", "LatentCacheEntries", "latent_cache", "read_latent_cache", "split_ranges"]
