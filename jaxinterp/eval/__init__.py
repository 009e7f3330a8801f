"""Evaluation: metric definitions and holdout evaluation of trained SAEs."""

from jaxinterp.eval.metrics import (
    dead_fraction,
    dense_fraction,
    explained_variance,
    fraction_variance_unexplained,
    l0,
    log10_firing_frequency,
)

__all__ = [
    "dead_fraction",
    "dense_fraction",
    "explained_variance",
    "fraction_variance_unexplained",
    "l0",
    "evaluate_run",
    "log10_firing_frequency",
]


def evaluate_run(cfg):
    """See :func:`jaxinterp.eval.run.evaluate_run` (imported lazily: it pulls in the trainer)."""
    from jaxinterp.eval.run import evaluate_run as run

    return run(cfg)
