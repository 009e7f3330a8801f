"""What a dashboard shows of one latent, computed once from a latent cache: its top-activating contexts, its
activation histogram and its firing frequency. The HTML pages (:mod:`jaxinterp.interpret.dashboard`) and the
Neuronpedia JSON (:mod:`jaxinterp.interpret.neuronpedia`) both render these summaries, so they agree.

Top examples are one per context (the context's strongest activation of the latent), as Neuronpedia shows one
activation record per prompt: a latent firing on ten neighbouring tokens of one context fills one slot, not ten.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxinterp.interpret.cache import LatentCacheEntries

__all__ = ["Example", "LatentSummary", "Scores", "firing_counts", "summarize_latents"]

# Scores from any scorer, as plain data: latent → scorer (``detection``, ``fuzzing``, …) → metric → value.
Scores = Mapping[int, Mapping[str, Mapping[str, float]]]


class Example(NamedTuple):
    """One context where a latent fires: ``tokens`` [context_size] ids and the latent's ``values`` on each
    (0 where it does not fire); ``position`` is the strongest token's index."""

    context: int
    position: int
    tokens: np.ndarray
    values: np.ndarray

    @property
    def activation(self) -> float:
        return float(self.values[self.position])


class LatentSummary(NamedTuple):
    """One latent of a cache.

    Attributes:
      latent: its id.
      fired: tokens on which it fired (``firing_counts.npy``).
      n_tokens: tokens cached (``contexts × context_size``).
      max_activation: its largest cached activation (0 if it never fired).
      examples: its top contexts, strongest first.
      histogram_heights: ``[n_bins]`` counts of its non-zero activations.
      histogram_edges: ``[n_bins + 1]`` the bins' edges (from its smallest to its largest activation).
    """

    latent: int
    fired: int
    n_tokens: int
    max_activation: float
    examples: list[Example]
    histogram_heights: np.ndarray
    histogram_edges: np.ndarray

    @property
    def frequency(self) -> float:
        """The fraction of cached tokens on which it fires."""
        return self.fired / max(self.n_tokens, 1)

    @property
    def histogram_centers(self) -> np.ndarray:
        """``[n_bins]`` the bins' midpoints (parallel to ``histogram_heights``)."""
        return (self.histogram_edges[:-1] + self.histogram_edges[1:]) / 2


def firing_counts(module_dir: str, entries: LatentCacheEntries) -> np.ndarray:
    """``[d_sae]`` firings per latent: ``<module>/firing_counts.npy``, else counted from the entries (its length
    then ends at the largest latent that fired)."""
    path = Path(module_dir) / "firing_counts.npy"
    if path.exists():
        return np.load(path)
    return np.bincount(entries.locations[:, 2])


def summarize_latents(entries: LatentCacheEntries, fired: np.ndarray, latents: Sequence[int] | None = None,
                      n_examples: int = 10, n_bins: int = 30) -> list[LatentSummary]:
    """Summaries of ``latents`` (default: every latent that fired, by id) from a cache read whole.

    Args:
      entries: :func:`~jaxinterp.interpret.read_latent_cache`'s entries.
      fired: ``[d_sae]`` firing counts (:func:`firing_counts`).
      n_examples: top contexts per latent.
      n_bins: histogram bins.

    Raises:
      ValueError: a latent id outside ``0..d_sae-1``.
    """
    d_sae = len(fired)
    ids = np.flatnonzero(fired > 0) if latents is None else np.asarray(latents, np.int64)
    bad = ids[(ids < 0) | (ids >= d_sae)]
    if len(bad):
        raise ValueError(f"config field 'latents': ids {bad.tolist()} are outside 0..{d_sae - 1}")
    contexts, context_size = entries.tokens.shape
    # Group the entries by latent once: a stable sort keeps each latent's entries in (context, position) order.
    order = np.argsort(entries.locations[:, 2], kind="stable")
    latent_sorted = entries.locations[order, 2]
    summaries = []
    for latent in ids.tolist():
        lo, hi = np.searchsorted(latent_sorted, [latent, latent + 1])
        rows = order[lo:hi]
        where, values = entries.locations[rows], entries.activations[rows]
        # Each context's strongest entry: sort by activation descending, keep a context's first occurrence.
        strongest = np.argsort(-values, kind="stable")
        _, first = np.unique(where[strongest, 0], return_index=True)
        best = strongest[np.sort(first)]
        best = best[np.argsort(-values[best], kind="stable")][:n_examples]
        examples = []
        for index in best:
            context = int(where[index, 0])
            dense = np.zeros(context_size, np.float32)
            in_context = where[:, 0] == context
            dense[where[in_context, 1]] = values[in_context]
            examples.append(Example(context, int(where[index, 1]), entries.tokens[context], dense))
        top = float(values.max()) if len(values) else 0.0
        low = float(values.min()) if len(values) else 0.0
        heights, edges = np.histogram(values, bins=n_bins, range=(low, top if top > low else low + 1.0))
        summaries.append(LatentSummary(latent, int(fired[latent]), contexts * context_size, top, examples,
                                       heights, edges))
    return summaries
