"""Evaluation plots: the feature-density histogram (how often each latent fires on held-out tokens) and
the ZF plot (each token's code norm against its AFA, Lee et al. 2025)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxinterp.eval.metrics import approximate_feature_activation, code_norm

__all__ = ["plot_feature_density", "plot_zf"]


def plot_feature_density(fire_count: np.ndarray, n_tokens: int, path: Path, title: str) -> Path:
    """Histogram of log10 firing frequency over the latents that fired; dead ones are counted in the title."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    alive = fire_count > 0
    frequency = np.log10(fire_count[alive] / max(n_tokens, 1))
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.hist(frequency, bins=60, color="tab:blue")
    axes.axvline(-1, color="tab:red", linestyle="--", linewidth=1, label="dense (10%)")
    axes.set_xlabel("log10 firing frequency")
    axes.set_ylabel("latents")
    axes.set_title(f"{title}\n{int((~alive).sum())} of {len(fire_count)} latents never fired on {n_tokens:,} tokens",
                   fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_zf(x: np.ndarray, latents: np.ndarray, path: Path, title: str, b_dec: np.ndarray | None = None,
            decoder_norms: np.ndarray | None = None, max_tokens: int = 4096, seed: int = 0) -> Path:
    """ZF plot (Lee et al. 2025): ``‖f‖`` against AFA ``‖x − b_dec‖`` for a sample of tokens, any architecture.

    ``x`` [tokens, d_in] and dense ``latents`` [tokens, d_sae] are the same tokens; ``decoder_norms``
    [d_sae] rescales the code to unit-norm decoder rows (for SAEs whose decoder norms are free). Points
    above the diagonal are over-activated, below under-activated; the title gives the median ratio.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    x, latents = np.asarray(x, np.float32), np.asarray(latents, np.float32)
    if x.shape[0] != latents.shape[0]:
        raise ValueError(f"plot_zf: x has {x.shape[0]} tokens, latents {latents.shape[0]}")
    if x.shape[0] > max_tokens:
        rows = np.sort(np.random.default_rng(seed).choice(x.shape[0], max_tokens, replace=False))
        x, latents = x[rows], latents[rows]
    afa = np.asarray(approximate_feature_activation(x, None if b_dec is None else np.asarray(b_dec, np.float32)))
    norms = np.asarray(code_norm(latents, None if decoder_norms is None else np.asarray(decoder_norms, np.float32)))
    ratio = np.median(norms / np.maximum(afa, 1e-12))
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.scatter(afa, norms, s=3, alpha=0.4, color="tab:blue", linewidths=0)
    top = float(max(afa.max(initial=0.0), norms.max(initial=0.0))) or 1.0
    axes.plot([0, top], [0, top], color="tab:red", linestyle="--", linewidth=1, label="‖f‖ = AFA")
    axes.set_xlabel("AFA  ‖x − b_dec‖")
    axes.set_ylabel("‖f‖")
    axes.set_title(f"{title}\n{len(afa):,} tokens; median ‖f‖ / AFA = {ratio:.3f}", fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
