"""Logistic-probe sweep, hooks × C: jaxinterp's one vmapped program vs the same sweep with scikit-learn.

    python bench/probe_sweep.py [--examples 2000 --hooks all --n-C 10] [--n-hooks 4 --skip-sklearn]

Features are real SmolLM2-135M activations (last token, every ``blocks.L.hook_resid_post``: 30
hooks, d = 576) of the built-in ``open_bracket`` task, pooled once and shared by both sides.
Both fit L2 logistic regression at the same C grid on the same standardised training rows, pick C
by validation AUROC per hook, and report test accuracy. scikit-learn runs as researchers run it:
one ``LogisticRegression(C=C, max_iter=1000)`` fit per (hook, C), lbfgs, its default tolerance.
jaxinterp's time includes compiling its program. Goal (issue 7): ≥ 10× faster at equal accuracy
(within 0.5 point). Results also go to bench/results/probe_sweep.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def features(args):
    """Pooled features (cached in bench/results by size, so reruns time only the sweeps)."""
    from jaxinterp import schemas
    from jaxinterp.config import load_config
    from jaxinterp.probe import ProbeData, Splits, probe_features

    cfg = load_config("configs/probe.py", {"n_examples": args.examples, "hooks": args.hooks}, schemas.PROBE, "probe")
    cache = RESULTS / f"probe_features_{args.examples}_{args.hooks.replace(',', '+')}.npz"
    if cache.exists():
        saved = np.load(cache, allow_pickle=False)
        hooks = [str(h) for h in saved["hooks"]]
        return cfg, ProbeData({h: saved[f"x{i}"] for i, h in enumerate(hooks)}, saved["targets"], "binary", ["0", "1"],
                              Splits(saved["train"], saved["validation"], saved["test"]), [], "cached")
    data = probe_features(cfg, progress=False)
    RESULTS.mkdir(exist_ok=True)
    np.savez(cache, hooks=np.asarray(list(data.features)), targets=data.targets, train=data.splits.train,
             validation=data.splits.validation, test=data.splits.test,
             **{f"x{i}": x for i, x in enumerate(data.features.values())})
    return cfg, data


def sweep_sklearn(x: dict[str, np.ndarray], y, splits, grid) -> tuple[float, list[float]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    began = time.perf_counter()
    accuracies = []
    for hook, feats in x.items():
        mean, std = feats[splits.train].mean(0), feats[splits.train].std(0) + 1e-12
        z = (feats - mean) / std
        best = (-1.0, None)
        for C in grid:
            model = LogisticRegression(C=C, max_iter=1000).fit(z[splits.train], y[splits.train])
            auroc = roc_auc_score(y[splits.validation], model.decision_function(z[splits.validation]))
            best = max(best, (auroc, model), key=lambda t: t[0])
        accuracies.append(best[1].score(z[splits.test], y[splits.test]))
    return time.perf_counter() - began, accuracies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--hooks", default="all")
    parser.add_argument("--n-C", type=int, default=10)
    parser.add_argument("--n-hooks", type=int, default=0, help="use this many evenly spaced hooks of --hooks; 0 = all")
    parser.add_argument("--skip-sklearn", action="store_true", help="time jaxinterp only (scaling curves)")
    parser.add_argument("--json", default=str(RESULTS / "probe_sweep.json"))
    args = parser.parse_args()
    from jaxinterp.probe import fit_probes

    began = time.perf_counter()
    cfg, data = features(args)
    if args.n_hooks:
        names = list(data.features)
        keep = [names[i] for i in np.unique(np.linspace(0, len(names) - 1, args.n_hooks).round().astype(int))]
        data = data._replace(features={h: data.features[h] for h in keep})
    features_s = time.perf_counter() - began
    grid = np.logspace(-4, 3, args.n_C).tolist()
    cfg = dict(cfg, C=",".join(f"{c:.6g}" for c in grid))
    began = time.perf_counter()
    fitted = fit_probes(data.features, data.targets, data.kind, data.splits, cfg)
    ours_s = time.perf_counter() - began
    began = time.perf_counter()
    fit_probes(data.features, data.targets, data.kind, data.splits, cfg)
    ours_warm_s = time.perf_counter() - began
    ours_acc = [f.record["test"]["accuracy"] for f in fitted]
    try:
        if args.skip_sklearn:
            raise ImportError
        sk_s, sk_acc = sweep_sklearn(data.features, data.targets, data.splits, grid)
    except ImportError:
        if not args.skip_sklearn:
            print("scikit-learn is missing: pip install -e '.[bench]'")
        sk_s, sk_acc = float("nan"), [float("nan")] * len(ours_acc)
    n_hooks, d = len(data.features), next(iter(data.features.values())).shape[1]
    rows = len(data.targets)
    print(f"\nprobe sweep: {n_hooks} hooks x {len(grid)} C, {rows} rows (train {len(data.splits.train)}), d={d}; "
          f"features pooled (or read from the cache) in {features_s:.1f} s")
    print(f"{'':<26}{'seconds':>10}{'vs sklearn':>12}{'mean test acc':>15}{'best-layer acc':>16}")
    rows_out = (("jaxinterp (incl. compile)", ours_s, ours_acc), ("jaxinterp (compiled)", ours_warm_s, ours_acc),
                ("scikit-learn", sk_s, sk_acc))
    for name, seconds, acc in rows_out:
        print(f"{name:<26}{seconds:>10.2f}{sk_s / seconds:>11.1f}x{np.mean(acc):>15.4f}{np.max(acc):>16.4f}")
    gap = float(np.max(np.abs(np.asarray(ours_acc) - np.asarray(sk_acc))))
    print(f"largest per-hook test-accuracy gap: {100 * gap:.2f} points")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        "hooks": n_hooks, "C": grid, "rows": rows, "d": d, "features_s": features_s, "jaxinterp_s": ours_s,
        "jaxinterp_compiled_s": ours_warm_s, "sklearn_s": sk_s, "speedup": sk_s / ours_s,
        "jaxinterp_test_accuracy": ours_acc, "sklearn_test_accuracy": sk_acc, "max_gap": gap}, indent=2))


if __name__ == "__main__":
    main()
