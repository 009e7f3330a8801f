"""The feature-density histogram: how often each latent fires on held-out tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_feature_density"]


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
