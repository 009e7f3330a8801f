"""Per-latent example windows from a latent cache, after delphi's constructor and sampler (Paulo et al. 2024).

Follows ``eai-delphi`` 0.1.3 ``delphi.latents.constructors.constructor`` and ``delphi.latents.samplers.sampler``
with ``ConstructorConfig`` / ``SamplerConfig``'s defaults, over every latent at once:

- the cached contexts are cut into windows of ``example_ctx_len`` tokens; each window a latent fires in is one
  activating example (delphi's ``record.examples``), sorted by the window's maximum activation, descending;
  a latent with fewer than ``min_examples`` such windows is dropped;
- ``center_examples`` keeps delphi 0.1.3's meaning, which reads inverted: ``True`` (the default) takes the
  fixed windows (``pool_max_activation_windows``), ``False`` re-cuts each window from it and its neighbours so
  its maximum sits at ``example_ctx_len - example_ctx_len // 4``, dropping each context's first and last window
  (``pool_centered_activation_windows``);
- train and test examples come from delphi's samplers (``quantiles``: ``n // n_quantiles`` drawn from each of
  ``n_quantiles`` equal slices of the sorted examples; ``top``; ``random``; ``mix``) with Python's ``random``
  seeded 22 per latent as delphi does, so they equal delphi's picks exactly;
- non-activating examples (``non_activating_source='random'``): ``n_non_activating`` windows drawn with
  replacement from the windows the latent never fires in, none if there are fewer. delphi draws them with
  ``torch.randint`` under ``torch.manual_seed(42)``; this module draws them from numpy's generator seeded
  ``(seed, latent)``, so they follow delphi's rule but are not delphi's windows.

delphi 0.1.3's ``ConstructorConfig`` has no ``max_examples``: every activating window is an example. Here
``max_examples`` bounds only how many of the sorted windows come back as ``examples`` (0: all); the samplers
always draw from all of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from jaxinterp.config import ConfigError
from jaxinterp.interpret.cache import LatentCacheEntries

__all__ = ["ExampleConfig", "ExampleSet", "LatentExamples", "latent_examples", "normalized_activations",
           "examples_of"]

_TRAIN_TYPES = ("top", "random", "quantiles", "mix")


@dataclass(frozen=True)
class ExampleConfig:
    """delphi 0.1.3's ``ConstructorConfig`` and ``SamplerConfig`` fields (their defaults), plus ``max_examples``."""

    example_ctx_len: int = 32
    min_examples: int = 200
    n_non_activating: int = 50
    center_examples: bool = True
    non_activating_source: str = "random"
    n_examples_train: int = 40
    n_examples_test: int = 50
    n_quantiles: int = 10
    train_type: str = "quantiles"
    test_type: str = "quantiles"
    ratio_top: float = 0.2
    max_examples: int = 0
    sampler_seed: int = 22  # delphi's split_quantiles / random sampler seed
    seed: int = 42  # delphi's constructor seed (non-activating draws)

    def check(self, context_size: int) -> None:
        """Refuses a field delphi would refuse or this module does not build, naming it."""
        if self.example_ctx_len < 1 or context_size % self.example_ctx_len:
            raise ConfigError(f"config field 'example_ctx_len': {self.example_ctx_len} must divide the cache's "
                              f"context size {context_size}")
        if self.non_activating_source != "random":
            raise ConfigError(f"config field 'non_activating_source': only 'random' is built, got "
                              f"{self.non_activating_source!r}")
        if self.train_type not in _TRAIN_TYPES:
            raise ConfigError(f"config field 'train_type': one of {_TRAIN_TYPES}, got {self.train_type!r}")
        if self.test_type != "quantiles":
            raise ConfigError(f"config field 'test_type': only 'quantiles' (delphi's only one), got {self.test_type!r}")
        if self.n_quantiles < 1:
            raise ConfigError(f"config field 'n_quantiles': must be at least 1, got {self.n_quantiles}")
        # delphi draws n // n_quantiles examples from each quantile: fewer than n_quantiles draws none at all
        quantile_fields = [("n_examples_test", self.n_examples_test)]
        if self.train_type in ("quantiles", "mix"):
            share = self.n_examples_train if self.train_type == "quantiles" else int(
                self.n_examples_train * (1 - self.ratio_top))
            quantile_fields.append(("n_examples_train", share))
        for field, count in quantile_fields:
            if 0 < count < self.n_quantiles:
                raise ConfigError(f"config field '{field}': {count} quantile draws over n_quantiles="
                                  f"{self.n_quantiles} is none per quantile (delphi draws {field} // n_quantiles "
                                  "from each); raise it or lower n_quantiles")


class ExampleSet(NamedTuple):
    """Examples of several latents, one row each: ``latent [n]`` int64, ``tokens [n, example_ctx_len]`` int64,
    ``activations [n, example_ctx_len]`` float32, ``quantile [n]`` int64 (delphi's ``ActivatingExample.quantile``:
    the quantile a sampler drew it from, else 0; -1 for a non-activating example, delphi's distance)."""

    latent: np.ndarray
    tokens: np.ndarray
    activations: np.ndarray
    quantile: np.ndarray


class LatentExamples(NamedTuple):
    """Every kept latent's examples: ``latents [L]`` (ascending ids), ``max_activation [L]`` (its top example's
    maximum, delphi's ``record.max_activation``), ``n_activating [L]`` (activating windows),
    ``per_context_frequency [L]`` (those over all windows), and the ``examples`` (sorted activating windows,
    up to ``max_examples`` each), ``train``, ``test`` and ``non_activating`` sets."""

    latents: np.ndarray
    max_activation: np.ndarray
    n_activating: np.ndarray
    per_context_frequency: np.ndarray
    examples: ExampleSet
    train: ExampleSet
    test: ExampleSet
    non_activating: ExampleSet


def normalized_activations(activations: np.ndarray, max_activation: np.ndarray | float) -> np.ndarray:
    """delphi's 0..10 integer activation scale: ``ceil(a * 10 / max)`` clipped to [0, 10] (samplers.py)."""
    scale = np.maximum(np.asarray(max_activation, np.float32), 1e-6)
    return np.clip(np.ceil(activations * 10 / scale), 0, 10)


def examples_of(examples: ExampleSet, latent: int) -> ExampleSet:
    """The rows of ``examples`` that belong to ``latent``, in order."""
    mask = examples.latent == latent
    return ExampleSet(*(field[mask] for field in examples))


class _Pairs(NamedTuple):
    """Activating (latent, window) pairs, in latent then window order, with their entries' spans."""

    latent: np.ndarray  # [P]
    window: np.ndarray  # [P] global window index
    max: np.ndarray  # [P] the window's maximum activation
    entry_start: np.ndarray  # [P] first entry in the latent-sorted entries
    entry_count: np.ndarray  # [P]
    within: np.ndarray  # [N] each sorted entry's position in its window
    values: np.ndarray  # [N] each sorted entry's activation


def _pairs(entries: LatentCacheEntries, window_len: int) -> _Pairs:
    """Groups the cache's entries by (latent, window), keeping delphi's per-latent (context, position) order."""
    context_size = entries.tokens.shape[1]
    n_windows = entries.tokens.size // window_len
    order = np.argsort(entries.locations[:, 2], kind="stable")
    where = entries.locations[order]
    flat = where[:, 0] * context_size + where[:, 1]
    key = where[:, 2] * n_windows + flat // window_len
    start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
    values = entries.activations[order].astype(np.float32)
    count = np.diff(np.r_[start, len(key)])
    maxima = np.maximum.reduceat(values, start) if len(start) else np.zeros(0, np.float32)
    return _Pairs(where[start, 2], key[start] % n_windows, maxima, start, count, flat % window_len, values)


def _dense(pairs: _Pairs, chosen: np.ndarray, window_len: int) -> np.ndarray:
    """``[len(chosen), window_len]`` activations of the chosen pairs (zeros where the latent is silent)."""
    counts = pairs.entry_count[chosen]
    rows = np.repeat(np.arange(len(chosen)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    entry = np.repeat(pairs.entry_start[chosen], counts) + offsets
    dense = np.zeros((len(chosen), window_len), np.float32)
    dense[rows, pairs.within[entry]] = pairs.values[entry]
    return dense


def _quantile_picks(n: int, n_quantiles: int, n_samples: int, seed: int) -> tuple[list[int], list[int]]:
    """delphi's ``split_quantiles`` on ``n`` sorted examples: (indices, quantile of each), same ``random`` draws."""
    rng = random.Random(seed)  # delphi calls random.seed(seed) once per call, then random.sample per quantile
    size, per = n // n_quantiles, n_samples // n_quantiles
    picks, quantiles = [], []
    for i in range(n_quantiles):
        population = list(range(i * size, (i + 1) * size))
        chosen = population if len(population) < per else rng.sample(population, per)
        picks += chosen
        quantiles += [i] * len(chosen)
    return picks, quantiles


def _train_picks(n: int, cfg: ExampleConfig) -> tuple[list[int], list[int]]:
    """delphi's ``samplers.train`` picks among ``n`` sorted examples."""
    if cfg.train_type == "top":
        return list(range(min(n, cfg.n_examples_train))), [0] * min(n, cfg.n_examples_train)
    if cfg.train_type == "random":
        if n < cfg.n_examples_train:
            return list(range(n)), [0] * n
        return random.Random(cfg.sampler_seed).sample(range(n), cfg.n_examples_train), [0] * cfg.n_examples_train
    if cfg.train_type == "quantiles":
        return _quantile_picks(n, cfg.n_quantiles, cfg.n_examples_train, cfg.sampler_seed)
    n_top = int(cfg.n_examples_train * cfg.ratio_top)  # mix: the top slice, then quantiles of the rest
    picks, quantiles = _quantile_picks(max(n - n_top, 0), cfg.n_quantiles,
                                       int(cfg.n_examples_train * (1 - cfg.ratio_top)), cfg.sampler_seed)
    return list(range(min(n_top, n))) + [n_top + p for p in picks], [0] * min(n_top, n) + quantiles


def _kth_free(active_sorted: np.ndarray, k: np.ndarray) -> np.ndarray:
    """The ``k``-th (0-based) window index absent from ``active_sorted`` (ascending, unique), per ``k``."""
    # with a_j the j-th active window, the k-th free window is k + #{j : a_j - j <= k}
    shifted = active_sorted - np.arange(len(active_sorted))
    return k + np.searchsorted(shifted, k, side="right")


def latent_examples(entries: LatentCacheEntries, cfg: ExampleConfig = ExampleConfig()) -> LatentExamples:
    """Every latent's examples from a read cache (see the module docstring for the rules)."""
    context_size = entries.tokens.shape[1]
    cfg.check(context_size)
    window_len = cfg.example_ctx_len
    windows_tokens = entries.tokens.reshape(-1, window_len).astype(np.int64)
    n_windows, per_context = windows_tokens.shape[0], context_size // window_len
    pairs = _pairs(entries, window_len)
    # delphi: pooled windows sorted by their maximum; the centred variant drops each context's edge windows
    keep = np.ones(len(pairs.latent), bool)
    if not cfg.center_examples:
        keep = (pairs.window % per_context != 0) & (pairs.window % per_context != per_context - 1)
    order = np.lexsort((np.arange(len(pairs.latent)), -pairs.max, pairs.latent))
    order = order[keep[order]]
    latents, first, n_kept = np.unique(pairs.latent[order], return_index=True, return_counts=True)
    n_all = np.searchsorted(pairs.latent, latents, side="right") - np.searchsorted(pairs.latent, latents)
    kept = n_kept >= cfg.min_examples
    latents, first, n_kept, n_all = latents[kept], first[kept], n_kept[kept], n_all[kept]

    def rows(chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and activations of chosen pairs, pooled as delphi pools them."""
        if cfg.center_examples:
            return windows_tokens[pairs.window[chosen]], _dense(pairs, chosen, window_len)
        return _centred(pairs, keep, chosen, windows_tokens, window_len)

    def example_set(pair_rank: list[np.ndarray], quantiles: list[np.ndarray]) -> ExampleSet:
        chosen = np.concatenate([np.zeros(0, np.int64), *pair_rank]).astype(np.int64)
        tokens, activations = rows(order[chosen])
        latent = pairs.latent[order[chosen]]
        return ExampleSet(latent, tokens, activations, np.concatenate([np.zeros(0, np.int64), *quantiles]))

    top = [start + np.arange(min(count, cfg.max_examples or count)) for start, count in zip(first, n_kept)]
    top_quantiles = [np.zeros(len(t), np.int64) for t in top]
    train_rank, train_q, test_rank, test_q = [], [], [], []
    for start, count in zip(first.tolist(), n_kept.tolist()):
        picks, quantiles = _train_picks(count, cfg)
        train_rank.append(start + np.asarray(picks, np.int64))
        train_q.append(np.asarray(quantiles, np.int64))
        if cfg.n_examples_test > 0:
            picks, quantiles = _quantile_picks(count, cfg.n_quantiles, cfg.n_examples_test, cfg.sampler_seed)
            test_rank.append(start + np.asarray(picks, np.int64))
            test_q.append(np.asarray(quantiles, np.int64))
    examples = example_set(top, top_quantiles)
    # delphi's record.max_activation: the first (top) example's maximum
    max_activation = rows(order[first])[1].max(axis=1, initial=0.0)
    non_activating = _non_activating(pairs, latents, windows_tokens, cfg)
    return LatentExamples(latents, max_activation, n_all, n_all / n_windows, examples,
                          example_set(train_rank, train_q), example_set(test_rank, test_q), non_activating)


def _centred(pairs: _Pairs, keep: np.ndarray, chosen: np.ndarray, windows_tokens: np.ndarray,
             window_len: int) -> tuple[np.ndarray, np.ndarray]:
    """delphi's ``pool_centered_activation_windows`` rows for chosen (kept) pairs: the window and its two
    neighbours joined, cut to ``window_len`` so the maximum sits at ``window_len - window_len // 4``; a
    neighbour's activations count only where that neighbour is itself a kept window of the latent. (delphi
    0.1.3 means this but misindexes the neighbours' rows, ``temp_tensor[prev_locations]``; the tokens and the
    current window's activations agree with it.)"""
    n_windows = windows_tokens.shape[0]
    key = pairs.latent * n_windows + pairs.window  # ascending: pairs are in (latent, window) order
    joined_tokens = np.concatenate([windows_tokens[pairs.window[chosen] + shift] for shift in (-1, 0, 1)], axis=1)
    joined = np.zeros((len(chosen), 3 * window_len), np.float32)
    current = _dense(pairs, chosen, window_len)
    joined[:, window_len:2 * window_len] = current
    for side, shift in ((0, -1), (2, 1)):
        wanted = key[chosen] + shift
        at = np.minimum(np.searchsorted(key, wanted), len(key) - 1)
        present = (key[at] == wanted) & keep[at]
        if present.any():
            joined[present, side * window_len:(side + 1) * window_len] = _dense(pairs, at[present], window_len)
    left = np.argmax(current, axis=1) + window_len // 4  # delphi: argmax + ctx_len - (ctx_len - ctx_len // 4)
    gather = left[:, None] + np.arange(window_len)[None, :]
    return np.take_along_axis(joined_tokens, gather, 1), np.take_along_axis(joined, gather, 1)


def _non_activating(pairs: _Pairs, latents: np.ndarray, windows_tokens: np.ndarray,
                    cfg: ExampleConfig) -> ExampleSet:
    """delphi's random non-activating windows: ``n_non_activating`` drawn with replacement from the windows a
    latent never fires in (every window of it, edges included), none where there are fewer of those."""
    n_windows, n = windows_tokens.shape[0], cfg.n_non_activating
    lat_of_pair = np.searchsorted(pairs.latent, latents)
    ends = np.searchsorted(pairs.latent, latents, side="right")
    picked, owners = [], []
    for latent, start, end in zip(latents.tolist(), lat_of_pair.tolist(), ends.tolist()):
        n_free = n_windows - (end - start)
        if n == 0 or n_free < n:
            continue
        draws = np.random.default_rng((cfg.seed, latent)).integers(0, n_free, size=n)
        picked.append(_kth_free(pairs.window[start:end], draws))
        owners.append(np.full(n, latent, np.int64))
    windows = np.concatenate([np.zeros(0, np.int64), *picked])
    tokens = windows_tokens[windows]
    return ExampleSet(np.concatenate([np.zeros(0, np.int64), *owners]), tokens,
                      np.zeros(tokens.shape, np.float32), np.full(len(windows), -1, np.int64))
