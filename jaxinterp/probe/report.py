"""Probe results for people: a text table per hook and the layer-sweep plot (PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["format_table", "plot_layer_sweep"]


def _layer(hook: str) -> int:
    parts = hook.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else -1


def format_table(records: Sequence[dict[str, Any]]) -> str:
    """A Markdown table: hook, family, k, chosen C, validation selection metric, test metrics."""
    test_names = list(records[0]["test"]) if records else []
    header = ["hook", "family", "k", "C", "selected by", *(f"test {m}" for m in test_names)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        selected = f"{r['select_by']} {r['validation'][r['select_by']]:.3f}"
        cells = [r["hook"], r["family"], "" if r["k"] is None else str(r["k"]), f"{r['C']:.3g}", selected,
                 *(f"{r['test'][m]:.3f}" for m in test_names)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_layer_sweep(records: Sequence[dict[str, Any]], metric: str, path: Path) -> Path:
    """Test ``metric`` against layer, one line per family (and k); hooks without a layer sit at -1."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    lines: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        label = r["family"] if r["k"] is None else f"{r['family']} k={r['k']}"
        lines.setdefault(label, []).append((_layer(r["hook"]), r["test"][metric]))
    figure, axes = plt.subplots(figsize=(7, 4))
    for label, points in sorted(lines.items()):
        points.sort()
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    axes.set_xlabel("layer")
    axes.set_ylabel(f"test {metric}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
