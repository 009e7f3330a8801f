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

from jaxinterp.sae.base import Architecture, LossContext, LossOutput, Params, dense_decode, init_tied, option, total_variance
from jaxinterp.sae.sparse import SparseLatents, top_k
from jaxinterp.sae.topk import aux_k_size, auxk_loss

__all__ = ["make", "batch_topk_activations", "dead_latent_selection", "update_threshold"]


def batch_topk_activations(pre: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """``relu(pre)`` keeping the ``tokens·k`` largest entries of the batch; and the smallest kept."""
    acts = jax.nn.relu(pre)
    kth = jax.lax.top_k(acts.reshape(-1), acts.shape[0] * k)[0][-1]
    return jnp.where(acts >= jnp.maximum(kth, jnp.finfo(acts.dtype).tiny), acts, 0.0), kth


def update_threshold(arch_state: dict[str, jax.Array], kth: jax.Array, rate: float) -> dict[str, jax.Array]:
    """Exponential moving average of the smallest kept activation (SAELens' ``topk_threshold``)."""
    kth = jax.lax.stop_gradient(kth)
    moved = arch_state["threshold"] + rate * (kth - arch_state["threshold"])
    return {**arch_state, "threshold": jnp.where(kth > 0, moved, arch_state["threshold"])}


def dead_latent_selection(pre: jax.Array, dead_mask: jax.Array, k_aux: int) -> SparseLatents:
    """AuxK's selection for dense architectures: the top ``k_aux`` pre-activations of dead latents."""
    values, indices = top_k(jnp.where(dead_mask, pre, -jnp.inf), k_aux)
    return SparseLatents(jax.nn.relu(jnp.where(jnp.isfinite(values), values, 0.0)), indices)


def make(cfg: Mapping[str, Any]) -> Architecture:
    """A BatchTopK architecture: ``k`` (mean L0), AuxK as TopK, ``threshold_rate`` = 0.01."""
    k, rate, aux_coefficient = cfg["k"], option(cfg, "threshold_rate", 0.01), option(cfg, "aux_k_coefficient", 1 / 32)

    def init(key, d_in, d_sae, sample):
        return init_tied(key, d_in, d_sae, sample), {"threshold": jnp.zeros((), jnp.float32)}

    def encode(params: Params, arch_state, x: jax.Array) -> jax.Array:
        pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
        return jax.nn.relu(pre) * (pre > arch_state["threshold"])

    def loss(params: Params, arch_state, x: jax.Array, ctx: LossContext):
        pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
        acts, kth = batch_topk_activations(pre, k)
        x_hat = dense_decode(params, acts)
        fvu = jnp.sum(jnp.square(x - x_hat)) / total_variance(x)
        terms, total = {"fvu": fvu}, fvu
        k_aux = aux_k_size(cfg, params["W_dec"].shape[1], params["W_dec"].shape[0])
        if k_aux:
            aux = dead_latent_selection(pre, ctx.dead_mask, k_aux)
            terms["auxk"] = auxk_loss(aux, x - x_hat, params["W_dec"], ctx.dead_mask)
            total = total + aux_coefficient * terms["auxk"]
        return total, LossOutput(acts, terms, update_threshold(arch_state, kth, rate))

    return Architecture("batch_topk", init, encode, dense_decode, loss, unit_norm_decoder=True)
