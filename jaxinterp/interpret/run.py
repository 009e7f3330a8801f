"""``jaxinterp interpret``: a dictionary's latent cache, then (stage by stage) what auto-interpretation builds on it.

Every stage writes its own output under ``out`` atomically; ``out`` itself is only their container::

    <out>/cache/<hook>/              delphi's latent cache (jaxinterp.interpret.cache), one module: the SAE's hook
    <out>/explanations.jsonl         explain: one explanation per latent (jaxinterp.interpret.stages)
    <out>/scores.jsonl, summary.*    score: detection and fuzzing of each explanation and of a shuffled control
    <out>/dashboard/, neuronpedia/   dashboard: HTML pages and Neuronpedia feature JSON of the same latents
    <out>/stages.json                what each stage after the cache was made from

A stage whose output exists is reused when it was made from the same inputs (its recorded config matches),
refused naming the first field that differs otherwise, and recomputed with ``overwrite``. So a run can add
stages later, and a killed run restarts at the stage it was in. The latents are those with ``min_examples``
activating windows (delphi's rule), ``n_latents`` of them drawn with ``seed`` unless ``latents`` names them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxinterp.config import ConfigError
from jaxinterp.distributed import barrier, is_primary
from jaxinterp.eval.contexts import dictionary_hooks
from jaxinterp.export import load_sae, loaded_from_trained
from jaxinterp.export.load import LoadedSAE, is_run_directory, require_same_model
from jaxinterp.interpret.cache import latent_cache
from jaxinterp.interpret.pipeline import run_later_stages
from jaxinterp.runs import load_trained
from jaxinterp.store import Store, open_store
from jaxinterp.store.paths import location

__all__ = ["STAGES", "interpret"]

STAGES = ("cache", "explain", "score", "dashboard")
# The cache's config.json entries that say what it was made from (delphi's own fields plus ours).
_CACHE_IDENTITY = ("jaxinterp_store", "jaxinterp_hook", "jaxinterp_dictionary", "n_tokens", "n_splits")


def interpret(cfg: Mapping[str, Any], progress: bool = False) -> dict[str, Any]:
    """Runs the stages ``cfg.stages`` names for ``cfg.run``'s dictionary over ``cfg.store``; returns a summary.

    Raises:
      ConfigError: naming the field: an unknown stage, an imported SAE without a store, a store without the
        dictionary's hook or of another width or model, a cross-layer dictionary, or an existing stage output
        made from other inputs.
    """
    stages = [stage.strip() for stage in cfg["stages"].split(",") if stage.strip()]
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown or not stages:
        raise ConfigError(f"config field 'stages': unknown stage {unknown[0] if unknown else '(none)'!r}; "
                          f"choose from {', '.join(STAGES)}")
    sae, dictionary, store = _dictionary_and_store(cfg)
    hook, _ = dictionary_hooks(sae, store, with_target=False)  # the cache encodes the input hook only
    run = location(cfg["run"])
    out = location(cfg["out"] or str(run / "interpret" if is_run_directory(cfg["run"])
                                      else run.with_name(f"{run.stem}_interpret")), "out")
    summary: dict[str, Any] = {"dictionary": dictionary, "hook": hook, "store": store.url, "out": str(out)}
    if "cache" in stages:
        summary["cache"] = _cache_stage(cfg, sae, dictionary, store, hook, out, progress)
    later = [stage for stage in stages if stage != "cache"]
    if later:
        if not (out / "cache" / hook / "config.json").exists():
            raise ConfigError(f"config field 'stages': {', '.join(later)} read the latent cache, which "
                              f"{out / 'cache' / hook} does not hold yet; run the cache stage first")
        if is_primary():  # explanations and scores run on one process for now; the others wait for its files
            summary.update(run_later_stages(cfg, later, sae, store, hook, Path(str(out)), progress))
        barrier(f"interpreted:{out}")
    return summary


def _dictionary_and_store(cfg: Mapping[str, Any]) -> tuple[LoadedSAE, str, Store]:
    """The dictionary (normalisation folded in), a string naming exactly it, and the store to read."""
    trained = load_trained(cfg["run"], cfg["sae"]) if is_run_directory(cfg["run"]) else None
    if trained and (trained.config["architecture"] == "crosscoder" or "hook_names" in trained.config):
        raise ConfigError(f"config field 'run': {cfg['run']} holds a {trained.config['architecture']} over several "
                          "hooks; interpret reads one-hook dictionaries (SAEs and transcoders)")
    sae = loaded_from_trained(trained) if trained else load_sae(cfg["run"])  # a missing path is named first
    if not (cfg["store"] or trained):
        raise ConfigError(f"config field 'store': {cfg['run']} is an imported SAE; name the store to cache")
    dictionary = (f"{location(cfg['run'])}#{trained.name}@{trained.step}" if trained
                  else f"{location(cfg['run'])} ({sae.format})")
    store = open_store(cfg["store"] or trained.run_config["train"]["store"])
    require_same_model(sae, store.manifest["model_hash"], store.manifest["model_name"], "store",
                       cfg["allow_other_model"])
    return sae, dictionary, store


def _cache_stage(cfg: Mapping[str, Any], sae: LoadedSAE, dictionary: str, store: Store, hook: str, out: Any,
                 progress: bool) -> dict[str, Any]:
    """The delphi cache at ``<out>/cache/<hook>``: reused when made from the same inputs, else written."""
    module = out / "cache" / hook
    context_size = store.manifest["context_size"]
    contexts = min((cfg["n_tokens"] or store.n_tokens) // context_size, store.n_tokens // context_size)
    wanted = {"jaxinterp_store": store.url, "jaxinterp_hook": hook, "jaxinterp_dictionary": dictionary,
              "n_tokens": contexts * context_size, "n_splits": cfg["n_splits"]}
    recorded = module / "config.json"
    reused = recorded.exists() and not cfg["overwrite"]
    if reused:
        found = json.loads(recorded.read_text())
        differs = [name for name in _CACHE_IDENTITY if found.get(name) != wanted[name]]
        if differs:
            field = {"jaxinterp_store": "store", "jaxinterp_hook": "run", "jaxinterp_dictionary": "run"}.get(
                differs[0], differs[0])
            raise ConfigError(f"config field '{field}': {module} was cached with {differs[0]}="
                              f"{found.get(differs[0])!r}, not {wanted[differs[0]]!r}; pass "
                              "--config.overwrite=true to recompute it, or choose another --config.out")
    else:
        began = time.perf_counter()
        latent_cache(sae.encode, sae.sae.d_sae, store, hook, str(out / "cache"), hook, n_tokens=cfg["n_tokens"],
                     n_splits=cfg["n_splits"], batch_contexts=cfg["batch_contexts"],
                     model_name=sae.sae.metadata.get("model_name", store.manifest["model_name"]),
                     overwrite=cfg["overwrite"], progress=progress, identity={"jaxinterp_dictionary": dictionary})
    with (module / "firing_counts.npy").open("rb") as handle:
        fired = np.load(handle)
    timing = {} if reused else {"seconds": time.perf_counter() - began,
                                "tokens_per_s": wanted["n_tokens"] / (time.perf_counter() - began)}
    return {"directory": str(module), "reused": reused, "n_tokens": wanted["n_tokens"], "d_sae": sae.sae.d_sae,
            "live_latents": int((fired > 0).sum()), **timing}
