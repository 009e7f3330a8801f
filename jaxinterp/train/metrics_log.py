"""Training metrics to ``metrics.jsonl``, TensorBoard event files (tensorboardX), a tqdm bar and, when
``wandb.project`` is set, Weights & Biases (all show means over the ``log_every`` steps since the last line).

Both files are appended to as training goes, which object stores cannot do: for a ``gs://`` or
``s3://`` run directory they are written in a local mirror directory and uploaded whole at every
checkpoint and at the end (a resumed run first downloads ``metrics.jsonl`` to append to it).
A resumed run first drops the lines past the step it resumed from (logged by the session that was
killed after them), so every step appears once.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from etils import epath
from tqdm.auto import tqdm

from jaxinterp.store.paths import copy_file, on_object_store, upload_tree

__all__ = ["MetricsLog", "progress_postfix"]

_METRICS = "metrics.jsonl"


def progress_postfix(means: Mapping[str, float]) -> dict[str, str]:
    """The progress bar's fields from one member's window means: FVU over all tokens and without
    massive ones (one massive token can dominate a batch's FVU; a mean over the window steadies it)."""
    return {"fvu": f"{means['fvu']:.3f}", "fvu_nonmassive": f"{means['fvu_nonmassive']:.3f}",
            "l0": f"{means['l0']:.1f}", "dead": f"{means['dead_fraction']:.3f}"}


def _drop_lines_after(path: Path, step: int) -> None:
    """Keeps the lines of steps up to ``step`` (and none cut short by a kill), atomically."""
    if not path.exists():
        return
    text = path.read_text()
    lines = text.splitlines()
    kept = []
    for line in lines:
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            pass  # half a line, written when the process died
    if len(kept) == len(lines) and text.endswith("\n"):
        return
    staging = path.with_name(f"{path.name}.tmp")
    staging.write_text("".join(f"{line}\n" for line in kept))
    os.replace(staging, path)


class MetricsLog:
    """Averages per-step metrics over a window and writes one line per member when asked.

    Only process 0 writes files; every process may call it. Metrics arrive as
    ``{member: {name: scalar}}`` device arrays and are fetched only at write time. On an object
    store the files live in a local mirror until :meth:`sync` or :meth:`close` uploads them.
    """

    def __init__(self, run_dir: epath.Path, start: int, total: int, batch_size: int, progress: bool, wandb=None):
        self.writing = jax.process_index() == 0
        self.wandb = wandb  # a jaxinterp.wandb_log.WandbLog gets every line too (process 0)
        self.run_dir, self.mirror = run_dir, None
        directory = Path(run_dir)
        if self.writing and on_object_store(run_dir):
            directory = self.mirror = Path(tempfile.mkdtemp(prefix="jaxinterp-metrics-"))
            if (run_dir / _METRICS).exists():  # a resumed run appends to what is there
                copy_file(run_dir / _METRICS, directory / _METRICS)
        if self.writing:
            _drop_lines_after(directory / _METRICS, start)
        self.window: list[dict[str, dict[str, Any]]] = []
        self.batch_size, self.last_time, self.last_step = batch_size, time.perf_counter(), start
        self.bar = tqdm(total=(total - start) * batch_size, unit="tok", unit_scale=True, desc="train",
                        disable=not (progress and self.writing) or start >= total)
        self.jsonl = open(directory / _METRICS, "a") if self.writing else None
        self.tensorboard = None
        if self.writing:
            from tensorboardX import SummaryWriter

            self.tensorboard = SummaryWriter(str(directory / "tensorboard"))

    def add(self, metrics: dict[str, dict[str, Any]]) -> None:
        self.window.append(metrics)
        self.bar.update(self.batch_size)

    def write(self, step: int, extra: dict[str, Any] | None = None) -> None:
        """Writes the window's means (plus tokens/s since the last write) for every member, and shows
        the first member's on the progress bar."""
        if not self.window:
            return
        now = time.perf_counter()
        tokens_per_s = (step - self.last_step) * self.batch_size / max(now - self.last_time, 1e-9)
        self.last_time, self.last_step = now, step
        window = jax.device_get(self.window)
        self.window = []
        if not self.writing:
            return
        means = {name: {key: float(np.mean([m[name][key] for m in window])) for key in window[0][name]}
                 for name in window[0]}
        for name, line in means.items():
            self.record(step, name, {**line, "tokens_per_s": tokens_per_s, **(extra or {})})
        self.bar.set_postfix(progress_postfix(next(iter(means.values()))))

    def record(self, step: int, member: str, values: dict[str, Any], prefix: str = "train") -> None:
        """One JSONL line ``{"step", "sae", "split", ...}`` and the same scalars in TensorBoard."""
        if not self.writing:
            return
        self.jsonl.write(json.dumps({"step": step, "sae": member, "split": prefix, **values}) + "\n")
        self.jsonl.flush()
        for key, value in values.items():
            if isinstance(value, (int, float)):
                self.tensorboard.add_scalar(f"{member}/{prefix}/{key}", value, step)
        if self.wandb is not None:
            self.wandb.log(step, member, values, prefix)

    def sync(self) -> None:
        """Uploads the mirrored files to an object-store run directory (a local one is always current)."""
        if self.mirror is not None:
            self.tensorboard.flush()
            upload_tree(self.mirror, self.run_dir)

    def close(self) -> None:
        """Closes the files (uploading them a last time) and the progress bar."""
        self.bar.close()
        if self.writing:
            self.jsonl.close()
            try:
                self.tensorboard.close()
            except OSError:  # e.g. disk full: tensorboardX would retry (and fail) again at exit
                for writer in self.tensorboard.all_writers.values():
                    writer.event_writer._closed = True
                raise
        if self.mirror is not None:
            upload_tree(self.mirror, self.run_dir)
            shutil.rmtree(self.mirror, ignore_errors=True)
