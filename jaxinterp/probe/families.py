"""Probe families over features in memory: logistic (L2 / L1 / elastic net), k-sparse, MLP, ridge.

:func:`fit_probes` runs each family's whole sweep (hooks × C, and × k for k-sparse) — one batched
program for L2 logistic and k-sparse, one program per hook for the others — and keeps, per
(hook, family, k), the C with the best validation score. Tests and the benchmark
call it on fixed features; :func:`jaxinterp.probe.run_probe` calls it on pooled activations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxinterp.config import ConfigError
from jaxinterp.probe.data import Splits
from jaxinterp.probe.latents import SparseRows, dense_columns, mean_difference
from jaxinterp.probe.solvers import Linear
from jaxinterp.probe.sweep import (place_rows, select, split_weights, standardize, sweep_linear, sweep_mlp,
                                   unstandardize, unstandardize_mlp)

__all__ = ["FAMILIES", "FittedProbe", "fit_probes", "parse_grid"]

FAMILIES = ("logistic", "ksparse", "mlp", "ridge")
_SELECT_DEFAULT = {"binary": "auroc", "multiclass": "accuracy", "regression": "r2"}


class FittedProbe(NamedTuple):
    """One selected probe: its results record and its tensors on raw features."""

    record: dict[str, Any]
    tensors: dict[str, np.ndarray]


def parse_grid(text: str, field: str, cast=float) -> list:
    """``"1e-3,1e-2,0.1"`` → ``[0.001, 0.01, 0.1]`` (errors name the config field)."""
    try:
        values = [cast(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"config field '{field}': expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise ConfigError(f"config field '{field}': needs one or more positive values, got {text!r}")
    return values


def _rank_columns(features: np.ndarray | SparseRows, targets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Mean-difference ranking (SAEBench's k-sparse probing) over dense or sparse features."""
    if isinstance(features, SparseRows):
        return mean_difference(features, targets, rows)
    classes = np.unique(targets[rows])
    score = np.zeros(features.shape[1])
    for c in classes[1:] if len(classes) == 2 else classes:
        member = targets[rows] == c
        diff = features[rows][member].mean(0) - features[rows][~member].mean(0)
        score = np.maximum(score, np.abs(diff))
    return score


def _record(hook, family, k, C, select_by, fit_metrics, index) -> dict[str, Any]:
    pick = lambda split: {m: float(v[index]) for m, v in fit_metrics[split].items()}  # noqa: E731
    return {"hook": hook, "family": family, "k": k, "C": float(C), "select_by": select_by,
            "train": pick("train"), "validation": pick("validation"), "test": pick("test")}


def fit_probes(features: Mapping[str, np.ndarray | SparseRows], targets: np.ndarray, kind: str, splits: Splits,
               cfg: Mapping[str, Any], mesh=None) -> list[FittedProbe]:
    """Fits every family in ``cfg.families`` for every hook and keeps the best C per (hook, family, k).

    Args:
      features: ``{hook: [rows, d]}`` dense features, or :class:`SparseRows` SAE latents (k-sparse only).
      targets: ``[rows]`` class ids or float targets (training rows may carry regime noise).
      kind: ``binary``, ``multiclass`` or ``regression``.
      splits: train/validation/test rows.
      cfg: a probe config (``families``, ``C``, ``k``, ``penalty``, ``l1_ratio``, ``max_iter``, ``tol``,
        ``standardize``, ``select_by``, ``mlp.*``, ``seed``).
      mesh: a mesh whose 'data' axis splits the rows (``None``: one device).

    Returns:
      One :class:`FittedProbe` per hook × family (× k for k-sparse), with tensors on raw features.
    """
    families = [f.strip() for f in cfg["families"].split(",") if f.strip()]
    for family in families:
        if family not in FAMILIES:
            raise ConfigError(f"config field 'families': unknown family {family!r}; choose from {', '.join(FAMILIES)}")
        if (family == "ridge") != (kind == "regression"):
            raise ConfigError(f"config field 'families': {family} does not fit a {kind} target "
                              "(ridge is for float targets, the others for classes)")
    if any(isinstance(f, SparseRows) for f in features.values()) and families != ["ksparse"]:
        raise ConfigError("config field 'families': SAE-latent features are probed with 'ksparse' only")
    select_by = _SELECT_DEFAULT[kind] if cfg["select_by"] == "auto" else cfg["select_by"]
    if (select_by == "r2") != (kind == "regression"):
        raise ConfigError(f"config field 'select_by': {select_by} does not apply to a {kind} target")
    C = np.asarray(parse_grid(cfg["C"], "C"), np.float32)
    hooks = list(features)
    n_rows = len(targets)
    weights = split_weights(n_rows, splits)
    n_classes = 0 if kind == "regression" else int(targets.max()) + 1
    y = targets.astype(np.float32 if kind == "regression" else np.int32)
    fitted: list[FittedProbe] = []

    def standardized(x):
        if cfg["standardize"]:
            return standardize(x, weights["train"])
        return x, np.zeros(x.shape[::2], np.float32), np.ones(x.shape[::2], np.float32)

    dense_families = [f for f in families if f != "ksparse"]
    if dense_families:
        x, mean, std = standardized(np.stack([features[h] for h in hooks]))
        xd, yd, wd = place_rows(x, y, weights, mesh)
        for family in dense_families:
            if family == "mlp":
                fit = sweep_mlp(xd, yd, wd, C, n_classes, cfg["mlp"]["hidden"], cfg["mlp"]["steps"],
                                cfg["mlp"]["learning_rate"], cfg["seed"])
                best = select(fit.metrics["validation"][select_by])
                for h, hook in enumerate(hooks):
                    probe = unstandardize_mlp(jax.tree.map(lambda a: a[h, best[h]], fit.probes), mean[h], std[h])
                    fitted.append(FittedProbe(_record(hook, family, None, C[best[h]], select_by, fit.metrics,
                                                      (h, best[h])), probe._asdict()))
                continue
            solver = "ridge" if family == "ridge" else ("l2" if cfg["penalty"] == "l2" else "elastic")
            l1_ratio = 1.0 if cfg["penalty"] == "l1" else float(cfg["l1_ratio"])
            fit = sweep_linear(xd, yd, wd, C, n_classes, solver, l1_ratio=l1_ratio, max_iter=cfg["max_iter"],
                               tol=cfg["tol"])
            best = select(fit.metrics["validation"][select_by])[:, 0]
            for h, hook in enumerate(hooks):
                probe = unstandardize(jax.tree.map(lambda a: a[h, 0, best[h]], fit.probes), mean[h], std[h])
                record = _record(hook, family, None, C[best[h]], select_by, fit.metrics, (h, 0, best[h]))
                record["penalty"] = "l2" if family == "ridge" else cfg["penalty"]
                record["nonzero_weights"] = int(np.count_nonzero(probe.W))
                if fit.n_iter is not None:
                    record["n_iter"] = int(fit.n_iter[h, 0, best[h]])
                fitted.append(FittedProbe(record, {"W": probe.W, "b": probe.b}))
    if "ksparse" in families:
        fitted += _fit_ksparse(features, y, kind, n_classes, splits, weights, C, select_by, cfg, mesh, standardized)
    return fitted


def _fit_ksparse(features, y, kind, n_classes, splits, weights, C, select_by, cfg, mesh, standardized):
    ks = sorted(set(parse_grid(cfg["k"], "k", int)))
    hooks = list(features)
    d = min(f.n_cols if isinstance(f, SparseRows) else f.shape[1] for f in features.values())
    ks = [k for k in ks if k <= d]
    k_max = ks[-1]
    ranked, selected = [], []
    for hook in hooks:
        order = np.argsort(-_rank_columns(features[hook], y, splits.train), kind="stable")[:k_max]
        ranked.append(order)
        f = features[hook]
        selected.append(dense_columns(f, order) if isinstance(f, SparseRows) else f[:, order])
    x, mean, std = standardized(np.stack(selected))
    masks = (np.arange(k_max)[None, :] < np.asarray(ks)[:, None]).astype(np.float32)
    xd, yd, wd = place_rows(x, y, weights, mesh)
    fit = sweep_linear(xd, yd, wd, C, n_classes, "l2", column_masks=masks, max_iter=cfg["max_iter"], tol=cfg["tol"])
    best = select(fit.metrics["validation"][select_by])
    out = []
    for h, hook in enumerate(hooks):
        for g, k in enumerate(ks):
            probe = jax.tree.map(lambda a: a[h, g, best[h, g]], fit.probes)
            probe = unstandardize(Linear(np.asarray(probe.W)[:k], probe.b), mean[h, :k], std[h, :k])
            record = _record(hook, "ksparse", k, C[best[h, g]], select_by, fit.metrics, (h, g, best[h, g]))
            record["latent_ids"] = ranked[h][:k].tolist()
            out.append(FittedProbe(record, {"W": probe.W, "b": probe.b}))
    return out
