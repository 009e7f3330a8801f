"""Downstream metrics: the SAE's reconstruction spliced into the source model at its hook.

CE loss is next-token cross-entropy (nats) averaged over every predicted token of the contexts.
The reconstruction (or, for the ablation baseline, zeros) replaces the activation at every position
the SAE was trained on: with ``keep_first`` (BOS excluded from training) position 0 keeps its clean
activation, as SAELens' ``exclude_special_tokens`` and SAEBench do, since an SAE never trained on
the BOS outlier would otherwise be charged for it.

    CE-loss recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean)       (design.md §6)
    KL = mean over tokens of KL(p_clean ‖ p_spliced)

A transcoder's prediction replaces its *target* hook (e.g. ``blocks.6.hook_mlp_out``), computed in
the same forward pass from its input hook (``blocks.6.mlp.hook_in``) as the model reaches it; the
zero-ablation baseline zeroes the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxinterp.models import HookEdit
from jaxinterp.sae import Architecture
from jaxinterp.sae.base import predict

__all__ = ["ce_loss_recovered", "spliced_summary", "next_token_loss", "kl_divergence", "sae_edit", "transcoder_edit", "zero_ablation",
           "spliced_losses"]


def _next_log_probs(logits: jax.Array) -> jax.Array:
    return jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)


def _nll(log_probs: jax.Array, tokens: jax.Array) -> jax.Array:
    return -jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]


def _kl(p_log: jax.Array, q_log: jax.Array) -> jax.Array:
    return jnp.sum(jnp.exp(p_log) * (p_log - q_log), axis=-1)


def next_token_loss(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """[batch, seq − 1] cross-entropy of predicting ``tokens[:, 1:]`` from ``logits[:, :-1]``."""
    return _nll(_next_log_probs(logits), tokens)


def kl_divergence(clean_logits: jax.Array, logits: jax.Array) -> jax.Array:
    """[batch, seq − 1] KL(p_clean ‖ p) at every predicting position."""
    return _kl(_next_log_probs(clean_logits), _next_log_probs(logits))


def ce_loss_recovered(ce_clean: float, ce_spliced: float, ce_zero: float) -> float:
    """(CE_zero − CE_spliced) / (CE_zero − CE_clean): 1 = as good as the model, 0 = as bad as zeros."""
    return (ce_zero - ce_spliced) / (ce_zero - ce_clean)


def spliced_summary(losses: dict[str, float], name: str, contexts) -> dict[str, float | int]:
    """eval.json's CE/KL metrics of spliced pass ``name`` of :func:`spliced_losses` (beside ``clean`` and
    ``zero``) over ``contexts`` [n, length]."""
    ce_clean, ce_spliced, ce_zero = losses["ce_clean"], losses[f"ce_{name}"], losses["ce_zero"]
    return {
        "ce_loss_clean": ce_clean,
        "ce_loss_spliced": ce_spliced,
        "ce_loss_zero_ablated": ce_zero,
        "ce_loss_recovered": ce_loss_recovered(ce_clean, ce_spliced, ce_zero),
        "ce_loss_delta": ce_spliced - ce_clean,
        "kl_spliced": losses[f"kl_{name}"],
        "kl_zero_ablated": losses["kl_zero"],
        "ce_contexts": int(len(contexts)),
    }


def _keep_positions(x: jax.Array, new: jax.Array, keep_first: bool) -> jax.Array:
    if not keep_first:
        return new
    return jnp.where((jnp.arange(x.shape[1]) == 0)[None, :, None], x, new)


def _reconstruct(architecture: Architecture, keep_first: bool, operand, x: jax.Array) -> jax.Array:
    params, arch_state = operand
    flat = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    x_hat = architecture.decode(params, architecture.encode(params, arch_state, flat)).reshape(x.shape)
    return _keep_positions(x, x_hat, keep_first)


def _predict(architecture: Architecture, keep_first: bool, operand, y: jax.Array, x: jax.Array) -> jax.Array:
    params, arch_state = operand
    flat = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    y_hat = predict(architecture, params, arch_state, flat).reshape(y.shape)
    return _keep_positions(y, y_hat, keep_first)


def _zeros(keep_first: bool, operand, x: jax.Array) -> jax.Array:
    return _keep_positions(x, jnp.zeros_like(x), keep_first)


def sae_edit(hook: str, architecture: Architecture, params: dict[str, jax.Array], arch_state: dict[str, jax.Array],
             keep_first: bool) -> HookEdit:
    """Replaces ``hook``'s activation by the SAE's reconstruction (``params`` act on raw activations)."""
    return HookEdit(hook, partial(_reconstruct, architecture, keep_first), (params, arch_state))


def transcoder_edit(hook: str, target_hook: str, architecture: Architecture, params: dict[str, jax.Array],
                    arch_state: dict[str, jax.Array], keep_first: bool) -> HookEdit:
    """Replaces ``target_hook``'s activation by the transcoder's prediction from ``hook``'s activation in the
    same pass (``params`` map raw activations to raw activations; the skip term included)."""
    return HookEdit(target_hook, partial(_predict, architecture, keep_first), (params, arch_state), source=hook)


def zero_ablation(hook: str, keep_first: bool) -> HookEdit:
    """Replaces ``hook``'s activation by zeros (the CE-loss-recovered baseline)."""
    return HookEdit(hook, partial(_zeros, keep_first))


@jax.jit
def _clean_sums(clean_logits, tokens):
    """The clean log-probabilities (reused for every edit's KL) and the clean CE sum."""
    log_probs = _next_log_probs(clean_logits)
    return log_probs, jnp.sum(_nll(log_probs, tokens))


@jax.jit
def _edited_sums(clean_log_probs, logits, tokens):
    log_probs = _next_log_probs(logits)
    return jnp.sum(_nll(log_probs, tokens)), jnp.sum(_kl(clean_log_probs, log_probs))


def spliced_losses(model: Any, contexts: np.ndarray, edits: dict[str, HookEdit | Sequence[HookEdit]],
                   batch_size: int = 4, progress: bool = False) -> dict[str, float]:
    """CE loss of ``model`` on ``contexts`` [n, seq] clean and under each named edit, with KL to clean.

    An edit may be several :class:`HookEdit` applied in the same pass (a transcoder set).

    ``model`` is either backend (``logits(tokens, edit)``). Returns ``ce_clean`` and, per edit
    name, ``ce_<name>`` and ``kl_<name>`` (means over the ``n·(seq − 1)`` predicted tokens).
    ``progress`` shows a bar with tokens/s (tokens of ``contexts``, each run once clean and once per edit).
    """
    sums = {"ce_clean": 0.0, **{f"{kind}_{name}": 0.0 for name in edits for kind in ("ce", "kl")}}
    bar = tqdm(total=int(np.prod(contexts.shape)), unit="tok", unit_scale=True, desc="ce-loss", disable=not progress)
    for first in range(0, len(contexts), batch_size):
        tokens = np.asarray(contexts[first: first + batch_size], np.int32)
        clean_log_probs, ce_clean = _clean_sums(model.logits(tokens), tokens)
        sums["ce_clean"] += float(ce_clean)
        for name, edit in edits.items():
            ce, kl = _edited_sums(clean_log_probs, model.logits(tokens, edit), tokens)
            sums[f"ce_{name}"] += float(ce)
            sums[f"kl_{name}"] += float(kl)
        bar.update(tokens.size)
    bar.close()
    n_predicted = contexts.shape[0] * (contexts.shape[1] - 1)
    return {key: value / n_predicted for key, value in sums.items()}
