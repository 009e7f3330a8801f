"""Every benchmark at a size that finishes in about 25 minutes on 2 CPU cores, then scaling curves.

    python bench/run_all.py                  # prints every table; JSON in bench/results/
    python bench/run_all.py --skip-curves    # the tables only

Each script runs in its own process (one JAX runtime, one device count per script), in this order:
extract, buffer, sae_step (fp32, then bf16 compute), transcoder_step, sae_quality (SAE rows, then
the transcoder table, which extracts its own two-hook store once), probe_sweep; their tables stream
through unchanged. Then:
SAE step time vs n_latents (4k → 64k, batch 4096) and vs batch (1k → 16k, 16k latents), each
against the floor ``top_k(x @ W_enc)`` measured in the same process, and probe-sweep time vs
number of hooks (1 → 30). The curves go to ``bench/scaling.png`` and ``bench/results/scaling.json``.
Peers (sparsify, SAELens, scikit-learn) come from the bench extra; a missing one is reported by
the script that needs it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).parent
RESULTS = BENCH / "results"

# (script, arguments): sized for ~25 minutes in all on 2 CPU cores (~15 before the transcoder rows).
TABLES = [
    ("extract.py", ["--tokens", "4096"]),
    ("buffer.py", ["--tokens", "131072"]),
    ("sae_step.py", ["--steps", "3"]),
    ("sae_step.py", ["--steps", "3", "--compute-dtype", "bfloat16", "--json", str(RESULTS / "sae_step_bf16.json")]),
    ("transcoder_step.py", ["--steps", "3"]),
    ("sae_quality.py", ["--tokens", "131072", "--eval-tokens", "8192", "--ce-contexts", "16", "--sparsify", "signum",
                        "--transcoder-layer", "-1"]),
    ("sae_quality.py", ["--only-transcoder", "--tokens", "131072", "--eval-tokens", "8192", "--sparsify", "signum"]),
    ("probe_sweep.py", []),
]
N_LATENTS = (4096, 16384, 65536)
BATCHES = (1024, 4096, 16384)
N_HOOKS = (1, 4, 15, 30)


def run(script: str, args: list[str]) -> float:
    """Runs ``bench/<script> args`` with this interpreter; returns its wall time (fails loudly)."""
    began = time.perf_counter()
    print(f"\n$ python bench/{script} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(BENCH / script), *args], check=True)
    return time.perf_counter() - began


def scaling_curves() -> dict:
    """SAE step vs n_latents and vs batch, probe sweep vs hooks; JSON rows for the plot."""
    curves: dict[str, list[dict]] = {"n_latents": [], "batch": [], "probe_hooks": []}
    for axis, values in (("n_latents", N_LATENTS), ("batch", BATCHES)):
        for value in values:
            shape = {"n_latents": value, "batch": 4096} if axis == "n_latents" else {"n_latents": 16384, "batch": value}
            out = RESULTS / "scaling" / f"sae_step_{axis}_{value}.json"
            run("sae_step.py", ["--core", "--steps", "3", "--n-latents", str(shape["n_latents"]), "--batch",
                                str(shape["batch"]), "--json", str(out)])
            seconds = json.loads(out.read_text())["seconds_per_step"]
            curves[axis].append({**shape, "jaxinterp_s": seconds["jaxinterp topk"],
                                 "floor_s": seconds["floor: top_k(x @ W_enc)"]})
    for n_hooks in N_HOOKS:
        out = RESULTS / "scaling" / f"probe_sweep_{n_hooks}.json"
        run("probe_sweep.py", ["--n-hooks", str(n_hooks), "--skip-sklearn", "--json", str(out)])
        result = json.loads(out.read_text())
        curves["probe_hooks"].append({"hooks": n_hooks, "jaxinterp_s": result["jaxinterp_s"],
                                      "jaxinterp_compiled_s": result["jaxinterp_compiled_s"]})
    return curves


def plot(curves: dict, path: Path) -> None:
    """Three panels: step time vs n_latents, vs batch (ours and the floor), probe sweep vs hooks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for axis, panel, label in (("n_latents", axes[0], "n_latents (batch 4096)"),
                               ("batch", axes[1], "batch tokens (16,384 latents)")):
        xs = [row[axis] for row in curves[axis]]
        panel.plot(xs, [row["jaxinterp_s"] for row in curves[axis]], marker="o", label="jaxinterp TopK step")
        panel.plot(xs, [row["floor_s"] for row in curves[axis]], marker="s", label="floor top_k(x @ W_enc)")
        panel.set(xscale="log", yscale="log", xlabel=label, ylabel="seconds")
        panel.set_xticks(xs, [f"{x:,}" for x in xs], minor=False)
        panel.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        panel.legend(fontsize=8)
        panel.grid(alpha=0.3)
    hooks = curves["probe_hooks"]
    axes[2].plot([r["hooks"] for r in hooks], [r["jaxinterp_compiled_s"] for r in hooks], marker="o", label="compiled")
    axes[2].plot([r["hooks"] for r in hooks], [r["jaxinterp_s"] for r in hooks], marker="s", label="incl. compile")
    axes[2].set(xlabel="hooks (10 C each, 2000 texts)", ylabel="seconds", title="probe sweep")
    axes[2].legend(fontsize=8)
    axes[2].grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-curves", action="store_true")
    args = parser.parse_args()
    began = time.perf_counter()
    walls = {script + (" (bf16)" if "bfloat16" in script_args else "")
             + (" (transcoder)" if "--only-transcoder" in script_args else ""): run(script, script_args)
             for script, script_args in TABLES}
    if not args.skip_curves:
        curves = scaling_curves()
        (RESULTS / "scaling.json").write_text(json.dumps(curves, indent=2))
        plot(curves, BENCH / "scaling.png")
        print("\nscaling (seconds)")
        for axis in ("n_latents", "batch"):
            for row in curves[axis]:
                print(f"  n_latents {row['n_latents']:>6,}  batch {row['batch']:>6,}  jaxinterp {row['jaxinterp_s']:.3f}"
                      f"  floor {row['floor_s']:.3f}  ratio {row['jaxinterp_s'] / row['floor_s']:.2f}")
        for row in curves["probe_hooks"]:
            print(f"  probe sweep, {row['hooks']:>2} hooks x 10 C: {row['jaxinterp_compiled_s']:.2f} s compiled, "
                  f"{row['jaxinterp_s']:.2f} s with compile")
    print("\nwall time per script: " + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items())
          + f"; total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
