"""``jaxinterp train``: the SAE training loop over a ('data', 'model') mesh, resumable with orbax.

One run trains every SAE of its sweep (:mod:`jaxinterp.train.members`) from the same batches.
Checkpoints (params, optimizer and architecture state, latent counters, buffer position) are
written every ``checkpoint_every`` steps and when the process gets SIGTERM (then it exits 0);
rerunning the same command resumes from the newest intact one, onto the current mesh even if the
device count changed. One job at a time writes a run directory (:class:`~jaxinterp.train.run_lock.RunLock`).
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import jax
import numpy as np
from etils import epath

from jaxinterp.buffer import ActivationBuffer
from jaxinterp.config import ConfigError, as_dict
from jaxinterp.distributed import barrier, host_copy, is_primary
from jaxinterp.eval.holdout import evaluate_reconstruction
from jaxinterp.eval.metrics import dead_fraction, dense_fraction
from jaxinterp.mesh import batch_sharding, make_mesh
from jaxinterp.runs import restore_step
from jaxinterp.store import open_store
from jaxinterp.store.paths import location
from jaxinterp.train.checkpoint import CheckpointWriter, prepare_run_dir
from jaxinterp.train.members import (Member, build_members, check_widths, member_configs, member_hooks, member_rows,
                                     run_hooks)
from jaxinterp.train.metrics_log import MetricsLog
from jaxinterp.train.run_lock import RunLock
from jaxinterp.train.state import TrainState, abstract_state, init_state, state_shardings
from jaxinterp.train.step import train_step
from jaxinterp.train.warm_start import warm_start_params
from jaxinterp.wandb_log import start_wandb

__all__ = ["train", "run_config"]

# Store-manifest keys copied into the run's cfg.json, so a run describes its data by itself.
_SOURCE_KEYS = ("model", "model_name", "model_hash", "model_class", "context_size", "prepend_bos", "dataset_path",
                "dataset_hash", "tokenizer", "dtype", "n_tokens", "models")  # models: a store of several (else None)


def run_config(cfg: Mapping[str, Any], manifest: Mapping[str, Any], d_in: Mapping[str, int]) -> dict[str, Any]:
    """The self-description saved as ``<run>/cfg.json``: one entry per SAE under ``saes`` (its input
    hook ``hook_name`` of width ``d_in``, its target ``target_hook`` of width ``d_out``: the same for an SAE)."""
    saes = {}
    for name, member in member_configs(cfg).items():
        sae = member["sae"]
        inputs, targets = member["hook"], member["target_hook"]
        layers = {}
        input_hooks, target_hooks = member_hooks(name, member, list(d_in))
        if input_hooks:  # a multi-hook member (cross-layer transcoder, crosscoder): its hooks, in stacking order
            layers = {"hook_names": list(input_hooks), "target_hooks": list(target_hooks)}
            inputs, targets = input_hooks[0], target_hooks[0]
        saes[name] = {**sae, "d_in": d_in[inputs], "d_sae": sae["n_latents"], "hook_name": member["hook"],
                      "target_hook": member["target_hook"], "d_out": d_in[targets], "lr": member["lr"], **layers}
    return {"saes": saes, "source": {key: manifest.get(key) for key in _SOURCE_KEYS}, "train": as_dict(cfg)}


def _warm_start(cfg, members: Sequence[Member], d_in: Mapping[str, int], scales: Mapping[str, float],
                manifest: Mapping[str, Any]):
    """``{name: (params, arch_state)}`` from ``cfg.init_from`` (one-SAE runs), or ``None``."""
    if not cfg["init_from"]:
        return None
    if len(members) > 1:
        raise ConfigError("config field 'init_from' starts one SAE; a sweep run trains several")
    from jaxinterp.export.load import load_sae, require_same_model

    (member,) = members
    sae = load_sae(cfg["init_from"])
    require_same_model(sae, manifest["model_hash"], manifest["model_name"], "init_from", cfg["allow_other_model"])
    return {member.name: warm_start_params(sae, member, d_in[member.hook], scales[member.hook])}


def _resume_step(out: epath.Path, config: dict[str, Any]) -> tuple[int | None, bool]:
    """(step to resume from or ``None``, whether it is a legacy step): process 0 decides, all agree."""
    found = prepare_run_dir(str(out), config) if is_primary() else (None, False)
    if jax.process_count() == 1:
        return found
    from jax.experimental import multihost_utils

    step, legacy = multihost_utils.broadcast_one_to_all(
        np.asarray([-1 if found[0] is None else found[0], int(found[1])], np.int32))
    return (None if step < 0 else int(step)), bool(legacy)


def _start_state(cfg, buffer: ActivationBuffer, out: epath.Path, members, d_in, mesh, resume: tuple[int | None, bool]):
    """A fresh sharded state and buffer state, or those of step ``resume`` (onto this mesh)."""
    abstract = abstract_state(members, d_in)
    shardings = state_shardings(abstract, members, mesh)
    step, legacy = resume
    if step is not None:
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
        state, buffer_state = restore_step(str(out), step, target, legacy)
        if buffer_state.seed != cfg["seed"]:
            raise ConfigError(f"config field 'seed' ({cfg['seed']}) differs from the checkpoint's ({buffer_state.seed})")
        if cfg["streams"] not in (-1, buffer_state.streams):
            raise ConfigError(f"config field 'streams' ({cfg['streams']}) differs from the checkpoint's "
                              f"({buffer_state.streams}); leave it at -1 to resume with the checkpoint's")
        return state, buffer_state, shardings
    if cfg["massive_tokens"] != "keep":  # before the scales: the normalisation sees the rows as training does
        buffer.massive_norms = buffer.estimate_massive_norms(cfg["norm_tokens"], cfg["massive_ratio"])
    if cfg["normalize"]:
        scales = buffer.estimate_scales(cfg["norm_tokens"])
    else:
        scales = {hook: 1.0 for hook in d_in}
    buffer.scales = scales  # data-dependent init happens in the units the SAEs will see
    samples = buffer.first_batch()
    initial = _warm_start(cfg, members, d_in, scales, buffer.store.manifest)
    init = jax.jit(partial(init_state, members=members), out_shardings=shardings)
    with jax.set_mesh(mesh):
        state = init(jax.random.key(cfg["seed"]), samples, initial=initial)
    return state, buffer.position(0), shardings


def massive_mode(massive_tokens: str, members: Sequence[Member]) -> str:
    """The buffer's handling of massive rows for ``massive_tokens`` (``keep`` sets no threshold at all).

    ``shrink`` rescales each hook's vector by that hook's own factor, so a transcoder's (input,
    target) pair would stop being an MLP's input and output, and a crosscoder's sources (one token's
    shared latents) would stop being one token's: a run with a transcoder or multi-hook member drops
    massive rows instead (at every hook, for every member, since they share the batches).
    """
    if massive_tokens == "drop" or any(member.transcoder or member.layer_hooks for member in members):
        return "drop"
    return "shrink"


class _Preemption:
    """Turns SIGTERM into a flag the loop polls (only installable from the main thread)."""

    def __init__(self):
        self.requested = False

    def agreed(self) -> bool:
        """Whether any process got SIGTERM; the same answer on every process, so all of them stop
        and checkpoint at the same step (one tiny all-gather per step with several processes)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.asarray([self.requested]))))

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGTERM, lambda *_: setattr(self, "requested", True))
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)


def train(cfg: Mapping[str, Any], progress: bool = True) -> dict[str, Any]:
    """Trains the run's SAEs as the train config says and returns a summary.

    Rerunning the same command resumes from the latest checkpoint, replaying the exact batch
    sequence from the saved buffer state; a finished run only re-evaluates. On SIGTERM the run
    saves a checkpoint at the current step and returns with ``"preempted": True``.
    """
    out = location(cfg["out"], "out")  # a local path or URL; checked before any work
    store = open_store(cfg["store"])
    members = build_members(cfg, store.manifest["hook_names"])
    if cfg["init_from"] and any(member.transcoder for member in members):  # before anything is written
        raise ConfigError("config field 'init_from': warm start of a transcoder from an exported SAE is not "
                          "implemented yet")
    if cfg["normalize"] and any(member.layer_hooks for member in members):
        raise ConfigError("config field 'normalize': a multi-hook member (clt, crosscoder) with per-hook input "
                          "scales is not implemented yet; train it on raw activations (normalize=false)")
    # Input and target hooks: the buffer yields them row-aligned, each normalised with its own scale.
    hooks = run_hooks(members)
    d_in = {hook: int(store.array(hook).shape[1]) for hook in hooks}  # a missing hook lists the store's
    check_widths(members, d_in)
    mesh = make_mesh(cfg["mesh"]["data"], cfg["mesh"]["model"])

    def make_buffer(streams: int) -> ActivationBuffer:
        return ActivationBuffer(store, hooks, cfg["batch_size"], cfg["seed"], cfg["holdout_fraction"],
                                cfg["mixing_chunks"], cfg["exclude_bos"], on_nonfinite=cfg["on_nonfinite"],
                                sharding=batch_sharding(mesh), streams=streams,
                                massive_mode=massive_mode(cfg["massive_tokens"], members))

    buffer = make_buffer(cfg["streams"])
    lock = RunLock(out) if is_primary() else contextlib.nullcontext()  # a multi-process job is one writer
    with lock:
        # No process reads or writes the run before process 0 holds its lock.
        barrier("jaxinterp-run-lock", cfg.get("distributed", {}).get("timeout_s", 300.0))
        return _train_locked(cfg, progress, out, store, members, hooks, d_in, mesh, buffer, make_buffer)


def _train_locked(cfg, progress: bool, out: epath.Path, store, members, hooks, d_in, mesh, buffer, make_buffer):
    """The rest of :func:`train`, holding the run directory's lock."""
    resume = _resume_step(out, run_config(cfg, store.manifest, d_in))
    state, buffer_state, shardings = _start_state(cfg, buffer, out, members, d_in, mesh, resume)
    if buffer_state.streams != buffer.streams:  # resuming a run whose batches came in other parts
        buffer = make_buffer(buffer_state.streams)
    buffer.scales, buffer.massive_norms = buffer_state.scales, buffer_state.massive_norms
    step_fn = jax.jit(
        partial(train_step, members=members, dead_tokens=cfg["dead_tokens"], compute_dtype=cfg["compute_dtype"],
                massive_ratio=cfg["massive_ratio"]),
        in_shardings=(shardings, {hook: batch_sharding(mesh) for hook in hooks}),
        out_shardings=(shardings, None),
        donate_argnums=0,
    )
    holdout = buffer.holdout(cfg["eval_tokens"])
    start = int(state.step)
    wandb = start_wandb(cfg, out)  # None unless wandb.project is set (and on processes other than 0)
    began = time.perf_counter()
    with _Preemption().installed() as preemption, jax.set_mesh(mesh):
        state = _run_steps(cfg, state, step_fn, buffer, out, start, members, holdout, progress, preemption,
                           serialize=jax.default_backend() == "cpu" and mesh.size > 1, wandb=wandb)
    elapsed = time.perf_counter() - began
    done = int(state.step)

    evaluation = {}
    for member in members:
        values = evaluation[member.name] = _holdout_metrics(member, state, holdout, cfg)
        values.update(train_tokens=int(state.tokens_seen), **_row_counts(buffer))
        values["input_scale"] = buffer.scales[member.input_hooks[0]]  # a cross-layer member's are all 1 (raw)
        if member.transcoder:
            values["target_scale"] = buffer.scales[member.target_hooks[0]]
    if is_primary():
        (out / "eval.json").write_text(json.dumps(evaluation, indent=2))
    if wandb is not None:
        wandb.summarize(evaluation)
        wandb.finish()
    return {
        "run": str(out),
        "steps": done,
        "preempted": done < cfg["steps"],
        "eval": evaluation,
        "train_tokens_per_s": (done - start) * cfg["batch_size"] / elapsed if done > start else None,
        "mesh": dict(mesh.shape),
    }


def _row_counts(buffer: ActivationBuffer) -> dict[str, int]:
    """Rows the buffer left out or shrunk so far (both counts include its read-ahead)."""
    counts = {"skipped_nonfinite_rows": buffer.skipped_rows}
    if buffer.massive_norms is not None:
        counts[f"{'dropped' if buffer.massive_mode == 'drop' else 'shrunk'}_massive_rows"] = buffer.massive_rows
    return counts


def _holdout_metrics(member: Member, state: TrainState, holdout: Mapping[str, np.ndarray], cfg) -> dict[str, Any]:
    # With several processes the params span them all while the holdout rows are local; the
    # optimizer state is not needed here, so it is not gathered.
    sae = host_copy(state.saes[member.name]._replace(opt_state=None))
    result, _ = evaluate_reconstruction(member.architecture, sae.params, sae.arch_state,
                                        member_rows(holdout, member.input_hooks), massive_ratio=cfg["massive_ratio"],
                                        y=member_rows(holdout, member.target_hooks) if member.transcoder else None)
    result.update(
        dead_fraction=float(dead_fraction(sae.tokens_since_fired, cfg["dead_tokens"])),
        dense_fraction=float(dense_fraction(sae.fire_count, state.tokens_seen)),
    )
    return result


def _run_steps(cfg, state: TrainState, step_fn, buffer: ActivationBuffer, out: epath.Path, start: int, members,
               holdout, progress: bool, preemption: _Preemption, serialize: bool, wandb=None) -> TrainState:
    """The step loop: metrics every ``log_every`` steps, a checkpoint (and holdout metrics) every
    ``checkpoint_every``, and a checkpoint on SIGTERM."""
    total = cfg["steps"]
    checkpoints = CheckpointWriter(out)
    log = MetricsLog(out, start, total, cfg["batch_size"], progress, wandb)
    batches = buffer.batches(start_step=start)
    try:
        for step in range(start, total):
            state, metrics = step_fn(state, next(batches))
            if serialize:
                # XLA:CPU runs every virtual device's share of a step on one thread pool; with several
                # steps in flight their collectives can wait on each other forever.
                jax.block_until_ready(metrics)
            log.add(metrics)
            checkpoints.poll()  # the previous save's digest, as soon as orbax has finished it
            done = step + 1
            stop = preemption.agreed()
            if done % cfg["log_every"] == 0 or done == total or stop:
                log.write(done, _row_counts(buffer))
            if done % cfg["checkpoint_every"] == 0 or done == total or stop:
                checkpoints.save(done, state, buffer.position(done))
                if done % cfg["checkpoint_every"] == 0 and done < total:
                    for member in members:
                        log.record(done, member.name, _holdout_metrics(member, state, holdout, cfg), prefix="holdout")
                log.sync()  # metrics reach an object-store run directory with each checkpoint
            if stop:
                break
        jax.block_until_ready(state)
    finally:
        batches.close()
        try:
            checkpoints.close()
        finally:
            log.close()
    return state
