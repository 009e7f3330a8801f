"""The dashboards' per-latent data as Neuronpedia feature JSON.

Field names are Neuronpedia's own, from its database schema (github.com/hijohnnylin/neuronpedia,
``apps/webapp/prisma/schema.prisma`` at commit 008d5040ab97abd5c44d92d190b30034ad7a6e97): a feature is a
``Neuron`` row (``modelId``, ``layer`` — the source id, e.g. ``6-res-jb`` — and ``index``, both strings;
``maxActApprox``, ``hookName``, ``pos_str``/``pos_values``, ``neg_str``/``neg_values``, ``frac_nonzero``,
``freq_hist_data_bar_heights``/``freq_hist_data_bar_values``), with its relations ``activations``
(``Activation``: ``tokens``, ``values``, ``maxValue``, ``maxValueTokenIndex``, ``minValue``, ``dataIndex``) and
``explanations`` (``Explanation``: ``description``, ``typeName``, ``explanationModelName``, and ``scores``:
``ExplanationScore`` ``value``, ``explanationScoreTypeName``, ``explanationScoreModelName``, ``jsonDetails``)
nested as its feature API returns them. The histogram's two arrays are parallel (bin midpoints and counts),
which Neuronpedia's feature page requires. ``<out>/features.json`` is a list of such features.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxinterp.atomic import atomic_directory
from jaxinterp.interpret.latent_summary import LatentSummary, Scores
from jaxinterp.interpret.logit_effects import LogitEffects

__all__ = ["FEATURES_FILE", "neuronpedia_feature", "neuronpedia_features", "write_neuronpedia"]

FEATURES_FILE = "features.json"
KIND = "neuronpedia"


def _scores(latent: int, scores: Mapping[str, Mapping[str, float]], score_metric: str,
            scorer_model: str) -> list[dict[str, Any]]:
    records = []
    for scorer, metrics in scores.items():
        if score_metric not in metrics:
            raise ValueError(f"config field 'score_metric': latent {latent}'s {scorer} scores have no "
                             f"{score_metric!r} (they have {', '.join(metrics)})")
        records.append({"value": float(metrics[score_metric]), "explanationScoreTypeName": scorer,
                        "explanationScoreModelName": scorer_model, "jsonDetails": json.dumps(dict(metrics))})
    return records


def neuronpedia_feature(summary: LatentSummary, token_text: Callable[[int], str], model_id: str, layer: str,
                        hook_name: str = "", effects: LogitEffects | None = None, explanation: str | None = None,
                        scores: Mapping[str, Mapping[str, float]] | None = None, score_metric: str = "accuracy",
                        explainer_model: str = "", scorer_model: str = "", explanation_type: str = "") -> dict:
    """One latent as a Neuronpedia feature (see the module docstring for the fields and their source).

    Raises:
      ValueError: scores without an explanation to attach them to, or without ``score_metric``.
    """
    key = {"modelId": model_id, "layer": layer, "index": str(summary.latent)}
    feature: dict[str, Any] = {**key, "hookName": hook_name, "maxActApprox": summary.max_activation,
                               "frac_nonzero": summary.frequency,
                               "freq_hist_data_bar_heights": [float(h) for h in summary.histogram_heights],
                               "freq_hist_data_bar_values": [float(v) for v in summary.histogram_centers],
                               "pos_str": [], "pos_values": [], "neg_str": [], "neg_values": []}
    if effects is not None:
        row = effects.row(summary.latent)
        feature.update(pos_str=[token_text(int(t)) for t in effects.top_ids[row]],
                       pos_values=[float(v) for v in effects.top_values[row]],
                       neg_str=[token_text(int(t)) for t in effects.bottom_ids[row]],
                       neg_values=[float(v) for v in effects.bottom_values[row]])
    feature["activations"] = [{**key, "dataIndex": str(example.context),
                               "tokens": [token_text(int(t)) for t in example.tokens],
                               "values": [float(v) for v in example.values], "maxValue": example.activation,
                               "maxValueTokenIndex": example.position, "minValue": float(example.values.min())}
                              for example in summary.examples]
    if scores and explanation is None:
        raise ValueError(f"latent {summary.latent} has scores but no explanation to attach them to")
    feature["explanations"] = [] if explanation is None else [{
        **key, "description": explanation, "typeName": explanation_type, "explanationModelName": explainer_model,
        "scores": _scores(summary.latent, scores or {}, score_metric, scorer_model)}]
    return feature


def neuronpedia_features(summaries: Sequence[LatentSummary], token_text: Callable[[int], str], model_id: str,
                         layer: str, hook_name: str = "", effects: LogitEffects | None = None,
                         explanations: Mapping[int, str] | None = None, scores: Scores | None = None,
                         **names: str) -> list[dict]:
    """:func:`neuronpedia_feature` of every summary, by latent id (``names``: ``score_metric``,
    ``explainer_model``, ``scorer_model``, ``explanation_type``)."""
    explanations, scores = explanations or {}, scores or {}
    return [neuronpedia_feature(summary, token_text, model_id, layer, hook_name, effects,
                                explanations.get(summary.latent), scores.get(summary.latent), **names)
            for summary in sorted(summaries, key=lambda s: s.latent)]


def write_neuronpedia(out: str, summaries: Sequence[LatentSummary], token_text: Callable[[int], str], model_id: str,
                      layer: str, overwrite: bool = False, **fields: Any) -> Path:
    """Writes ``<out>/features.json`` (:func:`neuronpedia_features`; ``fields`` are its keyword arguments),
    atomically; returns its path.

    Raises:
      FileExistsError: ``out`` exists and ``overwrite`` is false.
    """
    features = neuronpedia_features(summaries, token_text, model_id, layer, **fields)  # errors before any write

    def write(directory: Path) -> None:
        (directory / FEATURES_FILE).write_text(json.dumps(features, ensure_ascii=False), encoding="utf-8")

    atomic_directory(out, overwrite, write, KIND, (FEATURES_FILE,))
    return Path(out) / FEATURES_FILE
