"""Crosscoder evaluation: per-source reconstruction over held-out rows, and the relative decoder norm of
model diffing (Lindsey et al. 2024, "Sparse Crosscoders for Cross-Layer Features and Model Diffing", §Model
Diffing; Minder et al. 2025, "Overcoming Sparsity Artifacts in Crosscoders to Interpret Chat-Tuning").

Latent i's relative norm between sources a and b is ``r_i = ‖W_dec,i,b‖ / (‖W_dec,i,a‖ + ‖W_dec,i,b‖)``: 0 when
it writes only to a, 1 only to b, ½ equally. Its histogram is the papers' figure; latents with ``r < 0.1`` count
as exclusive to a, ``r > 0.9`` to b, the rest as shared (the cut-offs of Lindsey et al.'s histogram reading).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.eval.metrics import dead_fraction
from jaxinterp.sae import Architecture, latent_fires

__all__ = ["EXCLUSIVE_BELOW", "EXCLUSIVE_ABOVE", "crosscoder_holdout", "evaluate_crosscoder_run", "norm_sharing",
           "plot_relative_norms", "relative_decoder_norms", "source_pairs"]

# r below / above these: the latent writes (almost) only to source a / b.
EXCLUSIVE_BELOW, EXCLUSIVE_ABOVE = 0.1, 0.9


def relative_decoder_norms(W_dec: np.ndarray | jax.Array, a: int = 0, b: int = 1) -> np.ndarray:
    """``[n]``: ``‖W_dec,i,b‖ / (‖W_dec,i,a‖ + ‖W_dec,i,b‖)`` of a decoder ``W_dec [n, S, d]`` (NaN for a
    latent with no decoder norm into either source)."""
    norms = np.linalg.norm(np.asarray(W_dec, np.float64), axis=-1)
    denominator = norms[:, a] + norms[:, b]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, norms[:, b] / denominator, np.nan)


def norm_sharing(relative: np.ndarray, below: float = EXCLUSIVE_BELOW, above: float = EXCLUSIVE_ABOVE
                 ) -> dict[str, int]:
    """Counts of latents exclusive to source a (``r < below``), to source b (``r > above``), shared (the
    rest with a norm), and without any decoder norm (NaN)."""
    finite = np.isfinite(relative)
    exclusive_a, exclusive_b = int(np.sum(relative[finite] < below)), int(np.sum(relative[finite] > above))
    return {"exclusive_a": exclusive_a, "exclusive_b": exclusive_b,
            "shared": int(finite.sum()) - exclusive_a - exclusive_b, "no_norm": int((~finite).sum())}


def plot_relative_norms(relative: np.ndarray, path: Path, title: str, source_names: Sequence[str] = ("a", "b")
                        ) -> Path:
    """The relative-norm histogram as a PNG (matplotlib), the exclusivity cut-offs marked."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    counts = norm_sharing(relative)
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.hist(relative[np.isfinite(relative)], bins=50, range=(0.0, 1.0), color="tab:blue")
    for cut in (EXCLUSIVE_BELOW, EXCLUSIVE_ABOVE):
        axes.axvline(cut, color="tab:red", linestyle="--", linewidth=1)
    axes.set_xlabel(f"relative decoder norm  ‖W_dec,{source_names[1]}‖ / (‖W_dec,{source_names[0]}‖ + "
                    f"‖W_dec,{source_names[1]}‖)")
    axes.set_ylabel("latents")
    axes.set_title(f"{title}\n{counts['exclusive_a']} only {source_names[0]}, {counts['shared']} shared, "
                   f"{counts['exclusive_b']} only {source_names[1]} of {len(relative)} latents", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


@partial(jax.jit, static_argnums=0)
def _batch_sums(architecture: Architecture, params, arch_state, x, mean):
    latents = architecture.encode(params, arch_state, x)
    x_hat = architecture.decode(params, latents)
    return (jnp.sum(jnp.square(x - x_hat), axis=(0, 2)), jnp.sum(jnp.square(x - mean), axis=(0, 2)),
            latent_fires(latents, latents.shape[-1]))


def crosscoder_holdout(architecture: Architecture, params, arch_state, x: np.ndarray, tokens_since_fired: np.ndarray,
                       dead_tokens: int, batch_size: int = 4096) -> tuple[dict[str, object], np.ndarray]:
    """Per-source FVU (about the holdout mean of each source) over ``x [tokens, S, d]``, mean L0, the run's dead
    fraction, and each latent's firing count on ``x``: ``({fvu_per_source, fvu, l0, dead_fraction,
    never_fired_fraction, tokens}, fire_count)``."""
    if len(x) == 0:
        raise ValueError("no holdout activations to evaluate")
    mean = jnp.asarray(x.mean(axis=0, dtype=np.float64), jnp.float32)
    residual, total, fires = np.zeros(x.shape[1]), np.zeros(x.shape[1]), None
    for first in range(0, len(x), batch_size):
        r, t, f = _batch_sums(architecture, params, arch_state, jnp.asarray(x[first: first + batch_size]), mean)
        residual, total = residual + np.asarray(r, np.float64), total + np.asarray(t, np.float64)
        fires = np.asarray(f, np.float64) if fires is None else fires + np.asarray(f, np.float64)
    metrics = {"fvu_per_source": (residual / total).tolist(), "fvu": float(residual.sum() / total.sum()),
               "l0": float(fires.sum() / len(x)),
               "dead_fraction": float(dead_fraction(jnp.asarray(tokens_since_fired), dead_tokens)),
               "never_fired_fraction": float(np.mean(fires == 0)), "tokens": int(len(x))}
    return metrics, fires


def source_pairs(n_sources: int) -> list[tuple[int, int]]:
    """The source pairs the relative norm is reported for: the two of a model-diffing crosscoder, else each
    adjacent pair (layer s, layer s+1)."""
    return [(source, source + 1) for source in range(n_sources - 1)]


def evaluate_crosscoder_run(cfg, trained, progress: bool = False) -> dict[str, object]:
    """``jaxinterp eval`` of a crosscoder run (``trained``, a :class:`~jaxinterp.runs.TrainedSAE`): on its own
    store's held-out rows (or ``cfg.store`` from its start), :func:`crosscoder_holdout` plus, for each source
    pair (:func:`source_pairs`), :func:`norm_sharing` counts with the exclusive latents' ids, the per-latent
    relative norms (``relative_norms_<a>_<b>.npy``, NaN for a latent with no decoder norm) and their histogram
    (``relative_norms_<a>_<b>.png``),
    and the feature-density plot. No spliced CE loss (a crosscoder's hooks have no one splice point yet).

    Raises:
      ConfigError: naming ``ce_contexts`` when it asks for spliced losses, or ``store`` when it lacks a source
        or is of another model (unless ``allow_other_model``).
    """
    from jaxinterp.atomic import atomic_directory, check_replaceable
    from jaxinterp.config import ConfigError
    from jaxinterp.eval.contexts import evaluation_rows
    from jaxinterp.eval.plots import plot_feature_density
    from jaxinterp.export.load import require_trained_on
    from jaxinterp.store import open_store
    from jaxinterp.store.paths import location
    from jaxinterp.train.members import member_rows

    if cfg["ce_contexts"]:
        raise ConfigError("config field 'ce_contexts': a crosscoder's spliced CE loss is not implemented yet; pass "
                          "--config.ce_contexts=0 (its holdout FVU, L0 and relative decoder norms are evaluated)")
    hooks, train_cfg = list(trained.config["hook_names"]), trained.run_config["train"]
    run = location(cfg["run"])
    out = location(cfg["out"] or str(run / "eval"), "out")
    pairs = source_pairs(len(hooks))
    files = ("eval.json", "feature_density.png", *(f"relative_norms_{a}_{b}.{ext}" for a, b in pairs
                                                    for ext in ("png", "npy")))
    check_replaceable(out, "eval", files)
    store = open_store(cfg["store"] or train_cfg["store"])
    own = not cfg["store"]
    source = trained.run_config.get("source") or {}
    require_trained_on(source.get("model_hash"), source.get("model_name"), store.manifest["model_hash"],
                       store.manifest["model_name"], "store", cfg["allow_other_model"], "crosscoder")
    missing = [hook for hook in hooks if hook not in store.hook_names]
    if missing:
        raise ConfigError(f"config field 'store': {store.url} holds {', '.join(store.hook_names)}, not the "
                          f"crosscoder's {', '.join(missing)}")
    _, held = evaluation_rows(store, hooks, cfg, train_cfg, own, train_cfg["exclude_bos"])
    x = member_rows(held, hooks)
    sae, W_dec = trained.state, np.asarray(trained.state.params["W_dec"])
    result, fire_count = crosscoder_holdout(trained.architecture, sae.params, sae.arch_state, x,
                                            np.asarray(sae.tokens_since_fired), train_cfg["dead_tokens"],
                                            cfg["batch_size"])
    relative = {(a, b): relative_decoder_norms(W_dec, a, b) for a, b in pairs}
    result.update(step=trained.step, sae=trained.name, architecture="crosscoder", store=store.url, hook_names=hooks,
                  fvu_by_hook=dict(zip(hooks, result["fvu_per_source"])),
                  relative_norms=[{"a": hooks[a], "b": hooks[b], **norm_sharing(r),
                                   # the latent ids of each side (per-latent values: relative_norms_<a>_<b>.npy)
                                   "latents_only_a": np.flatnonzero(r < EXCLUSIVE_BELOW).tolist(),
                                   "latents_only_b": np.flatnonzero(r > EXCLUSIVE_ABOVE).tolist()}
                                  for (a, b), r in relative.items()])
    title = f"{trained.name} (crosscoder), step {trained.step}"

    def write(directory: Path) -> None:
        import json

        (directory / "eval.json").write_text(json.dumps(result, indent=2))
        plot_feature_density(fire_count, len(x), directory / "feature_density.png", title)
        for (a, b), r in relative.items():
            plot_relative_norms(r, directory / f"relative_norms_{a}_{b}.png", title, (hooks[a], hooks[b]))
            np.save(directory / f"relative_norms_{a}_{b}.npy", r.astype(np.float32))

    written = atomic_directory(str(out), True, write, "eval", files)
    return {**result, "written_to": str(written)}
