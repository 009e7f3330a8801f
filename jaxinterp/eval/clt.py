"""A cross-layer transcoder's eval metrics: per-layer holdout sums and the CLT spliced into the source model.

Holdout, per target layer L' and per source layer ℓ (:func:`clt_layer_metrics`): FVU of ``y_L'`` against its own
variance, L0 of layer ℓ's encoder (its active latents per token) and the fraction of layer ℓ's latents that never
fire (the all-layer FVU, L0 and dead fraction are :func:`jaxinterp.eval.holdout.evaluate_reconstruction`'s).

Spliced (:func:`clt_edits`): the replacement model of circuit tracing (Ameisen et al. 2025, "Circuit Tracing",
§ Building an Interpretable Replacement Model). In one forward pass, at each covered layer L' in order, the MLP
output ``blocks.L'.hook_mlp_out`` is replaced by

    ŷ_L' = Σ_{ℓ ≤ L'} a_ℓ W_dec[ℓ→L'] + b_dec[L'],    a_ℓ = σ(x_ℓ W_enc[ℓ] + b_enc[ℓ])

where every ``x_ℓ`` is ``blocks.ℓ.mlp.hook_in`` as *this* pass computes it (downstream of the replacements at
layers before ℓ). ŷ_L' depends only on the inputs of layers ≤ L', so each target is one :class:`HookEdit` whose
sources are those inputs; every target re-encodes its sources (L(L+1)/2 layer encodes per pass, where a
latent cache would need L): exact, one pass, either backend. The baseline zeroes every covered MLP output.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.eval.splice import _keep_positions, spliced_losses, spliced_summary, zero_ablation
from jaxinterp.models import HookEdit
from jaxinterp.sae import Architecture
from jaxinterp.sae.clt import decoder_key, layer_count

__all__ = ["clt_edits", "clt_layer_metrics", "clt_spliced_metrics", "layer_encoder"]

Params = dict[str, jax.Array]


def layer_encoder(params: Params, layer: int) -> Params:
    """Layer ``layer``'s encoder alone, as a one-layer CLT's params (``W_enc [1, d_in, n]``, ``b_enc [1, n]``,
    JumpReLU's ``log_threshold [1, n]``): what the ``clt`` architecture's ``encode`` reads for that layer."""
    keys = [key for key in ("W_enc", "b_enc", "log_threshold") if key in params]
    return {key: params[key][layer: layer + 1] for key in keys}


def _latents_per_layer(latents_flat: jax.Array, layers: int) -> jax.Array:
    """The ``clt`` architecture's flat ``[tokens, n·L]`` (id ``i·L + ℓ``) → ``[tokens, L, n]``."""
    return jnp.swapaxes(latents_flat.reshape(latents_flat.shape[0], -1, layers), 1, 2)


@partial(jax.jit, static_argnums=0)
def _layer_sums(architecture: Architecture, params: Params, arch_state: Params, x: jax.Array, y: jax.Array,
                mean: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One batch's ``[L]`` squared errors ``Σ‖y_L' − ŷ_L'‖²`` and variances ``Σ‖y_L' − mean_L'‖²``, and ``[L, n]``
    fires (tokens on which each latent of each layer is non-zero)."""
    latents_flat = architecture.encode(params, arch_state, x)
    y_hat = architecture.decode(params, latents_flat)
    latents = _latents_per_layer(latents_flat, layer_count(params))
    return (jnp.sum(jnp.square(y - y_hat), axis=(0, 2)), jnp.sum(jnp.square(y - mean), axis=(0, 2)),
            jnp.sum(latents > 0, axis=0, dtype=jnp.float32))


def clt_layer_metrics(architecture: Architecture, params: Params, arch_state: Params, x: np.ndarray, y: np.ndarray,
                      batch_size: int = 4096) -> tuple[dict[str, list[float]], np.ndarray]:
    """Per-layer metrics of inputs ``x [tokens, L, d_in]`` and targets ``y [tokens, L, d_out]`` (row-aligned).

    Returns ``({fvu_per_layer, explained_variance_per_layer, l0_per_layer, holdout_dead_fraction_per_layer},
    fire_count [L, n])``: target layer L''s FVU ``Σ_t ‖y_L' − ŷ_L'‖² / Σ_t ‖y_L' − ȳ_L'‖²`` about its holdout mean
    (so a quiet layer is not hidden by a loud one, as in the all-layer FVU), source layer ℓ's mean active latents
    per token, and the fraction of its ``n`` latents that fire on no token. Sums accumulate over batches.
    """
    if len(x) == 0:
        raise ValueError("no holdout activations to evaluate")
    mean = jnp.asarray(y.mean(axis=0, dtype=np.float64), jnp.float32)
    layers, n = params["b_enc"].shape
    residual, total, fire_count = np.zeros(layers), np.zeros(layers), np.zeros((layers, n))
    for first in range(0, len(x), batch_size):
        rows = slice(first, first + batch_size)
        sums = _layer_sums(architecture, params, arch_state, jnp.asarray(x[rows]), jnp.asarray(y[rows]), mean)
        residual, total = residual + np.asarray(sums[0], np.float64), total + np.asarray(sums[1], np.float64)
        fire_count += np.asarray(sums[2], np.float64)
    fvu = residual / total
    return {"fvu_per_layer": fvu.tolist(), "explained_variance_per_layer": (1.0 - fvu).tolist(),
            "l0_per_layer": (fire_count.sum(axis=1) / len(x)).tolist(),
            "holdout_dead_fraction_per_layer": (fire_count == 0).mean(axis=1).tolist()}, fire_count


def _target_prediction(architecture: Architecture, keep_first: bool, operand, y: jax.Array, *xs: jax.Array
                       ) -> jax.Array:
    """ŷ of one target from the inputs ``xs`` [batch, seq, d_in] of its source layers 0..L' (in order)."""
    encoders, decoders, b_dec, arch_state = operand
    y_hat = b_dec
    for encoder, W_dec, x in zip(encoders, decoders, xs, strict=True):
        rows = x.reshape(-1, 1, x.shape[-1]).astype(jnp.float32)  # a one-layer CLT's [tokens, 1, d_in]
        y_hat = y_hat + architecture.encode(encoder, arch_state, rows) @ W_dec
    return _keep_positions(y, y_hat.reshape(y.shape), keep_first)


def clt_edits(architecture: Architecture, params: Params, arch_state: Params, input_hooks: Sequence[str],
              target_hooks: Sequence[str], keep_first: bool) -> list[HookEdit]:
    """One edit per target layer L' (in layer order): ``target_hooks[L']`` replaced by ŷ_L' computed from
    ``input_hooks[:L' + 1]`` in the same pass (``params`` act on raw activations; ``keep_first``: position 0
    keeps its clean activation, as for every spliced SAE, :mod:`jaxinterp.eval.splice`)."""
    layers = layer_count(params)
    if len(input_hooks) != layers or len(target_hooks) != layers:
        raise ValueError(f"clt_edits: {len(input_hooks)} input and {len(target_hooks)} target hooks for a "
                         f"{layers}-layer CLT")
    replace = partial(_target_prediction, architecture, keep_first)  # one function: one compile per source count
    encoders = [layer_encoder(params, source) for source in range(layers)]
    edits = []
    for target in range(layers):
        decoders = [params[decoder_key(source)][:, target - source] for source in range(target + 1)]
        operand = (encoders[: target + 1], decoders, params["b_dec"][target], arch_state)
        edits.append(HookEdit(target_hooks[target], replace, operand, source=tuple(input_hooks[: target + 1])))
    return edits


def clt_spliced_metrics(model: Any, contexts: np.ndarray, architecture: Architecture, params: Params,
                        arch_state: Params, input_hooks: Sequence[str], target_hooks: Sequence[str],
                        keep_first: bool, batch_size: int, progress: bool = False) -> dict[str, float | int]:
    """CE clean / CLT-spliced / every-target-zeroed, CE-loss recovered, ΔCE and KL on ``contexts`` [n, seq]:
    :func:`jaxinterp.eval.splice.spliced_summary` of the whole replacement at once."""
    edits = clt_edits(architecture, params, arch_state, input_hooks, target_hooks, keep_first)
    zeros = [zero_ablation(hook, keep_first) for hook in target_hooks]
    losses = spliced_losses(model, contexts, {"clt": edits, "zero": zeros}, batch_size, progress)
    return {**spliced_summary(losses, "clt", contexts),
            "ce_tokens_predicted": int(contexts.shape[0] * (contexts.shape[1] - 1))}
