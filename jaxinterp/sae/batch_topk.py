"""BatchTopK SAE (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders").

Training keeps the ``tokens·k`` largest activations of the whole batch (so L0 = k on average but
varies per token); a running estimate of the smallest kept activation becomes a global threshold,
and inference is a JumpReLU with that threshold (exported as ``jumprelu``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.config import Field
from jaxinterp.sae.base import (Architecture, LossContext, LossOutput, Params, dense_decode, init_dictionary, option,
                                pre_activations, skip_term, total_variance)
from jaxinterp.sae.sparse import SparseLatents, dead_top_k
from jaxinterp.sae.spec import ArchitectureSpec, standard_from_portable, standard_to_portable
from jaxinterp.sae.topk import AUX_K_COEFFICIENT, AUXK_FIELDS, topk_family_lr, aux_k_size, auxk_loss, renormalize_encoder

__all__ = ["make", "kth_largest_nonnegative", "batch_topk_activations", "dense_auxk_loss", "threshold_encode",
           "update_threshold", "GLOBAL_THRESHOLD_FIELDS", "SPEC"]

# The fields BatchTopK and Matryoshka share: AuxK's and the running threshold's rate.
GLOBAL_THRESHOLD_FIELDS = {
    **AUXK_FIELDS,
    "threshold_rate": Field(float, "BatchTopK/Matryoshka: threshold moving-average rate", minimum=0.0, maximum=1.0,
                            default=0.01),
}


def kth_largest_nonnegative(values: jax.Array, m: int) -> jax.Array:
    """The ``m``-th largest entry of a non-negative float32 array, exactly.

    Non-negative IEEE floats order like their bit patterns, so the answer is found bit by bit
    (31 counting passes) instead of a ``top_k`` with k = m over the whole batch, which XLA runs as a
    sort: ~40× slower on CPU at 1024 tokens × 2048 latents. Works unchanged on sharded arrays.
    """
    bits = jax.lax.bitcast_convert_type(values.astype(jnp.float32), jnp.int32)

    def bit_step(i, answer):
        candidate = answer | jnp.left_shift(jnp.int32(1), 30 - i)
        return jnp.where(jnp.sum(bits >= candidate) >= m, candidate, answer)

    answer = jax.lax.fori_loop(0, 31, bit_step, jnp.int32(0))
    return jax.lax.bitcast_convert_type(answer, jnp.float32)


def batch_topk_activations(pre: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """``relu(pre)`` keeping the ``tokens·k`` largest entries of the batch; and the smallest kept."""
    acts = jax.nn.relu(pre)
    kth = kth_largest_nonnegative(jax.lax.stop_gradient(acts), acts.shape[0] * k)
    return jnp.where(acts >= jnp.maximum(kth, jnp.finfo(acts.dtype).tiny), acts, 0.0), kth


def update_threshold(arch_state: dict[str, jax.Array], kth: jax.Array, rate: float) -> dict[str, jax.Array]:
    """Exponential moving average of the smallest kept activation (SAELens' ``topk_threshold``)."""
    kth = jax.lax.stop_gradient(kth)
    moved = arch_state["threshold"] + rate * (kth - arch_state["threshold"])
    return {**arch_state, "threshold": jnp.where(kth > 0, moved, arch_state["threshold"])}


def dense_auxk_loss(cfg: Mapping[str, Any], params: Params, pre: jax.Array, residual: jax.Array,
                    dead_mask: jax.Array) -> jax.Array | None:
    """AuxK for architectures with dense pre-activations: dead latents' top ``k_aux`` reconstruct
    ``residual``; ``None`` when AuxK is off."""
    k_aux = aux_k_size(cfg, params["W_dec"].shape[1], params["W_dec"].shape[0])
    if not k_aux:
        return None
    values, indices = dead_top_k(pre, dead_mask, k_aux)
    return auxk_loss(SparseLatents(jax.nn.relu(values), indices), residual, params["W_dec"], dead_mask)


def threshold_encode(params: Params, arch_state: dict[str, jax.Array], x: jax.Array,
                     transcode: bool = False) -> jax.Array:
    """Inference: a JumpReLU with the learned global threshold (what SAELens' jumprelu computes)."""
    pre = pre_activations(params, x, transcode)
    return jax.nn.relu(pre) * (pre > arch_state["threshold"])


def init_with_threshold(key: jax.Array, d_in: int, d_sae: int, sample, d_out: int | None = None, target_sample=None,
                        cfg: Mapping[str, Any] | None = None) -> tuple[Params, dict[str, jax.Array]]:
    params = init_dictionary(key, d_in, d_sae, sample, d_out, target_sample, cfg or {})
    return params, {"threshold": jnp.zeros((), jnp.float32)}


def make(cfg: Mapping[str, Any]) -> Architecture:
    """A BatchTopK architecture: ``k`` (mean L0), AuxK as TopK, ``threshold_rate`` = 0.01."""
    k, rate = cfg["k"], option(cfg, "threshold_rate", 0.01)
    aux_coefficient = option(cfg, "aux_k_coefficient", AUX_K_COEFFICIENT)
    transcode = option(cfg, "transcode", False)

    def init(key, d_in, d_sae, sample, d_out=None, target_sample=None):
        return init_with_threshold(key, d_in, d_sae, sample, d_out, target_sample, cfg)

    def encode(params: Params, arch_state, x: jax.Array) -> jax.Array:
        return threshold_encode(params, arch_state, x, transcode)

    def loss(params: Params, arch_state, x: jax.Array, y: jax.Array, ctx: LossContext):
        pre = pre_activations(params, x, transcode)
        acts, kth = batch_topk_activations(pre, k)
        x_hat = skip_term(params, x, dense_decode(params, acts))
        fvu = jnp.sum(jnp.square(y - x_hat)) / total_variance(y)
        terms, total = {"fvu": fvu}, fvu
        auxk = dense_auxk_loss(cfg, params, pre, y - x_hat, ctx.dead_mask)
        if auxk is not None:
            terms["auxk"], total = auxk, total + aux_coefficient * auxk
        return total, LossOutput(acts, terms, update_threshold(arch_state, kth, rate), x_hat)

    return Architecture("batch_topk", init, encode, dense_decode, loss, unit_norm_decoder=True,
                        **topk_family_lr(transcode))


def global_threshold_to_portable(params: Params, arch_state: dict[str, jax.Array],
                                 cfg: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The standard weights plus the global threshold broadcast to ``threshold [d_sae]`` (a JumpReLU)."""
    d_sae = params["b_enc"].shape[0]
    return {**standard_to_portable(params, arch_state, cfg),
            "threshold": np.full(d_sae, float(arch_state["threshold"]), np.float32)}


def global_threshold_from_portable(weights: Mapping[str, np.ndarray], cfg: Mapping[str, Any]
                                   ) -> tuple[Params, dict[str, jax.Array]]:
    """The inverse of :func:`global_threshold_to_portable`.

    Raises:
      ValueError: the thresholds differ between latents (then it is a ``jumprelu``).
    """
    threshold = np.asarray(weights["threshold"], np.float32)
    if threshold.size and not np.all(threshold == threshold.flat[0]):
        raise ValueError(f"{cfg['architecture']} uses one threshold for every latent, but these differ; "
                         f"treat it as architecture 'jumprelu' (sae._replace(architecture='jumprelu'))")
    params, _ = standard_from_portable(weights, cfg)
    return params, {"threshold": jnp.asarray(threshold.flat[0] if threshold.size else 0.0, jnp.float32)}


def renormalize_global_threshold(params: Params, arch_state: dict[str, jax.Array], norms: jax.Array
                                 ) -> tuple[Params, dict[str, jax.Array]]:
    """Decoder norms into the encoder; the global threshold (on pre-activations) × their mean."""
    params, arch_state = renormalize_encoder(params, arch_state, norms)
    return params, {**arch_state, "threshold": arch_state["threshold"] * jnp.mean(norms)}


SPEC = ArchitectureSpec("batch_topk", make, "jumprelu", fields=GLOBAL_THRESHOLD_FIELDS, state_axes={"threshold": ()},
                        to_portable=global_threshold_to_portable, from_portable=global_threshold_from_portable,
                        unit_norm_renormalize=renormalize_global_threshold)
