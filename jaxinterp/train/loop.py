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
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from jaxinterp.buffer import ActivationBuffer
from jaxinterp.config import as_dict
from jaxinterp.eval.holdout import evaluate_reconstruction
from jaxinterp.eval.metrics import dead_fraction, dense_fraction
from jaxinterp.mesh import SAE_RULES, batch_sharding, make_mesh, tree_shardings
from jaxinterp.store import open_store
from jaxinterp.train.checkpoint import checkpoint_manager, restore_latest, write_run_config
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


def train(cfg: Mapping[str, Any], progress: bool = True) -> dict[str, Any]:
    """Trains an SAE as the train config says and returns a summary (metrics, paths, throughput).

    Rerunning the same command resumes from the latest checkpoint; a finished run only re-evaluates.
    """
    store = open_store(cfg["store"])
    buffer_array = store.array(cfg["hook"])
    d_in, d_sae, k = int(buffer_array.shape[1]), cfg["sae"]["n_latents"], cfg["sae"]["k"]
    mesh = make_mesh(cfg["mesh"]["data"], cfg["mesh"]["model"])
    buffer = ActivationBuffer(store, cfg["hook"], cfg["batch_size"], cfg["seed"], cfg["holdout_fraction"],
                              cfg["mixing_chunks"], cfg["exclude_bos"], sharding=batch_sharding(mesh))
    out = Path(cfg["out"])
    write_run_config(str(out), run_config(cfg, store.manifest))

    optimizer = make_optimizer(cfg)
    init = partial(init_state, d_in=d_in, d_sae=d_sae, optimizer=optimizer)
    key = jax.random.key(cfg["seed"])
    b_dec = buffer.first_batch().mean(axis=0)  # data-dependent b_dec init, as the peers do
    abstract = jax.eval_shape(init, key, b_dec)
    shardings = tree_shardings(abstract, SAE_RULES, mesh)
    manager = checkpoint_manager(str(out))
    if manager.latest_step() is None:
        state, start = jax.jit(init, out_shardings=shardings)(key, b_dec), 0
    else:
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
        start, restored = restore_latest(str(out), target)
        state = TrainState(*restored)

    step_fn = jax.jit(
        partial(train_step, k=k, optimizer=optimizer, dead_tokens=cfg["dead_tokens"]),
        in_shardings=(shardings, batch_sharding(mesh)),
        out_shardings=(shardings, None),
        donate_argnums=0,
    )
    total = cfg["steps"]
    bar = tqdm(total=(total - start) * cfg["batch_size"], unit="tok", unit_scale=True, desc="train",
               disable=not progress or start >= total)
    metrics_file = open(out / "metrics.jsonl", "a")
    window: list[dict[str, jax.Array]] = []
    began = time.perf_counter()
    batches = buffer.batches(start_step=start)
    # XLA:CPU runs each virtual device's part of a step on one shared thread pool; with several steps
    # in flight their collectives can wait on each other forever, so on CPU one step runs at a time.
    serialize = jax.default_backend() == "cpu" and mesh.size > 1
    for step in range(start, total):
        state, metrics = step_fn(state, next(batches))
        if serialize:
            jax.block_until_ready(metrics)
        window.append(metrics)
        if (step + 1) % cfg["log_every"] == 0 or step + 1 == total:
            line = {name: float(np.mean([float(m[name]) for m in window])) for name in window[0]}
            line["step"] = step + 1
            metrics_file.write(json.dumps(line) + "\n")
            metrics_file.flush()
            bar.set_postfix(fvu=f"{line['fvu']:.3f}", l0=f"{line['l0']:.1f}", dead=f"{line['dead_fraction']:.3f}")
            window = []
        if (step + 1) % cfg["checkpoint_every"] == 0 or step + 1 == total:
            manager.save(step + 1, args=ocp.args.StandardSave(state))
        bar.update(cfg["batch_size"])
    jax.block_until_ready(state)
    elapsed = time.perf_counter() - began
    bar.close()
    metrics_file.close()
    manager.wait_until_finished()

    holdout = buffer.holdout(cfg["eval_tokens"])
    evaluation = evaluate_reconstruction(state.params, holdout, k)
    evaluation.update(
        dead_fraction=float(dead_fraction(state.tokens_since_fired, cfg["dead_tokens"])),
        dense_fraction=float(dense_fraction(state.fire_count, state.tokens_seen)),
        train_tokens=int(state.tokens_seen),
    )
    (out / "eval.json").write_text(json.dumps(evaluation, indent=2))
    steps_run = total - start
    return {
        "run": str(out),
        "steps": total,
        "eval": evaluation,
        "train_tokens_per_s": steps_run * cfg["batch_size"] / elapsed if steps_run else None,
        "mesh": dict(mesh.shape),
    }
