"""Top-activating examples: for chosen latents, the held-out tokens where each fires hardest, shown
in their context with the activating token marked (JSON for tools, HTML for people)."""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.sae import Architecture, dense_latents

__all__ = ["choose_latents", "latent_activations", "top_examples", "write_examples_html", "write_examples_json"]


def choose_latents(requested: Sequence[int], fire_count: np.ndarray, n_random: int, seed: int = 0) -> list[int]:
    """``requested`` ids (checked against ``d_sae``), or ``n_random`` latents drawn (seeded) from
    those that fired at least once, as SAEBench and Neuronpedia sample latents to inspect."""
    d_sae = len(fire_count)
    bad = [i for i in requested if not 0 <= i < d_sae]
    if bad:
        raise ValueError(f"config field 'latents': ids {bad} are outside 0..{d_sae - 1}")
    if requested:
        return list(requested)
    alive = np.flatnonzero(fire_count > 0)
    picked = np.random.default_rng(seed).choice(alive, size=min(n_random, len(alive)), replace=False)
    return sorted(int(i) for i in picked)


@partial(jax.jit, static_argnums=(0, 1))
def _selected(architecture: Architecture, d_sae: int, params, arch_state, x, ids):
    return jnp.take(dense_latents(architecture.encode(params, arch_state, x), d_sae), ids, axis=1)


def latent_activations(architecture: Architecture, params: dict[str, jax.Array], arch_state: dict[str, jax.Array],
                       activations: np.ndarray, latent_ids: Sequence[int], skip_first: bool,
                       batch_size: int = 4096) -> np.ndarray:
    """[n, seq, len(latent_ids)] activations of the chosen latents on contexts ``activations``
    [n, seq, d]; position 0 is zeroed when ``skip_first`` (BOS, which the SAE was not trained on)."""
    n, seq, d = activations.shape
    flat = activations.reshape(-1, d)
    d_sae = params["W_dec"].shape[0]
    ids = jnp.asarray(latent_ids, jnp.int32)
    parts = [np.asarray(_selected(architecture, d_sae, params, arch_state, jnp.asarray(flat[i: i + batch_size]), ids))
             for i in range(0, len(flat), batch_size)]
    values = np.concatenate(parts).reshape(n, seq, len(latent_ids))
    if skip_first:
        values[:, 0] = 0.0
    return values


def top_examples(values: np.ndarray, tokens: np.ndarray, first_row: np.ndarray, latent_ids: Sequence[int],
                 token_text: Callable[[int], str], n_examples: int = 10, before: int = 16,
                 after: int = 4) -> list[dict[str, Any]]:
    """Per latent, its ``n_examples`` strongest activations with ``before``/``after`` tokens of context.

    Each example gives the store ``row`` of the activating token, its ``context`` and ``position``,
    the window's ``tokens`` (text), their ``activations``, and ``marked`` (the activating token's
    index in the window).
    """
    records = []
    for column, latent in enumerate(latent_ids):
        acts = values[..., column]
        order = np.argsort(acts, axis=None)[::-1][:n_examples]
        examples = []
        for flat in order:
            context, position = np.unravel_index(flat, acts.shape)
            if acts[context, position] <= 0:
                break
            lo, hi = max(0, position - before), min(acts.shape[1], position + after + 1)
            examples.append({
                "row": int(first_row[context] + position), "context": int(context), "position": int(position),
                "activation": float(acts[context, position]),
                "tokens": [token_text(int(t)) for t in tokens[context, lo:hi]],
                "activations": [round(float(a), 4) for a in acts[context, lo:hi]],
                "marked": int(position - lo),
            })
        records.append({"latent": int(latent), "max_activation": float(acts.max(initial=0.0)),
                        "fire_fraction": float(np.mean(acts > 0)), "examples": examples})
    return records


def write_examples_json(path: Path, records: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Writes ``{"meta": …, "latents": records}``."""
    path.write_text(json.dumps({"meta": meta, "latents": records}, indent=1))


def _token_span(text: str, activation: float, top: float, marked: bool) -> str:
    alpha = 0.0 if top <= 0 else min(1.0, activation / top)
    style = f"background: rgba(255, 140, 0, {alpha:.2f})" + ("; outline: 2px solid #c00; font-weight: bold" if marked else "")
    return f'<span style="{style}" title="{activation:.3f}">{html.escape(text)}</span>'


def write_examples_html(path: Path, records: list[dict[str, Any]], title: str) -> None:
    """A self-contained page: per latent, its examples with tokens shaded by activation and the
    activating token outlined (hover a token for its value)."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for record in records:
        body.append(f"<h2>latent {record['latent']}</h2><p>max activation {record['max_activation']:.3f}; "
                    f"fires on {100 * record['fire_fraction']:.3f}% of the evaluated tokens</p><ol>")
        for example in record["examples"]:
            spans = "".join(_token_span(text, act, record["max_activation"], i == example["marked"])
                            for i, (text, act) in enumerate(zip(example["tokens"], example["activations"])))
            body.append(f"<li><code>{example['activation']:.3f}</code> row {example['row']}: "
                        f"<span style='white-space: pre-wrap; font-family: monospace'>{spans}</span></li>")
        body.append("</ol>")
    path.write_text("<!doctype html><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
                    "<body style='font-family: sans-serif; max-width: 70em'>" + "\n".join(body) + "</body>")
