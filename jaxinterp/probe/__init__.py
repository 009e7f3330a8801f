"""Probes on activations and SAE latents: data, pooled features, solvers, sweeps, metrics, runs."""

from jaxinterp.probe.data import LabelledTexts, Splits, apply_regime, encode_targets, load_labelled, split_rows
from jaxinterp.probe.families import FAMILIES, FittedProbe, fit_probes, parse_grid
from jaxinterp.probe.features import POOLINGS, Pooled, pool_activations, tokenize_texts
from jaxinterp.probe.latents import SparseRows, dense_columns, encode_sparse, mean_difference, pool_sparse
from jaxinterp.probe.metrics import accuracy, auroc, classification_metrics, f1, r2, regression_metrics
from jaxinterp.probe.run import ProbeData, probe_features, run_probe
from jaxinterp.probe.solvers import (Linear, Mlp, fit_logistic_elastic, fit_mlp, fit_ridge, lbfgs_logistic_l2, logits,
                                     mlp_logits)
from jaxinterp.probe.sweep import SweepFit, place_rows, select, split_weights, standardize, sweep_linear, sweep_mlp

__all__ = [
    "FAMILIES", "POOLINGS", "FittedProbe", "LabelledTexts", "Linear", "Mlp", "Pooled", "ProbeData", "SparseRows",
    "Splits", "SweepFit",
    "accuracy", "apply_regime", "auroc", "classification_metrics", "dense_columns", "encode_sparse",
    "encode_targets", "f1", "fit_logistic_elastic", "fit_mlp", "fit_probes", "fit_ridge",
    "lbfgs_logistic_l2", "load_labelled", "logits", "mean_difference", "mlp_logits", "parse_grid", "place_rows",
    "pool_activations",
    "pool_sparse", "probe_features", "r2", "regression_metrics", "run_probe", "select", "split_rows",
    "split_weights", "standardize", "sweep_linear", "sweep_mlp", "tokenize_texts",
]
