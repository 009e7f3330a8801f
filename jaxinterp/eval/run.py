"""``jaxinterp eval``: a trained SAE measured the way the field measures it.

On held-out store activations: FVU and explained variance (over all tokens and over those without
massive activations), L0, relative reconstruction bias, dead and dense fractions, a
feature-density histogram, and the ZF plot (code norm against the approximate feature activation
``‖y − b_dec‖``, Lee et al. 2025) with its median ratio ``zf_median_ratio``. Through the source model, with the SAE's reconstruction spliced in at
its hook: CE loss clean / spliced / zero-ablated, CE-loss recovered and KL (a transcoder's metrics
are of its target hook, whose activation its prediction from the input hook replaces). For chosen latents:
top-activating held-out examples (JSON and HTML). With ``transcoder_set``, a set of transcoders replaces
every MLP output it covers in one spliced pass (:mod:`jaxinterp.eval.transcoder_set`), reported under
``"transcoder_set"``. A cross-layer transcoder run is evaluated by :mod:`jaxinterp.eval.clt_run` (per-layer FVU
and L0, and the whole CLT spliced in at once).

Writes ``<out>/eval.json``, ``feature_density.png``, ``zf_plot.png``, ``top_examples.json`` and
``top_examples.html`` (``out`` defaults to ``<run>/eval``, or ``<export>_eval`` beside an imported
SAE; a previous evaluation there is replaced as a whole, never left half-written; any other existing
directory is refused). Runs, imports and outputs may be URLs (``file://``, ``gs://``, ``s3://``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxinterp.atomic import atomic_directory, check_replaceable
from jaxinterp.config import ConfigError
from jaxinterp.eval.clt_run import evaluate_clt_run
from jaxinterp.eval.contexts import (dictionary_hooks, evaluation_rows, heldout_context_ids, read_contexts,
                                     source_model_files)
from jaxinterp.eval.crosscoder import evaluate_crosscoder_run
from jaxinterp.eval.examples import (choose_latents, latent_activations, top_examples, write_examples_html,
                                     write_examples_json)
from jaxinterp.eval.holdout import evaluate_reconstruction
from jaxinterp.eval.metrics import approximate_feature_activation, code_norm, dead_fraction, dense_fraction
from jaxinterp.eval.plots import plot_feature_density, plot_zf
from jaxinterp.eval.splice import sae_edit, spliced_losses, spliced_summary, transcoder_edit, zero_ablation
from jaxinterp.eval.transcoder_set import load_transcoder_set, transcoder_set_metrics
from jaxinterp.export import is_run_directory, load_sae, loaded_from_trained, require_same_model
from jaxinterp.models import load_source_model, load_tokenizer
from jaxinterp.runs import load_trained
from jaxinterp.sae import dense_latents
from jaxinterp.store import open_store
from jaxinterp.store.paths import location
from jaxinterp.wandb_log import log_evaluation

__all__ = ["EVAL_FILES", "evaluate_run", "model_metrics"]

# What an eval output holds; eval replaces a directory only if it is an earlier one of these.
EVAL_FILES = ("eval.json", "feature_density.png", "zf_plot.png", "top_examples.json", "top_examples.html")

# Held-out tokens the ZF plot draws (and its median ratio summarises).
ZF_TOKENS = 4096


def model_metrics(model: Any, contexts, hook: str, architecture, params, arch_state, keep_first: bool,
                  batch_size: int, target_hook: str = "", progress: bool = False) -> dict[str, float]:
    """CE clean / SAE-spliced / zero-ablated, CE-loss recovered, ΔCE and KL on ``contexts`` [n, seq].

    With ``target_hook`` (a transcoder), its prediction from ``hook`` replaces ``target_hook`` and the
    baseline zeroes ``target_hook``."""
    if target_hook and target_hook != hook:
        edit, ablated = transcoder_edit(hook, target_hook, architecture, params, arch_state, keep_first), target_hook
    else:
        edit, ablated = sae_edit(hook, architecture, params, arch_state, keep_first), hook
    losses = spliced_losses(model, contexts, {"sae": edit, "zero": zero_ablation(ablated, keep_first)}, batch_size,
                             progress)
    return {**spliced_summary(losses, "sae", contexts),
            "ce_tokens_predicted": int(contexts.shape[0] * (contexts.shape[1] - 1))}


def zf_sample(architecture, params, arch_state, x: np.ndarray, y: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, float]:
    """The first :data:`ZF_TOKENS` rows of ``y``, the dense latents of those rows of ``x``, and the median ``‖f‖ / AFA`` over them (Lee et
    al. 2025's ZF view, for any architecture): AFA is ``‖y − b_dec‖`` of the reconstructed rows ``y`` (``x`` for an
    SAE), and the code is measured as if decoder rows were unit-norm (``f ⊙ ‖W_dec,i‖``)."""
    x, y = x[:ZF_TOKENS], y[:ZF_TOKENS]
    latents = np.asarray(dense_latents(architecture.encode(params, arch_state, jnp.asarray(x)),
                                       params["W_dec"].shape[0]), np.float32)
    afa = np.asarray(approximate_feature_activation(jnp.asarray(y), params["b_dec"]))
    norms = np.asarray(code_norm(jnp.asarray(latents), jnp.linalg.norm(params["W_dec"], axis=-1)))
    return y, latents, float(np.median(norms / np.maximum(afa, 1e-12)))


def evaluate_run(cfg: Mapping[str, Any], progress: bool = False) -> dict[str, Any]:
    """Evaluates an SAE; returns the metrics (also in ``eval.json``). ``progress`` shows bars with
    tokens/s for the reconstruction pass and the CE-loss passes (the CLI turns them on).

    ``cfg.run`` is a run directory (its newest checkpoint) or any SAE :func:`load_sae` reads
    (SAELens, sparsify, Gemma-Scope npz). For a run with ``cfg.store`` empty, the run's own store
    is used and only its held-out chunks (the same seeded split as training) are read; any other
    store is read from its start, and an imported SAE needs one.
    """
    trained = load_trained(cfg["run"], cfg["sae"]) if is_run_directory(cfg["run"]) else None
    if trained and trained.config["architecture"] == "crosscoder":  # per-source FVU, relative decoder norms
        return evaluate_crosscoder_run(cfg, trained, progress)
    if trained and "hook_names" in trained.config:  # a cross-layer transcoder: its own metrics
        return evaluate_clt_run(cfg, trained, progress)
    sae = loaded_from_trained(trained) if trained else load_sae(cfg["run"])
    if not (cfg["store"] or trained):
        raise ConfigError(f"config field 'store': {cfg['run']} is an imported SAE; name the store to evaluate on")
    run = location(cfg["run"])
    out = location(cfg["out"] or str(run / "eval" if trained else run.with_name(f"{run.stem}_eval")), "out")
    check_replaceable(out, "eval", EVAL_FILES)  # before any work: out may name a run, a store, anything
    train_cfg = trained.run_config["train"] if trained else {}
    store = open_store(cfg["store"] or train_cfg["store"])
    own = not cfg["store"]
    require_same_model(sae, store.manifest["model_hash"], store.manifest["model_name"], "store",
                       cfg["allow_other_model"])
    transcoder_set = []
    if cfg.get("transcoder_set"):  # .get: an eval config file from before transcoder sets
        if not cfg["ce_contexts"]:
            raise ConfigError("config field 'transcoder_set': its metrics are spliced CE losses; set ce_contexts > 0")
        transcoder_set = load_transcoder_set(cfg["transcoder_set"], cfg.get("transcoder_set_saes", ""),
                                             store.manifest["model_hash"], store.manifest["model_name"],
                                             cfg["allow_other_model"])
    hook, target = dictionary_hooks(sae, store)
    architecture, params, arch_state = sae.architecture, sae.params, sae.arch_state
    # An imported SAE says whether it was trained without BOS; SAELens' default is to exclude it.
    exclude_bos = train_cfg["exclude_bos"] if trained else bool(sae.sae.metadata.get("exclude_special_tokens", True))
    buffer, held = evaluation_rows(store, list(dict.fromkeys([hook, target])), cfg, train_cfg, own, exclude_bos)
    rows = held[hook]
    # a transcoder's metrics are of its target's rows (row-aligned with the input's)
    result, fire_count = evaluate_reconstruction(architecture, params, arch_state, rows, cfg["batch_size"],
                                                  cfg["massive_ratio"], None if target == hook else held[target],
                                                  progress)
    name = trained.name if trained else run.name
    if trained:
        result.update(
            step=trained.step,
            dead_fraction=float(dead_fraction(trained.state.tokens_since_fired, train_cfg["dead_tokens"])),
            dense_fraction=float(dense_fraction(trained.state.fire_count, trained.tokens_seen)),
        )
    result.update(
        holdout_dead_fraction=float((fire_count == 0).mean()),
        holdout_dense_fraction=float(dense_fraction(fire_count, len(rows))),
        store=store.url,
        hook_name=hook,
        **({"target_hook": target} if target != hook else {}),
        sae=name,
        format=sae.format,
        architecture=sae.sae.architecture,
    )
    zf_rows, zf_latents, result["zf_median_ratio"] = zf_sample(architecture, params, arch_state, rows, held[target])

    keep_first = buffer.drop_bos
    context_ids = heldout_context_ids(store, buffer.split.holdout if own else None)[: cfg["contexts"]]
    if not len(context_ids):
        raise ConfigError("config field 'contexts': no whole context lies in the held-out chunks; raise the run's "
                          "holdout_fraction or evaluate on another store (--config.store)")
    contexts = read_contexts(store, context_ids, [hook])
    spec, files = source_model_files(cfg, store)
    if cfg["ce_contexts"]:
        model = load_source_model(spec, backend=cfg["backend"], dtype=store.manifest["model_dtype"])
        result.update(model_metrics(model, contexts.tokens[: cfg["ce_contexts"]], hook, architecture, params,
                                    arch_state, keep_first, cfg["ce_batch_size"], target, progress))
        result["backend"] = model.backend
        if transcoder_set:
            result["transcoder_set"] = transcoder_set_metrics(model, contexts.tokens[: cfg["ce_contexts"]],
                                                              transcoder_set, keep_first, cfg["ce_batch_size"],
                                                              progress)

    requested = [int(i) for i in cfg["latents"].split(",") if i.strip()]
    latent_ids = choose_latents(requested, fire_count, cfg["n_latents"])
    values = latent_activations(architecture, params, arch_state, contexts.activations[hook], latent_ids, keep_first,
                                cfg["batch_size"])
    tokenizer, texts = load_tokenizer(files), {}

    def token_text(token: int) -> str:
        return texts.setdefault(token, tokenizer.decode([token]))

    records = top_examples(values, contexts.tokens, contexts.first_row, latent_ids, token_text,
                           cfg["examples_per_latent"])
    title = f"{name} ({result['architecture']}) at {hook}" + (f", step {trained.step}" if trained else "")

    def write(directory: Path) -> None:
        (directory / "eval.json").write_text(json.dumps(result, indent=2))
        plot_feature_density(fire_count, len(rows), directory / "feature_density.png", title)
        plot_zf(zf_rows, zf_latents, directory / "zf_plot.png", title, np.asarray(params["b_dec"]),
                np.linalg.norm(np.asarray(params["W_dec"]), axis=-1))
        if trained:  # a run that logs to Weights & Biases gets the metrics and the plot (else no-op, no import)
            log_evaluation(run, name, result, directory / "feature_density.png")
        meta = {"sae": name, "hook_name": hook, "store": store.url, "contexts": int(len(context_ids))}
        write_examples_json(directory / "top_examples.json", records, meta)
        write_examples_html(directory / "top_examples.html", records, f"Top-activating examples: {title}")

    written = atomic_directory(str(out), True, write, "eval", EVAL_FILES)
    return {**result, "written_to": str(written)}
