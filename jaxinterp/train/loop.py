"""``jaxinterp train``: the SAE training loop over a ('data', 'model') mesh, resumable with orbax."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxinterp.buffer import ActivationBuffer, BufferState
from jaxinterp.config import ConfigError, as_dict
from jaxinterp.eval.holdout import evaluate_reconstruction
from jaxinterp.eval.metrics import dead_fraction, dense_fraction
from jaxinterp.mesh import SAE_RULES, batch_sharding, make_mesh, tree_shardings
from jaxinterp.store import open_store
from jaxinterp.train.checkpoint import checkpoint_manager, restore_latest, save_checkpoint, write_run_config
from jaxinterp.train.state import TrainState, init_state, make_optimizer
from jaxinterp.train.step import train_step

__all__ = ["train", "run_config"]

# Store-manifest keys copied into the run's cfg.json, so a run describes its data by itself.
_SOURCE_KEYS = ("model_name", "model_hash", "model_class", "context_size", "prepend_bos", "dataset_path",
                "dataset_hash", "tokenizer", "dtype", "n_tokens")


def run_config(cfg: Mapping[str, Any], manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The self-description saved as ``<run>/cfg.json``."""
    train_cfg = as_dict(cfg)
    return {
        "architecture": train_cfg["sae"]["architecture"],
        "d_in": int(manifest["d_in"]),
        "d_sae": int(train_cfg["sae"]["n_latents"]),
        "k": int(train_cfg["sae"]["k"]),
        "hook_name": train_cfg["hook"],
        "source": {key: manifest.get(key) for key in _SOURCE_KEYS},
        "train": train_cfg,
    }


def _start_state(cfg, buffer: ActivationBuffer, out: Path, d_in: int, mesh, optimizer):
    """A fresh sharded state and buffer state, or the newest checkpoint's; returns them and shardings."""
    init = partial(init_state, d_in=d_in, d_sae=cfg["sae"]["n_latents"], optimizer=optimizer)
    key = jax.random.key(cfg["seed"])
    abstract = jax.eval_shape(init, key, jax.ShapeDtypeStruct((d_in,), np.float32))
    shardings = tree_shardings(abstract, SAE_RULES, mesh)
    if checkpoint_manager(str(out)).latest_step() is not None:
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
        _, restored, buffer_state = restore_latest(str(out), target)
        if buffer_state.seed != cfg["seed"]:
            raise ConfigError(f"config field 'seed' ({cfg['seed']}) differs from the checkpoint's ({buffer_state.seed})")
        return TrainState(*restored), buffer_state, shardings
    scales = buffer.estimate_scales(cfg["norm_tokens"]) if cfg["normalize"] else {cfg["hook"]: 1.0}
    buffer.scales = scales  # b_dec is initialised in the units the SAE will see
    b_dec = buffer.first_batch()[cfg["hook"]].mean(axis=0)  # data-dependent b_dec init, as the peers do
    state = jax.jit(init, out_shardings=shardings)(key, b_dec)
    return state, BufferState(cfg["seed"], 0, scales), shardings


def train(cfg: Mapping[str, Any], progress: bool = True) -> dict[str, Any]:
    """Trains an SAE as the train config says and returns a summary (metrics, paths, throughput).

    Rerunning the same command resumes from the latest checkpoint, replaying the exact batch
    sequence from the saved buffer state; a finished run only re-evaluates.
    """
    store = open_store(cfg["store"])
    d_in, hook = int(store.array(cfg["hook"]).shape[1]), cfg["hook"]
    mesh = make_mesh(cfg["mesh"]["data"], cfg["mesh"]["model"])
    buffer = ActivationBuffer(store, [hook], cfg["batch_size"], cfg["seed"], cfg["holdout_fraction"],
                              cfg["mixing_chunks"], cfg["exclude_bos"], on_nonfinite=cfg["on_nonfinite"],
                              sharding=batch_sharding(mesh))
    out = Path(cfg["out"])
    write_run_config(str(out), run_config(cfg, store.manifest))
    optimizer = make_optimizer(cfg)
    state, buffer_state, shardings = _start_state(cfg, buffer, out, d_in, mesh, optimizer)
    buffer.scales = buffer_state.scales
    step_fn = jax.jit(
        partial(train_step, k=cfg["sae"]["k"], optimizer=optimizer, dead_tokens=cfg["dead_tokens"]),
        in_shardings=(shardings, batch_sharding(mesh)),
        out_shardings=(shardings, None),
        donate_argnums=0,
    )
    start, total = int(state.step), cfg["steps"]
    began = time.perf_counter()
    state = _run_steps(cfg, state, step_fn, buffer, out, start, progress, serialize=jax.default_backend() == "cpu" and mesh.size > 1)
    elapsed = time.perf_counter() - began

    evaluation = evaluate_reconstruction(state.params, buffer.holdout(cfg["eval_tokens"])[hook], cfg["sae"]["k"])
    evaluation.update(
        dead_fraction=float(dead_fraction(state.tokens_since_fired, cfg["dead_tokens"])),
        dense_fraction=float(dense_fraction(state.fire_count, state.tokens_seen)),
        train_tokens=int(state.tokens_seen),
        input_scale=buffer.scales[hook],
        skipped_nonfinite_rows=buffer.skipped_rows,
    )
    (out / "eval.json").write_text(json.dumps(evaluation, indent=2))
    return {
        "run": str(out),
        "steps": total,
        "eval": evaluation,
        "train_tokens_per_s": (total - start) * cfg["batch_size"] / elapsed if total > start else None,
        "mesh": dict(mesh.shape),
    }


def _run_steps(cfg, state: TrainState, step_fn, buffer: ActivationBuffer, out: Path, start: int, progress: bool,
               serialize: bool) -> TrainState:
    """The step loop: metrics every ``log_every`` steps, a checkpoint every ``checkpoint_every``."""
    total, hook = cfg["steps"], cfg["hook"]
    manager = checkpoint_manager(str(out))
    bar = tqdm(total=(total - start) * cfg["batch_size"], unit="tok", unit_scale=True, desc="train",
               disable=not progress or start >= total)
    window: list[dict[str, jax.Array]] = []
    batches = buffer.batches(start_step=start)
    with open(out / "metrics.jsonl", "a") as metrics_file:
        for step in range(start, total):
            state, metrics = step_fn(state, next(batches)[hook])
            if serialize:
                # XLA:CPU runs every virtual device's share of a step on one thread pool; with several
                # steps in flight their collectives can wait on each other forever.
                jax.block_until_ready(metrics)
            window.append(metrics)
            if (step + 1) % cfg["log_every"] == 0 or step + 1 == total:
                line = {name: float(np.mean([float(m[name]) for m in window])) for name in window[0]}
                line.update(step=step + 1, skipped_nonfinite_rows=buffer.skipped_rows)
                metrics_file.write(json.dumps(line) + "\n")
                metrics_file.flush()
                bar.set_postfix(fvu=f"{line['fvu']:.3f}", l0=f"{line['l0']:.1f}", dead=f"{line['dead_fraction']:.3f}")
                window = []
            if (step + 1) % cfg["checkpoint_every"] == 0 or step + 1 == total:
                save_checkpoint(manager, step + 1, state, BufferState(cfg["seed"], step + 1, buffer.scales))
            bar.update(cfg["batch_size"])
    jax.block_until_ready(state)
    bar.close()
    manager.wait_until_finished()
    return state
