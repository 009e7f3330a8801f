"""The stages after the cache, chained: examples from the cache, then explain, score and dashboard, each reused
when ``<out>/stages.json`` says it was made from the same inputs (see :mod:`jaxinterp.interpret.run`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from jaxinterp.config import ConfigError
from jaxinterp.eval.contexts import source_model_files
from jaxinterp.export.load import LoadedSAE
from jaxinterp.interpret.cache import LatentCacheEntries, read_latent_cache
from jaxinterp.interpret.dashboard import write_dashboard
from jaxinterp.interpret.examples import ExampleConfig, LatentExamples, latent_examples
from jaxinterp.interpret.latent_summary import firing_counts, summarize_latents
from jaxinterp.interpret.llm import LanguageModel, load_language_model
from jaxinterp.interpret.logit_effects import logit_effects, read_unembedding, token_texts
from jaxinterp.interpret.neuronpedia import write_neuronpedia
from jaxinterp.interpret.scoring import KINDS
from jaxinterp.interpret.stages import (METRICS, explain_latents, read_lines, score_latents, summarize_scores, summary_table,
                                        write_lines)
from jaxinterp.models import ModelFiles, load_tokenizer
from jaxinterp.store import Store

__all__ = ["choose_latents", "run_later_stages"]

_EXAMPLE_FIELDS = ("example_ctx_len", "min_examples", "n_examples_train", "n_examples_test", "n_non_activating",
                   "n_quantiles", "train_type")


def choose_latents(cfg: Mapping[str, Any], examples: LatentExamples) -> list[int]:
    """``cfg.latents``, each of which must have ``min_examples`` activating windows, else ``n_latents`` of those
    drawn with ``seed`` (all of them when fewer), ascending."""
    eligible = examples.latents.tolist()
    requested = [int(i) for i in cfg["latents"].split(",") if i.strip()]
    if requested:
        missing = [i for i in requested if i not in set(eligible)]
        if missing:
            raise ConfigError(f"config field 'latents': {missing[:8]} have fewer than min_examples="
                              f"{cfg['min_examples']} activating windows in the cache (or never fire)")
        return sorted(set(requested))
    if not eligible:
        raise ConfigError(f"config field 'min_examples': no latent has {cfg['min_examples']} activating windows "
                          "in the cache; cache more tokens (n_tokens) or lower min_examples")
    rng = np.random.default_rng(cfg["seed"])
    return sorted(rng.choice(eligible, min(cfg["n_latents"], len(eligible)), replace=False).tolist())


def _reusable(recorded: Mapping[str, Any], stage: str, identity: Mapping[str, Any], output: Path,
              overwrite: bool) -> bool:
    """Whether ``stage``'s ``output`` can be reused; refuses (naming the field) one made from other inputs."""
    if overwrite or not output.exists():
        return False
    if stage not in recorded:  # not ours, or its record was lost: never replaced silently
        raise FileExistsError(f"{output} exists, and {output.parent / 'stages.json'} does not say what made it; "
                              "pass --config.overwrite=true to replace it")
    found = recorded[stage]
    for field, value in identity.items():
        if found.get(field) != value:
            raise ConfigError(f"config field '{field}': {output} was made with {field}={found.get(field)!r}, not "
                              f"{value!r}; pass --config.overwrite=true to recompute it, or choose another "
                              "--config.out")
    return True


class _Models:
    """The explainer and scorer, loaded once each and only when a stage needs them (the same model serves both
    when the scorer names none of its own)."""

    def __init__(self, cfg: Mapping[str, Any]):
        self.cfg, self.loaded = cfg, {}

    def get(self, role: str) -> LanguageModel:
        cfg = self.cfg
        spec, endpoint = cfg["explainer_model"], cfg["explainer_endpoint"]
        if role == "scorer":
            spec = cfg["scorer_model"] or spec
            endpoint = cfg["scorer_endpoint"] or (endpoint if not cfg["scorer_model"] else "")
        key = (spec, endpoint)
        if key not in self.loaded:
            field = f"{role}_endpoint" if endpoint else f"{role}_model"
            self.loaded[key] = load_language_model(spec, cfg["llm_backend"], endpoint, field, cfg["max_new_tokens"],
                                                   cfg["temperature"], cfg["seed"], cfg["generation_batch"],
                                                   cfg["score_batch"], cfg["endpoint_api_key_env"])
        return self.loaded[key]


def run_later_stages(cfg: Mapping[str, Any], stages: Sequence[str], sae: LoadedSAE, store: Store, hook: str,
                     out: Path, progress: bool = False) -> dict[str, Any]:
    """Runs ``stages`` (explain, score, dashboard, in that order) on the cache at ``<out>/cache/<hook>``."""
    module = out / "cache" / hook
    cache_identity = json.loads((module / "config.json").read_text())
    entries = read_latent_cache(str(module))
    example_cfg = ExampleConfig(**{field: cfg[field] for field in _EXAMPLE_FIELDS})
    examples = latent_examples(entries, example_cfg)
    latents = choose_latents(cfg, examples)
    _, files = source_model_files(cfg, store)
    text_tokenizer = load_tokenizer(files)
    kinds = [kind.strip() for kind in cfg["scorers"].split(",") if kind.strip()]
    if not kinds or any(kind not in KINDS for kind in kinds):
        raise ConfigError(f"config field 'scorers': choose from {', '.join(KINDS)}, got {cfg['scorers']!r}")
    recorded_path = out / "stages.json"
    recorded = json.loads(recorded_path.read_text()) if recorded_path.exists() else {}
    base = {"run": cache_identity.get("jaxinterp_dictionary"), "n_tokens": cache_identity.get("n_tokens"),
            **asdict(example_cfg), "latents": latents}
    models = _Models(cfg)
    result: dict[str, Any] = {"latents": len(latents), "eligible_latents": int(len(examples.latents))}

    def record(stage: str, identity: Mapping[str, Any]) -> None:
        recorded[stage] = dict(identity)
        recorded_path.write_text(json.dumps(recorded, indent=2))

    # the explanations depend on the train examples only, not on the scorers' test and non-activating ones
    explain_identity = {**{f: v for f, v in base.items() if f not in ("n_examples_test", "n_non_activating")},
                        **{f: cfg[f] for f in ("explainer_model", "explainer_endpoint", "max_new_tokens",
                                               "temperature", "seed")}}
    if "explain" in stages:
        path = out / "explanations.jsonl"
        reused = _reusable(recorded, "explain", explain_identity, path, cfg["overwrite"])
        if not reused:
            explainer = models.get("explainer")
            start = time.perf_counter()
            write_lines(path, explain_latents(examples, latents, explainer, text_tokenizer, cfg["generation_batch"],
                                              progress))
            record("explain", explain_identity)
            result["explain_seconds"] = time.perf_counter() - start
            result["generated_tokens"] = explainer.generated.tokens
            result["generation_tokens_per_s"] = explainer.generated.rate()
        result["explain"] = {"file": str(path), "reused": reused}
    score_identity = {"explain": recorded.get("explain"), **{f: cfg[f] for f in (
        "n_examples_test", "n_non_activating", "scorer_model", "scorer_endpoint", "scorers", "seed")}}
    if "score" in stages:
        path = out / "scores.jsonl"
        if not (out / "explanations.jsonl").exists():
            raise ConfigError("config field 'stages': score needs explanations.jsonl; run the explain stage first")
        reused = _reusable(recorded, "score", score_identity, path, cfg["overwrite"])
        if not reused:
            scorer = models.get("scorer")
            explanations = {r["latent"]: r["explanation"] for r in read_lines(out / "explanations.jsonl")}
            start = time.perf_counter()
            records = score_latents(examples, explanations, scorer, text_tokenizer, kinds, cfg["seed"], progress)
            summary = {**summarize_scores(records, kinds), "scorer": scorer.name,
                       "scored_prompt_tokens": scorer.scored.tokens, "score_tokens_per_s": scorer.scored.rate(),
                       "score_seconds": time.perf_counter() - start}
            write_lines(path, records)
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
            (out / "summary.md").write_text(summary_table(summary, kinds))
            record("score", score_identity)
        result["score"] = {"file": str(path), "reused": reused,
                           **json.loads((out / "summary.json").read_text())}
    if "dashboard" in stages:
        result["dashboard"] = _dashboard(cfg, recorded, base, entries, module, latents, sae, files, text_tokenizer,
                                         out, record)
    return result


def _dashboard(cfg: Mapping[str, Any], recorded: Mapping[str, Any], base: Mapping[str, Any],
               entries: LatentCacheEntries, module: Path, latents: list[int], sae: LoadedSAE, files: ModelFiles,
               text_tokenizer: Any, out: Path, record: Callable[[str, Mapping[str, Any]], None]) -> dict[str, Any]:
    """The HTML pages and Neuronpedia JSON of the chosen latents, with the explanations and scores on disk."""
    identity = {**base, "dashboard_examples": cfg["dashboard_examples"], "explain": recorded.get("explain"),
                "score": recorded.get("score")}
    directory = out / "dashboard"
    if _reusable(recorded, "dashboard", identity, directory, cfg["overwrite"]):
        return {"directory": str(directory), "reused": True}
    summaries = summarize_latents(entries, firing_counts(str(module), entries), latents, n_examples=cfg["dashboard_examples"])
    target = sae.sae.target_hook if sae.sae.transcode else sae.sae.hook_name
    effects = logit_effects(np.asarray(sae.params["W_dec"]), read_unembedding(files), latents, hook_name=target)
    explanations = ({r["latent"]: r["explanation"] for r in read_lines(out / "explanations.jsonl")}
                    if (out / "explanations.jsonl").exists() else {})
    scores = ({r["latent"]: {kind: {m: r[kind]["true"][m] for m in METRICS if r[kind]["true"][m] is not None}
                             for kind in KINDS if kind in r}
               for r in read_lines(out / "scores.jsonl")} if (out / "scores.jsonl").exists() else {})
    token_text = token_texts(text_tokenizer)
    title = f"{base['run']} at {target}"
    write_dashboard(str(directory), summaries, token_text, effects, explanations, scores, title=title, overwrite=True)
    write_neuronpedia(str(out / "neuronpedia"), summaries, token_text, files.name, target, overwrite=True,
                      hook_name=target, effects=effects, explanations=explanations, scores=scores,
                      explainer_model=cfg["explainer_model"], scorer_model=cfg["scorer_model"] or cfg["explainer_model"])
    record("dashboard", identity)
    return {"directory": str(directory), "reused": False, "neuronpedia": str(out / "neuronpedia" / "features.json")}
