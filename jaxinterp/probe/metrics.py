"""Probe metrics as pure jnp functions of (scores, targets, row weights), so they vmap over a sweep.

Rows with weight 0 do not count. ``scores`` is ``[n, 1]`` (binary logit or regression output)
or ``[n, K]`` (multiclass logits). AUROC is the Mann–Whitney statistic with tied scores counted
half, one-vs-rest macro-averaged for multiclass (sklearn's ``roc_auc_score(multi_class='ovr')``);
F1 is the positive class's for binary and macro-averaged for multiclass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["predictions", "accuracy", "auroc", "f1", "r2", "classification_metrics", "regression_metrics"]


def predictions(scores: jax.Array) -> jax.Array:
    """Predicted class ids: logit > 0 for one column, argmax otherwise."""
    return (scores[:, 0] > 0).astype(jnp.int32) if scores.shape[-1] == 1 else jnp.argmax(scores, -1)


def accuracy(scores: jax.Array, y: jax.Array, weight: jax.Array) -> jax.Array:
    """Weighted fraction of rows whose predicted class is ``y``."""
    return jnp.sum(weight * (predictions(scores) == y)) / jnp.sum(weight)


def _binary_auroc(score: jax.Array, positive: jax.Array, weight: jax.Array) -> jax.Array:
    """P(score_pos > score_neg) + ½·P(tie) over weighted rows, from average ranks."""
    # rows outside the split go to -inf so they sit below every counted row and never tie with one
    counted = weight > 0
    score = jnp.where(counted, score, -jnp.inf)
    ordered = jnp.sort(score)
    n_below = jnp.searchsorted(ordered, score, side="left") - jnp.sum(~counted)
    n_tied = jnp.searchsorted(ordered, score, side="right") - jnp.searchsorted(ordered, score, side="left")
    rank = n_below + (n_tied + 1) / 2  # 1-based average rank among counted rows
    pos = counted & positive
    n_pos = jnp.sum(pos)
    n_neg = jnp.sum(counted) - n_pos
    rank_sum = jnp.sum(jnp.where(pos, rank, 0.0))
    return (rank_sum - n_pos * (n_pos + 1) / 2) / jnp.maximum(n_pos * n_neg, 1)


def auroc(scores: jax.Array, y: jax.Array, weight: jax.Array) -> jax.Array:
    """Area under the ROC curve (one-vs-rest macro average over classes for multiclass).

    Row weights act as a 0/1 mask here (as a split selector), not as sample multiplicities.
    """
    if scores.shape[-1] == 1:
        return _binary_auroc(scores[:, 0], y == 1, weight)
    probabilities = jax.nn.softmax(scores, axis=-1)
    per_class = jax.vmap(lambda s, c: _binary_auroc(s, y == c, weight), in_axes=(1, 0))(
        probabilities, jnp.arange(scores.shape[-1]))
    return jnp.mean(per_class)


def f1(scores: jax.Array, y: jax.Array, weight: jax.Array) -> jax.Array:
    """F1 of the positive class (binary) or macro F1 over classes (multiclass)."""
    predicted = predictions(scores)
    classes = jnp.arange(1, 2) if scores.shape[-1] == 1 else jnp.arange(scores.shape[-1])

    def per_class(c):
        true_pos = jnp.sum(weight * ((predicted == c) & (y == c)))
        predicted_pos = jnp.sum(weight * (predicted == c))
        actual_pos = jnp.sum(weight * (y == c))
        return 2 * true_pos / jnp.maximum(predicted_pos + actual_pos, 1e-12)

    return jnp.mean(jax.vmap(per_class)(classes))


def r2(scores: jax.Array, y: jax.Array, weight: jax.Array) -> jax.Array:
    """Coefficient of determination of a regression output ``scores[:, 0]``."""
    total = jnp.sum(weight)
    mean = jnp.sum(weight * y) / total
    residual = jnp.sum(weight * (y - scores[:, 0]) ** 2)
    return 1.0 - residual / jnp.maximum(jnp.sum(weight * (y - mean) ** 2), 1e-12)


def classification_metrics(scores: jax.Array, y: jax.Array, weight: jax.Array) -> dict[str, jax.Array]:
    """``{accuracy, auroc, f1}`` of one split."""
    return {"accuracy": accuracy(scores, y, weight), "auroc": auroc(scores, y, weight), "f1": f1(scores, y, weight)}


def regression_metrics(scores: jax.Array, y: jax.Array, weight: jax.Array) -> dict[str, jax.Array]:
    """``{r2, mse}`` of one split."""
    mse = jnp.sum(weight * (y - scores[:, 0]) ** 2) / jnp.sum(weight)
    return {"r2": r2(scores, y, weight), "mse": mse}
