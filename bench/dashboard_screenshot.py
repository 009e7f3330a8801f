"""A dashboard page rendered by headless Chromium into a PNG, to see what a reader sees.

    .venv/bin/python bench/dashboard_screenshot.py PAGE.html OUT.png [--window-size 1200,1600] [--chromium PATH]
    .venv/bin/python bench/dashboard_screenshot.py --demo DIR OUT.png   # writes a small demo dashboard to DIR first

Uses Debian's ``/usr/bin/chromium`` (``apt-get install -y chromium``); exits 2 with that hint when it is missing.
``--no-sandbox`` because Chromium refuses to run as root otherwise; a fresh profile directory per run, so
concurrent runs do not share one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHROMIUM = "/usr/bin/chromium"


def screenshot(page: Path, png: Path, window_size: str = "1200,1600", chromium: str = CHROMIUM,
               timeout_s: float = 120) -> float:
    """Renders ``page`` to ``png``; returns the seconds Chromium took."""
    with tempfile.TemporaryDirectory(prefix="dashboard-chromium-") as profile:
        start = time.perf_counter()
        done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                               f"--user-data-dir={profile}", f"--window-size={window_size}",
                               f"--screenshot={png.absolute()}", page.absolute().as_uri()],
                              capture_output=True, text=True, timeout=timeout_s)
        elapsed = time.perf_counter() - start
    if done.returncode != 0 or not png.exists():
        raise RuntimeError(f"chromium exited {done.returncode} without {png}: {done.stderr.strip()[-1000:]}")
    return elapsed


def demo_dashboard(out: Path) -> Path:
    """A two-latent dashboard over a made-up word-level cache; returns the busier latent's page."""
    from jaxinterp.interpret import LatentCacheEntries
    from jaxinterp.interpret.dashboard import write_dashboard
    from jaxinterp.interpret.latent_summary import summarize_latents
    from jaxinterp.interpret.logit_effects import logit_effects

    words = (" The river bank was flooded after the storm, so the bank on Main Street closed its doors & moved"
             " the <money> to a vault across the river.").split(" ")
    vocab = sorted(set(" " + w for w in words if w))
    text = [" " + w for w in words if w]
    tokens = np.array([[vocab.index(w) for w in text[i:] + text[:i]][:24] for i in range(0, 24, 3)])
    rng = np.random.default_rng(0)
    locations, activations = [], []
    for context in range(len(tokens)):
        for position, token in enumerate(tokens[context]):
            if vocab[token] in (" bank", " vault", " money", " <money>"):
                locations.append((context, position, 0))
                activations.append(rng.uniform(1.0, 4.0) * (2 if vocab[token] == " bank" else 1))
            elif vocab[token] in (" river", " flooded", " storm,"):
                locations.append((context, position, 1))
                activations.append(rng.uniform(0.5, 2.0))
    order = np.lexsort((np.array(locations)[:, 2], np.array(locations)[:, 1], np.array(locations)[:, 0]))
    entries = LatentCacheEntries(np.array(locations)[order], np.array(activations, np.float32)[order], tokens, {})
    fired = np.bincount(entries.locations[:, 2], minlength=2)
    summaries = summarize_latents(entries, fired)
    W_U = rng.normal(size=(8, len(vocab))).astype(np.float32)
    effects = logit_effects(rng.normal(size=(2, 8)), W_U, k=6)
    write_dashboard(str(out), summaries, lambda t: vocab[t], effects,
                    explanations={0: "financial institutions and what they hold", 1: "rivers and bad weather"},
                    scores={0: {"detection": {"accuracy": 0.82, "f1": 0.8}, "fuzzing": {"accuracy": 0.74}}},
                    title="demo", overwrite=True)
    return out / "latents" / "0.html"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("page", help="the page to render (with --demo: the directory to write the demo into)")
    parser.add_argument("png", type=Path)
    parser.add_argument("--window-size", default="1200,1600", help="WIDTH,HEIGHT in CSS pixels")
    parser.add_argument("--chromium", default=CHROMIUM)
    parser.add_argument("--demo", action="store_true", help="write a small demo dashboard to PAGE first")
    args = parser.parse_args()
    if not Path(args.chromium).exists():
        print(f"{args.chromium} is missing; install Debian's Chromium: apt-get install -y chromium", file=sys.stderr)
        return 2
    page = demo_dashboard(Path(args.page)) if args.demo else Path(args.page)
    if not page.is_file():
        print(f"{page} is not a file", file=sys.stderr)
        return 2
    elapsed = screenshot(page, args.png, args.window_size, args.chromium)
    print(f"{page} → {args.png} ({args.png.stat().st_size:,} B) in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
