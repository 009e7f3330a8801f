"""Reading a run directory that ``jaxinterp train`` wrote: its config, its checkpoints, its trained SAEs.

Layout of ``<run>/``: ``cfg.json`` (train config, d_in, source-model metadata from the store),
``checkpoints/<step>/`` (orbax, plus ``jaxinterp_digest.json``: :mod:`jaxinterp.runs.integrity`),
``metrics.jsonl``, ``tensorboard/``, ``eval.json``, and ``.lock`` while a train job writes it. A run
directory is a local path or a URL (:func:`jaxinterp.store.paths.location`).

This package sits below both :mod:`jaxinterp.train` (which writes run directories and resumes them
through :mod:`~jaxinterp.runs.restore`) and :mod:`jaxinterp.export` / :mod:`jaxinterp.eval` (which
read trained SAEs through :func:`load_trained`), and imports neither.
"""

from jaxinterp.runs.restore import (RUN_CONFIG, CheckpointError, checkpoint_manager, newest_restorable,
                                    read_run_config, restore_latest, restore_step)
from jaxinterp.runs.trained import TrainedSAE, TrainedState, load_trained

__all__ = [
    "RUN_CONFIG",
    "CheckpointError",
    "TrainedSAE",
    "TrainedState",
    "checkpoint_manager",
    "load_trained",
    "newest_restorable",
    "read_run_config",
    "restore_latest",
    "restore_step",
]
