"""``jaxinterp eval`` of a cross-layer transcoder run: holdout metrics per layer and the whole CLT spliced in.

Reported in ``eval.json`` (the all-layer fields have the names of every other eval's): ``fvu``,
``explained_variance`` (all target layers as one row), ``fvu_per_layer`` (each target layer against its own
variance), ``l0`` (active latents per token over all layers) and ``l0_per_layer`` (per source layer),
``holdout_dead_fraction`` (over all ``L·n`` latents) and ``holdout_dead_fraction_per_layer``, the training
counters' ``dead_fraction`` / ``dense_fraction`` and their per-layer ``dead_fraction_per_layer``; with
``ce_contexts``, CE clean / spliced (every covered MLP output replaced by the CLT at once, Ameisen et al. 2025)
/ all of them zeroed, CE-loss recovered, ΔCE and KL (:mod:`jaxinterp.eval.clt`). Also ``feature_density.png``.

Not produced, each with its one-line reason under ``"skipped"``: the ZF plot and top-activating examples
(they assume one input hook per latent id; asking for ``latents`` is refused), and ``transcoder_set`` is refused
(the CLT already replaces every MLP output it covers).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxinterp.atomic import atomic_directory, check_replaceable
from jaxinterp.config import ConfigError
from jaxinterp.eval.clt import clt_layer_metrics, clt_spliced_metrics
from jaxinterp.eval.contexts import evaluation_rows, heldout_context_ids, read_contexts, source_model_files
from jaxinterp.eval.holdout import evaluate_reconstruction
from jaxinterp.eval.metrics import dead_fraction, dense_fraction
from jaxinterp.eval.plots import plot_feature_density
from jaxinterp.export.load import require_trained_on
from jaxinterp.models import load_source_model
from jaxinterp.runs import TrainedSAE
from jaxinterp.store import open_store
from jaxinterp.store.paths import location
from jaxinterp.wandb_log import log_evaluation

__all__ = ["CLT_EVAL_FILES", "SKIPPED", "evaluate_clt_run"]

# What a CLT's eval output holds (a subset of jaxinterp.eval.run.EVAL_FILES).
CLT_EVAL_FILES = ("eval.json", "feature_density.png")

SKIPPED = {
    "zf_plot": "the ZF plot of a CLT (a latent's decoder spans several target layers) is not implemented yet",
    "top_examples": "top-activating examples of a CLT's latents (one input hook per layer) are not implemented yet",
}


def _refuse_unsupported(cfg: Mapping[str, Any]) -> None:
    if cfg.get("transcoder_set"):
        raise ConfigError("config field 'transcoder_set': a cross-layer transcoder's eval already replaces every MLP "
                          "output it covers at once; leave transcoder_set empty")
    if cfg["latents"].strip():
        raise ConfigError(f"config field 'latents': {SKIPPED['top_examples']}; leave latents empty")


def _per_layer(counter: np.ndarray, layers: int) -> np.ndarray:
    """A ``clt`` architecture's flat ``[n·L]`` counter (id ``i·L + ℓ``) as ``[L, n]``."""
    return np.asarray(counter).reshape(-1, layers).T


def evaluate_clt_run(cfg: Mapping[str, Any], trained: TrainedSAE, progress: bool = False) -> dict[str, Any]:
    """Evaluates the CLT ``trained`` of run ``cfg.run``; returns the metrics (also in ``<out>/eval.json``).

    As :func:`jaxinterp.eval.run.evaluate_run`: the run's own store's held-out chunks unless ``cfg.store``
    names another (read from its start), ``cfg.out`` defaults to ``<run>/eval``.

    Raises:
      ConfigError: naming the field: ``transcoder_set`` or ``latents`` set, a store without the CLT's hooks
        or of another model, no whole held-out context for the CE loss.
    """
    _refuse_unsupported(cfg)
    run = location(cfg["run"])
    out = location(cfg["out"] or str(run / "eval"), "out")
    check_replaceable(out, "eval", CLT_EVAL_FILES)  # before any work: out may name a run, a store, anything
    train_cfg, sae_cfg = trained.run_config["train"], trained.config
    input_hooks, target_hooks = list(sae_cfg["hook_names"]), list(sae_cfg["target_hooks"])
    store = open_store(cfg["store"] or train_cfg["store"])
    own = not cfg["store"]
    missing = [hook for hook in (*input_hooks, *target_hooks) if hook not in store.hook_names]
    if missing:
        raise ConfigError(f"config field 'store': {store.url} holds {', '.join(store.hook_names)}, not the CLT's "
                          f"hooks {', '.join(missing)}")
    source = trained.run_config.get("source") or {}
    require_trained_on(source.get("model_hash"), source.get("model_name"), store.manifest["model_hash"],
                       store.manifest["model_name"], "store", cfg["allow_other_model"], "CLT")
    architecture, params, arch_state = trained.architecture, trained.state.params, trained.state.arch_state
    layers = len(input_hooks)
    buffer, held = evaluation_rows(store, list(dict.fromkeys([*input_hooks, *target_hooks])), cfg, train_cfg, own,
                                   train_cfg["exclude_bos"])
    x = np.stack([held[hook] for hook in input_hooks], axis=1)  # [tokens, L, d_in], as the trainer stacks them
    y = np.stack([held[hook] for hook in target_hooks], axis=1)
    result, fire_count = evaluate_reconstruction(architecture, params, arch_state, x, cfg["batch_size"],
                                                 cfg["massive_ratio"], y, progress)
    per_layer, _ = clt_layer_metrics(architecture, params, arch_state, x, y, cfg["batch_size"])
    since_fired = _per_layer(trained.state.tokens_since_fired, layers)
    result.update(
        per_layer,
        step=trained.step,
        dead_fraction=float(dead_fraction(trained.state.tokens_since_fired, train_cfg["dead_tokens"])),
        dead_fraction_per_layer=[float(dead_fraction(row, train_cfg["dead_tokens"])) for row in since_fired],
        dense_fraction=float(dense_fraction(trained.state.fire_count, trained.tokens_seen)),
        holdout_dead_fraction=float((fire_count == 0).mean()),
        holdout_dense_fraction=float(dense_fraction(fire_count, len(x))),
        store=store.url, hook_names=input_hooks, target_hooks=target_hooks, sae=trained.name, format="run",
        architecture="clt", activation=sae_cfg.get("activation"), n_layers=layers,
        latents_per_layer=int(params["b_enc"].shape[1]), skipped=dict(SKIPPED),
    )
    if cfg["ce_contexts"]:
        context_ids = heldout_context_ids(store, buffer.split.holdout if own else None)[: cfg["ce_contexts"]]
        if not len(context_ids):
            raise ConfigError("config field 'contexts': no whole context lies in the held-out chunks; raise the "
                              "run's holdout_fraction or evaluate on another store (--config.store)")
        spec, _ = source_model_files(cfg, store)
        model = load_source_model(spec, backend=cfg["backend"], dtype=store.manifest["model_dtype"])
        tokens = read_contexts(store, context_ids, []).tokens
        result.update(clt_spliced_metrics(model, tokens, architecture, params, arch_state, input_hooks,
                                          target_hooks, buffer.drop_bos, cfg["ce_batch_size"], progress))
        result["backend"] = model.backend
    title = f"{trained.name} (clt, {layers} layers), step {trained.step}"

    def write(directory: Path) -> None:
        (directory / "eval.json").write_text(json.dumps(result, indent=2))
        plot_feature_density(fire_count, len(x), directory / "feature_density.png", title)
        log_evaluation(run, trained.name, result, directory / "feature_density.png")  # no-op without wandb

    written = atomic_directory(str(out), True, write, "eval", CLT_EVAL_FILES)
    return {**result, "written_to": str(written)}
