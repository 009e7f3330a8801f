"""A whole probe sweep — every hook × column group × C — as one jitted, vmapped program.

Features arrive stacked as ``[hooks, rows, d]``; rows may be sharded over the mesh's 'data' axis
(every fit is a sum over rows, so XLA inserts the reductions). Splits are 0/1 row weights, so one
feature matrix serves training, validation and test. Column groups mask feature columns: the
k-sparse family fits every k at once as masks over the ``k_max`` ranked columns.

Example::

    fit = sweep_linear(x, y, weights, C=jnp.logspace(-3, 3, 7), n_classes=2)
    best = select(fit.metrics["validation"]["auroc"])   # [hooks, groups] index into C
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxinterp.probe.metrics import classification_metrics, regression_metrics
from jaxinterp.probe.solvers import (Linear, Mlp, fit_logistic_elastic, fit_mlp, fit_ridge, lbfgs_logistic_l2,
                                     mlp_logits, principal_axes)

__all__ = ["SPLITS", "SweepFit", "split_weights", "standardize", "place_rows", "sweep_linear", "sweep_mlp", "select",
           "unstandardize", "unstandardize_mlp"]

SPLITS = ("train", "validation", "test")


class SweepFit(NamedTuple):
    """Fitted probes and their metrics.

    Attributes:
      probes: a :class:`Linear` with leaves ``[hooks, groups, C, ...]`` or an :class:`Mlp` with
        leaves ``[hooks, C, ...]``.
      metrics: ``{split: {metric: [hooks, groups, C] or [hooks, C]}}`` as numpy arrays.
      n_iter: L-BFGS iterations per problem (L2 logistic only), like sklearn's ``n_iter_``.
    """

    probes: Any
    metrics: dict[str, dict[str, np.ndarray]]
    n_iter: np.ndarray | None = None


def split_weights(n_rows: int, splits) -> dict[str, np.ndarray]:
    """0/1 row weights ``{train, validation, test}`` from a :class:`~jaxinterp.probe.data.Splits`."""
    out = {}
    for name, rows in zip(SPLITS, splits):
        weight = np.zeros(n_rows, np.float32)
        weight[rows] = 1.0
        out[name] = weight
    return out


def standardize(x: np.ndarray, train_weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-hook, per-column z-scores with mean/std from the training rows; ``x`` is ``[hooks, rows, d]``.

    Returns (standardised x, mean ``[hooks, d]``, std ``[hooks, d]``); constant columns keep std 1.
    """
    # jitted: numpy's single-threaded passes over a 30-hook sweep's features took longer than its fits
    return tuple(np.asarray(a) for a in _standardize(jnp.asarray(x, jnp.float32), jnp.asarray(train_weight, jnp.float32)))


@jax.jit
def _standardize(x: jax.Array, train_weight: jax.Array):
    total = jnp.sum(train_weight)
    mean = jnp.einsum("n,hnd->hd", train_weight, x) / total
    centred = x - mean[:, None]
    std = jnp.sqrt(jnp.einsum("n,hnd->hd", train_weight, centred**2) / total)  # two passes: no cancellation
    std = jnp.where(std > 1e-6 * jnp.maximum(jnp.max(std), 1e-30), std, 1.0)
    return centred / std[:, None], mean, std


def place_rows(x: np.ndarray, y: np.ndarray, weights: dict[str, np.ndarray], mesh: Mesh | None):
    """Device arrays with rows split over the mesh's 'data' axis (padded with weight-0 rows)."""
    if mesh is None or mesh.shape.get("data", 1) == 1:
        return jnp.asarray(x), jnp.asarray(y), {k: jnp.asarray(v) for k, v in weights.items()}
    pad = -x.shape[1] % mesh.shape["data"]
    x = np.pad(x, ((0, 0), (0, pad), (0, 0)))
    y = np.pad(y, (0, pad))
    weights = {k: np.pad(v, (0, pad)) for k, v in weights.items()}
    rows = NamedSharding(mesh, P("data"))
    return (jax.device_put(x, NamedSharding(mesh, P(None, "data", None))), jax.device_put(y, rows),
            {k: jax.device_put(v, rows) for k, v in weights.items()})


def _split_metrics(scores, y, weights, regression: bool):
    measure = regression_metrics if regression else classification_metrics
    return {split: measure(scores, y, weights[split]) for split in SPLITS}


def _metrics_over_problems(x, probes: Linear, y, weights, regression: bool):
    """Metrics of every probe ``[hooks, groups, C]`` on every split."""
    scores = jnp.einsum("hnd,hgcdo->hgcno", x, probes.W) + probes.b[..., None, :]
    measure = partial(_split_metrics, y=y, weights=weights, regression=regression)
    return jax.vmap(jax.vmap(jax.vmap(measure)))(scores)


@partial(jax.jit, static_argnames=("n_classes", "max_iter", "tol"))
def _sweep_l2(x, y, weights, train_rows, train_weight, C, column_masks, axes, n_classes, max_iter, tol):
    # the solver reads only the training rows (padded with weight-0 rows): less to read per iteration
    probes, n_iter = lbfgs_logistic_l2(x[:, train_rows], y[train_rows], train_weight, C, n_classes, column_masks,
                                       max_iter, tol, axes=axes)
    return probes, _metrics_over_problems(x, probes, y, weights, regression=False), n_iter


def _training_rows(train_weight: jax.Array, multiple: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the weighted rows and their weights, padded to a multiple with weight-0 entries."""
    weight = np.asarray(train_weight)
    rows = np.flatnonzero(weight > 0)
    pad = -len(rows) % multiple
    return (np.concatenate([rows, np.zeros(pad, np.int64)]).astype(np.int32),
            np.concatenate([weight[rows], np.zeros(pad, weight.dtype)]))


@partial(jax.jit, static_argnames=("n_classes", "family", "l1_ratio", "max_iter"))
def _sweep_one_hook(x, y, weights, C, column_masks, n_classes, family, l1_ratio, max_iter):
    def one(mask, c):
        if family == "ridge":
            return fit_ridge(x * mask, y, weights["train"], c)
        return fit_logistic_elastic(x * mask, y, weights["train"], c, n_classes, l1_ratio, max_iter)

    probes = jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None))(column_masks, C)
    return jax.tree.map(lambda a: a[None], probes)


def sweep_linear(x: jax.Array, y: jax.Array, weights: dict[str, jax.Array], C: np.ndarray, n_classes: int,
                 family: str = "l2", column_masks: np.ndarray | None = None, l1_ratio: float = 1.0,
                 max_iter: int = 500, tol: float = 1e-6) -> SweepFit:
    """Fits linear probes for every hook × column group × C and measures them on every split.

    Args:
      x: ``[hooks, rows, d]`` standardised features (see :func:`standardize`, :func:`place_rows`).
      y: ``[rows]`` class ids (int) or regression targets (float).
      weights: ``{train, validation, test}`` 0/1 row weights.
      C: inverse regularisation strengths (ridge: α = 1/C).
      n_classes: 2 for binary, K for multiclass, 0 for regression.
      family: ``l2`` (batched L-BFGS over all hooks at once), ``elastic`` (FISTA; ``l1_ratio`` = 1 is
        L1) or ``ridge`` (closed form); the last two run one program per hook.
      column_masks: ``[groups, d]`` 0/1 masks of the columns each group may use (default: one
        group with every column).
    """
    masks = jnp.asarray(np.ones((1, x.shape[-1])) if column_masks is None else column_masks, jnp.float32)
    C = jnp.asarray(C, jnp.float32)
    if family == "l2":
        mesh = getattr(x.sharding, "mesh", None)
        multiple = mesh.shape.get("data", 1) if mesh is not None and not mesh.empty else 1
        rows, row_weight = _training_rows(weights["train"], multiple)
        # when every column is free the solver preconditions on the training rows' principal axes
        axes = principal_axes(x[:, rows], jnp.asarray(row_weight)) if column_masks is None else None
        probes, metrics, n_iter = _sweep_l2(x, y, weights, rows, row_weight, C, None if column_masks is None else masks,
                                            axes, n_classes, max_iter, tol)
        return SweepFit(probes, jax.tree.map(np.asarray, metrics), np.asarray(n_iter))
    else:  # one program per hook, compiled once: vmapping these over hooks too measured slower on CPU
        per_hook = [_sweep_one_hook(x[h], y, weights, C, masks, n_classes, family, l1_ratio, max_iter)
                    for h in range(x.shape[0])]
        probes = jax.tree.map(lambda *a: jnp.concatenate(a), *per_hook)
        metrics = jax.jit(_metrics_over_problems, static_argnums=4)(x, probes, y, weights, family == "ridge")
    return SweepFit(probes, jax.tree.map(np.asarray, metrics))


@partial(jax.jit, static_argnames=("n_classes", "hidden", "steps", "learning_rate"))
def _sweep_mlp_one_hook(key, x, y, weights, C, n_classes, hidden, steps, learning_rate):
    def one(c):
        probe = fit_mlp(key, x, y, weights["train"], c, n_classes, hidden, steps, learning_rate)
        return probe, _split_metrics(mlp_logits(probe, x), y, weights, regression=False)

    return jax.tree.map(lambda a: a[None], jax.vmap(one)(C))


def sweep_mlp(x: jax.Array, y: jax.Array, weights: dict[str, jax.Array], C: np.ndarray, n_classes: int,
              hidden: int = 256, steps: int = 500, learning_rate: float = 1e-3, seed: int = 0) -> SweepFit:
    """Fits one-hidden-layer MLP probes for every hook × C (weight decay ‖W‖²/(2C), full-batch Adam)."""
    key, C = jax.random.key(seed), jnp.asarray(C, jnp.float32)
    per_hook = [_sweep_mlp_one_hook(key, x[h], y, weights, C, n_classes, hidden, steps, learning_rate)
                for h in range(x.shape[0])]
    probes, metrics = jax.tree.map(lambda *a: np.concatenate(a), *per_hook)
    return SweepFit(probes, metrics)


def select(validation_metric: np.ndarray) -> np.ndarray:
    """Index of the best C along the last axis (the first, i.e. most regularised, of equal scores)."""
    return np.argmax(validation_metric, axis=-1)


def unstandardize(probe: Linear, mean: np.ndarray, std: np.ndarray) -> Linear:
    """A linear probe on standardised features rewritten to act on raw features: ``x @ W' + b'``."""
    W = np.asarray(probe.W) / std[:, None]
    return Linear(W, np.asarray(probe.b) - mean @ W)


def unstandardize_mlp(probe: Mlp, mean: np.ndarray, std: np.ndarray) -> Mlp:
    """An MLP probe on standardised features rewritten to act on raw features."""
    W_in = np.asarray(probe.W_in) / std[:, None]
    return Mlp(W_in, np.asarray(probe.b_in) - mean @ W_in, np.asarray(probe.W_out), np.asarray(probe.b_out))
