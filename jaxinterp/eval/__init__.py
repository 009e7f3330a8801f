"""Evaluation: metric definitions and holdout evaluation of trained SAEs.

The package exports only the metrics, which the trainer uses; the evaluation command,
:func:`jaxinterp.eval.run.evaluate_run`, loads trained runs and source models, so it is imported
from its module (importing it here would make the trainer depend on itself).
"""

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
    "log10_firing_frequency",
]

