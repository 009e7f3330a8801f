"""``jaxinterp eval``: reconstruction metrics of a trained run on held-out store activations."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxinterp.buffer import ActivationBuffer
from jaxinterp.eval.holdout import evaluate_reconstruction
from jaxinterp.eval.metrics import dead_fraction, dense_fraction
from jaxinterp.store import open_store
from jaxinterp.train.trained import load_trained

__all__ = ["evaluate_run"]


def evaluate_run(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluates the newest checkpoint of ``cfg.run`` and writes the metrics JSON.

    With ``cfg.store`` empty, the run's own store is used and only its holdout chunks (the same
    seeded split as training) are read; another store is read from its start.
    """
    trained = load_trained(cfg["run"], cfg["sae"])
    train_cfg = trained.run_config["train"]
    store = open_store(cfg["store"] or train_cfg["store"])
    own = not cfg["store"]
    hook = trained.config["hook_name"]
    buffer = ActivationBuffer(store, [hook], cfg["batch_size"], train_cfg["seed"],
                              train_cfg["holdout_fraction"] if own else 0.0, train_cfg["mixing_chunks"],
                              train_cfg["exclude_bos"], on_nonfinite=train_cfg["on_nonfinite"],
                              scales={hook: trained.input_scale})
    rows = (buffer.holdout(cfg["eval_tokens"]) if own else buffer.first_rows(cfg["eval_tokens"]))[hook]
    result = evaluate_reconstruction(trained.architecture, trained.state.params, trained.state.arch_state, rows,
                                     cfg["batch_size"])
    result.update(
        step=trained.step,
        dead_fraction=float(dead_fraction(trained.state.tokens_since_fired, train_cfg["dead_tokens"])),
        dense_fraction=float(dense_fraction(trained.state.fire_count, trained.tokens_seen)),
        store=store.url,
        hook_name=trained.config["hook_name"],
        sae=trained.name,
        architecture=trained.config["architecture"],
    )
    out = Path(cfg["out"] or Path(cfg["run"]) / "eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    result["written_to"] = str(out)
    return result
