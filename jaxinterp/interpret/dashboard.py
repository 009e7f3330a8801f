"""Feature dashboards: static, self-contained HTML (inline CSS and SVG, no scripts, no network), one page per
latent plus an index.

::

    <out>/index.html               a table of the latents, sorted by firing frequency or a score, each linked
    <out>/latents/<latent>.html    its top-activating contexts (each token shaded by its activation relative to
                                   the latent's max, the value in its tooltip), its activation histogram, its
                                   top positive and negative logit effects, its firing frequency, and its
                                   explanation and scores when given

Explanations and scores are plain inputs (``{latent: "text"}``, ``{latent: {"detection": {"accuracy": …},
"fuzzing": {…}}}``), whatever produced them. The directory is written atomically and never replaces anything
but an earlier dashboard (and that only with ``overwrite``).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxinterp.atomic import atomic_directory
from jaxinterp.config import ConfigError
from jaxinterp.interpret.latent_summary import Example, LatentSummary, Scores
from jaxinterp.interpret.logit_effects import LogitEffects

__all__ = ["index_page", "latent_page", "shade", "write_dashboard"]

KIND = "dashboard"
SHADE_RGB = (255, 140, 0)

CSS = """
body { font-family: system-ui, sans-serif; max-width: 72em; margin: 1.5em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: 0.2em 0.7em; text-align: left; border-bottom: 1px solid #eee; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.example { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.9; margin: 0.3em 0 0.8em; }
.example .t { border-radius: 2px; } .example .max { outline: 1.5px solid #c00; }
.act { color: #666; font-size: 0.85em; font-family: ui-monospace, monospace; }
.logits { display: flex; gap: 3em; } .logits td.tok { font-family: ui-monospace, monospace; white-space: pre; }
.pos { color: #1a7f37; } .neg { color: #cf222e; }
.explanation { font-size: 1.1em; background: #f6f8fa; padding: 0.6em 1em; border-left: 4px solid #f08c00; }
nav a { margin-right: 1em; }
"""


def shade(value: float, max_activation: float) -> float:
    """A token's background opacity: its activation over the latent's max, in [0, 1]."""
    return 0.0 if max_activation <= 0 else float(np.clip(value / max_activation, 0.0, 1.0))


def _page(title: str, body: str) -> str:
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def _shown(text: str) -> str:
    """A token's text, escaped, with newlines and tabs made visible (they would otherwise break the layout)."""
    return html.escape(text).replace("\n", "↵").replace("\t", "⇥")


def _example_html(example: Example, max_activation: float, token_text: Callable[[int], str], before: int,
                  after: int) -> str:
    lo, hi = max(0, example.position - before), min(len(example.tokens), example.position + after + 1)
    spans = []
    for index in range(lo, hi):
        value = float(example.values[index])
        alpha = shade(value, max_activation)
        marked = " max" if index == example.position else ""
        text = _shown(token_text(int(example.tokens[index])))
        spans.append(f"<span class='t{marked}' style='background: rgba({SHADE_RGB[0]}, {SHADE_RGB[1]}, "
                     f"{SHADE_RGB[2]}, {alpha:.3f})' title='{value:.4g}'>{text}</span>")
    return (f"<div class='act'>{example.activation:.4g} (context {example.context}, token {example.position})</div>"
            f"<div class='example'>{''.join(spans)}</div>")


def _histogram_svg(summary: LatentSummary, width: int = 480, height: int = 140) -> str:
    """Bars of the latent's non-zero activation counts, inline SVG (hover a bar for its range and count)."""
    heights = summary.histogram_heights
    if not heights.sum():
        return "<p>never fired on the cached tokens</p>"
    pad, bar = 24, (width - 2) / len(heights)
    top = heights.max()
    bars = []
    for i, count in enumerate(heights.tolist()):
        h = (height - pad) * count / top
        lo, hi = summary.histogram_edges[i], summary.histogram_edges[i + 1]
        bars.append(f"<rect x='{1 + i * bar:.1f}' y='{height - pad - h:.1f}' width='{max(bar - 1, 0.5):.1f}' "
                    f"height='{h:.1f}' fill='rgb{SHADE_RGB}'><title>{lo:.3g}–{hi:.3g}: {count}</title></rect>")
    labels = (f"<text x='1' y='{height - 6}' font-size='11'>{summary.histogram_edges[0]:.3g}</text>"
              f"<text x='{width - 1}' y='{height - 6}' font-size='11' text-anchor='end'>"
              f"{summary.histogram_edges[-1]:.3g}</text>"
              f"<text x='{width / 2}' y='{height - 6}' font-size='11' text-anchor='middle'>activation</text>")
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
            f"aria-label='activation histogram'><line x1='0' y1='{height - pad}' x2='{width}' y2='{height - pad}' "
            f"stroke='#999'/>{''.join(bars)}{labels}</svg>")


def _logits_html(effects: LogitEffects, latent: int, token_text: Callable[[int], str]) -> str:
    row = effects.row(latent)

    def table(css: str, heading: str, ids: np.ndarray, values: np.ndarray) -> str:
        cells = "".join(f"<tr><td class='tok'>{_shown(token_text(int(t)))}</td><td class='num {css}'>{v:+.4f}</td></tr>"
                        for t, v in zip(ids.tolist(), values.tolist()))
        return f"<table><tr><th colspan='2' class='{css}'>{heading}</th></tr>{cells}</table>"

    return ("<div class='logits'>" + table("pos", "positive logits", effects.top_ids[row], effects.top_values[row])
            + table("neg", "negative logits", effects.bottom_ids[row], effects.bottom_values[row]) + "</div>")


def _scores_html(scores: Mapping[str, Mapping[str, float]]) -> str:
    rows = "".join(f"<tr><td>{html.escape(scorer)}</td><td>{html.escape(metric)}</td><td class='num'>{value:.4g}</td>"
                   "</tr>" for scorer, metrics in scores.items() for metric, value in metrics.items()
                   if isinstance(value, (int, float)))
    return f"<table><tr><th>scorer</th><th>metric</th><th>value</th></tr>{rows}</table>"


def latent_page(summary: LatentSummary, token_text: Callable[[int], str], effects: LogitEffects | None = None,
                explanation: str | None = None, scores: Mapping[str, Mapping[str, float]] | None = None,
                title: str = "", neighbours: tuple[int | None, int | None] = (None, None), before: int = 24,
                after: int = 8) -> str:
    """One latent's page (links are relative to ``<out>/latents/``)."""
    previous, following = neighbours
    nav = ["<a href='../index.html'>index</a>"]
    if previous is not None:
        nav.append(f"<a href='{previous}.html'>← latent {previous}</a>")
    if following is not None:
        nav.append(f"<a href='{following}.html'>latent {following} →</a>")
    body = [f"<nav>{''.join(nav)}</nav>", f"<h1>{html.escape(title)} latent {summary.latent}</h1>"]
    if explanation is not None:
        body.append(f"<p class='explanation'>{html.escape(explanation)}</p>")
    body.append(f"<table><tr><td>firing frequency</td><td class='num'>{summary.frequency:.4%}</td></tr>"
                f"<tr><td>tokens fired on</td><td class='num'>{summary.fired:,} of {summary.n_tokens:,}</td></tr>"
                f"<tr><td>max activation</td><td class='num'>{summary.max_activation:.4g}</td></tr></table>")
    if scores:
        body.append("<h2>scores</h2>" + _scores_html(scores))
    body.append("<h2>activation histogram</h2>" + _histogram_svg(summary))
    if effects is not None:
        body.append("<h2>logit effects (W_dec · W_U)</h2>" + _logits_html(effects, summary.latent, token_text))
    body.append(f"<h2>top activations ({len(summary.examples)} contexts)</h2>")
    body.extend(_example_html(example, summary.max_activation, token_text, before, after)
                for example in summary.examples)
    return _page(f"{title} latent {summary.latent}".strip(), "\n".join(body))


def _sort_key(sort_by: str, scores: Scores) -> Callable[[LatentSummary], tuple]:
    if sort_by == "frequency":
        return lambda s: (-s.frequency, s.latent)
    if sort_by == "latent":
        return lambda s: (s.latent,)
    scorer, _, metric = sort_by.partition(".")
    if not metric:
        raise ConfigError(f"config field 'sort_by': {sort_by!r} is not 'frequency', 'latent' or '<scorer>.<metric>'")

    def key(summary: LatentSummary) -> tuple:
        value = scores.get(summary.latent, {}).get(scorer, {}).get(metric)
        return (value is None, -(value or 0.0), summary.latent)  # unscored latents last

    return key


def index_page(summaries: Sequence[LatentSummary], explanations: Mapping[int, str], scores: Scores,
               title: str = "", sort_by: str = "frequency") -> str:
    """The index: one row per latent, linked to its page, sorted by ``sort_by`` (``frequency``, ``latent`` or
    ``<scorer>.<metric>``, e.g. ``detection.accuracy``; descending)."""
    columns = sorted({(scorer, metric) for per_latent in scores.values() for scorer, metrics in per_latent.items()
                      for metric, value in metrics.items() if isinstance(value, (int, float))})
    head = "".join(f"<th>{html.escape(f'{s}.{m}')}</th>" for s, m in columns)
    rows = []
    for summary in sorted(summaries, key=_sort_key(sort_by, scores)):
        latent_scores = scores.get(summary.latent, {})
        cells = "".join(f"<td class='num'>{latent_scores[s][m]:.3g}</td>" if m in latent_scores.get(s, {})
                        else "<td></td>" for s, m in columns)
        rows.append(f"<tr><td><a href='latents/{summary.latent}.html'>{summary.latent}</a></td>"
                    f"<td class='num'>{summary.frequency:.4%}</td><td class='num'>{summary.max_activation:.4g}</td>"
                    f"{cells}<td>{html.escape(explanations.get(summary.latent, ''))}</td></tr>")
    body = (f"<h1>{html.escape(title)} latents</h1><p>{len(summaries)} latents, sorted by {html.escape(sort_by)}</p>"
            f"<table><tr><th>latent</th><th>frequency</th><th>max activation</th>{head}<th>explanation</th></tr>"
            + "\n".join(rows) + "</table>")
    return _page(f"{title} latents".strip(), body)


def write_dashboard(out: str, summaries: Sequence[LatentSummary], token_text: Callable[[int], str],
                    effects: LogitEffects | None = None, explanations: Mapping[int, str] | None = None,
                    scores: Scores | None = None, title: str = "", sort_by: str = "frequency",
                    overwrite: bool = False) -> Path:
    """Writes ``<out>/index.html`` and ``<out>/latents/<latent>.html`` for every summary; returns ``out``.

    Args:
      token_text: token id → its text (e.g. :func:`~jaxinterp.interpret.logit_effects.token_texts`).
      effects: logit effects covering every summarised latent, or ``None`` to leave them out.
      explanations, scores: per latent, optional (latents without one simply show none).
      sort_by: the index's order (see :func:`index_page`).

    Raises:
      FileExistsError: ``out`` exists and ``overwrite`` is false.
      ConfigError: an unknown ``sort_by``.
    """
    explanations, scores = dict(explanations or {}), dict(scores or {})
    _sort_key(sort_by, scores)  # refuse a bad sort_by before anything is written
    ordered = sorted(summaries, key=lambda s: s.latent)
    ids = [s.latent for s in ordered]

    def write(directory: Path) -> None:
        pages = directory / "latents"
        pages.mkdir()
        for i, summary in enumerate(ordered):
            neighbours = (ids[i - 1] if i else None, ids[i + 1] if i + 1 < len(ids) else None)
            (pages / f"{summary.latent}.html").write_text(latent_page(
                summary, token_text, effects, explanations.get(summary.latent), scores.get(summary.latent), title,
                neighbours), encoding="utf-8")
        (directory / "index.html").write_text(index_page(ordered, explanations, scores, title, sort_by),
                                              encoding="utf-8")

    atomic_directory(out, overwrite, write, KIND, ("index.html", "latents"))
    return Path(out)
