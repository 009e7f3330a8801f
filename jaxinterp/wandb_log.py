"""Weights & Biases logging (the optional ``wandb`` extra), on when ``wandb.project`` is set.

A train run logs its config once, every ``metrics.jsonl`` line at its step (keys namespaced
``<sae>/<split>/<metric>`` like the TensorBoard tags), and its final holdout evaluation (``eval.json``)
into the run summary as ``<sae>/eval/<metric>``. The wandb run id is kept in the run directory
(``wandb.json``, with project and entity), so a resumed run continues the same wandb run
(``resume="allow"``) and ``jaxinterp eval`` of that run directory adds its metrics and the
feature-density plot to it. Only process 0 logs. With ``wandb.project`` unset (and no
``wandb.json`` for eval) ``wandb`` is never imported.

A resumed run replays the steps after its checkpoint; steps the killed session already sent are
the same values, and wandb keeps the first it got.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
from etils import epath

from jaxinterp.config import ConfigError, as_dict

__all__ = ["RECORD", "WandbLog", "log_evaluation", "start_wandb"]

RECORD = "wandb.json"  # {"id", "project", "entity", "mode"} of the run's wandb run ('' mode: wandb's default)


def _import_wandb():
    try:
        import wandb
    except ImportError as error:
        raise ConfigError("config field 'wandb.project' is set but wandb is not installed; "
                          "pip install 'jaxinterp[wandb]'") from error
    return wandb


def _scalars(values: Mapping[str, Any], prefix: str) -> dict[str, float | int]:
    return {f"{prefix}/{key}": value for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


class WandbLog:
    """One open wandb run; :func:`start_wandb` makes it (or ``None`` when wandb logging is off)."""

    def __init__(self, run):
        self.run = run

    def log(self, step: int, member: str, values: Mapping[str, Any], prefix: str = "train") -> None:
        """One ``metrics.jsonl`` line's scalars at ``step``; lines of one step make one history row."""
        self.run.log(_scalars(values, f"{member}/{prefix}"), step=step)

    def summarize(self, evaluation: Mapping[str, Mapping[str, Any]]) -> None:
        """The final holdout evaluation (``eval.json``: ``{sae: {metric: value}}``) into the run summary."""
        for member, values in evaluation.items():
            for key, value in _scalars(values, f"{member}/eval").items():
                self.run.summary[key] = value

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


def _read_record(run_dir: epath.Path) -> dict[str, Any] | None:
    path = run_dir / RECORD
    return json.loads(path.read_text()) if path.exists() else None


def start_wandb(cfg: Mapping[str, Any], run_dir: epath.Path) -> WandbLog | None:
    """The run's wandb run on process 0 when ``cfg.wandb.project`` is set (else ``None``): a new one,
    or the one ``<run_dir>/wandb.json`` names (a resumed run). Call after the run directory is
    prepared (a failed attempt's ``wandb.json`` is gone with its other files)."""
    settings = cfg.get("wandb") or {}
    if not settings.get("project") or jax.process_index() != 0:
        return None
    wandb = _import_wandb()
    record = _read_record(run_dir)
    if record is None or record.get("project") != settings["project"]:
        record = {"id": secrets.token_hex(4), "project": settings["project"], "entity": settings["entity"],
                  "mode": settings["mode"]}
        (run_dir / RECORD).write_text(json.dumps(record, indent=2))
    tags = [tag.strip() for tag in settings["tags"].split(",") if tag.strip()]
    run = wandb.init(project=settings["project"], entity=settings["entity"] or None, name=settings["name"] or None,
                     tags=tags or None, mode=settings["mode"] or None, id=record["id"], resume="allow",
                     config=as_dict(cfg), reinit="finish_previous")
    return WandbLog(run)


def log_evaluation(run_dir: epath.Path, sae: str, result: Mapping[str, Any], density_plot: Path) -> None:
    """``jaxinterp eval`` of a run directory that logs to wandb: its metrics (summary ``<sae>/eval_run/*``)
    and the feature-density plot (``<sae>/feature_density``) join the run's wandb run. Nothing (no
    import) when the run has no ``wandb.json``; only process 0 logs."""
    if jax.process_index() != 0 or not (run_dir / RECORD).exists():
        return
    record = _read_record(run_dir)
    wandb = _import_wandb()
    run = wandb.init(project=record["project"], entity=record.get("entity") or None, id=record["id"],
                     resume="allow", mode=record.get("mode") or None, reinit="finish_previous")
    try:
        for key, value in _scalars(result, f"{sae}/eval_run").items():
            run.summary[key] = value
        run.log({f"{sae}/feature_density": wandb.Image(str(density_plot))})  # at the run's next step
    finally:
        run.finish()
