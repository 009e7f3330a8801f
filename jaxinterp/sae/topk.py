"""TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"), with AuxK and
optional Multi-TopK.

Latents are kept sparse as ``(values, indices)`` [tokens, k]; encoder and decoder gradients touch
only the selected latents (:mod:`jaxinterp.sae.sparse`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxinterp.config import Field
from jaxinterp.sae.base import (Architecture, LossContext, LossOutput, Params, init_dictionary, option, skip_term,
                                total_variance)
from jaxinterp.sae.sparse import SparseLatents, dead_decode, sparse_decode, topk_encode
from jaxinterp.sae.spec import ArchitectureSpec

__all__ = ["make", "auxk_loss", "aux_k_size", "AUX_K", "AUX_K_COEFFICIENT", "AUXK_FIELDS", "SPEC", "TOPK_BASE_LR",
           "TOPK_TRANSCODER_BASE_LR", "TRANSCODER_LR_BATCH", "topk_family_lr"]

# 10x Gao et al.'s 2e-4 (which suits 10⁵ steps): for runs of 10²–10³ steps it measured best on
# SmolLM2 and beats sparsify's FVU from 128 steps on (bench/RESULTS.md, "Learning rate").
TOPK_BASE_LR = 2e-3

# A TopK-family transcoder's default: 4x the SAE's at batch 1,024, scaled by sqrt(batch / 1,024).
# On SmolLM2 (layers 4/12/20, batches 256-4,096, 262k tokens) the SAE lr left its target FVU 9-17%
# behind sparsify's; this beat it at every point measured (bench/RESULTS.md, "transcoder learning rate").
TOPK_TRANSCODER_BASE_LR = 4 * TOPK_BASE_LR
TRANSCODER_LR_BATCH = 1024


def topk_family_lr(transcode: bool) -> dict[str, float | int]:
    """A TopK-family architecture's ``base_lr`` and ``lr_batch_reference`` (:class:`Architecture`)."""
    if transcode:
        return {"base_lr": TOPK_TRANSCODER_BASE_LR, "lr_batch_reference": TRANSCODER_LR_BATCH}
    return {"base_lr": TOPK_BASE_LR, "lr_batch_reference": 0}

# AuxK's weight (Gao et al. 2024, §A.2: 1/32); BatchTopK and Matryoshka reuse it.
AUX_K_COEFFICIENT = 1 / 32

AUX_K = Field(int, "AuxK's k for dead latents; 0 = d_in / 2", minimum=0, default=0)

# The AuxK fields every TopK-family architecture declares.
AUXK_FIELDS = {
    "aux_k": AUX_K,
    "aux_k_coefficient": Field(float, "AuxK loss weight (Gao et al. 2024: 1/32); 0 = off", minimum=0.0,
                               default=AUX_K_COEFFICIENT),
}

MULTI_TOPK = Field(bool, "TopK: add FVU at 4k / 8 (Gao et al. 2024, Multi-TopK)", default=False)


def aux_k_size(cfg: Mapping[str, Any], d_in: int, d_sae: int) -> int:
    """AuxK's k: ``cfg.aux_k``, or d_in / 2 by default (as sparsify); 0 when AuxK is off."""
    if option(cfg, "aux_k_coefficient", AUX_K_COEFFICIENT) <= 0:
        return 0
    return min(option(cfg, "aux_k", 0) or d_in // 2, d_sae)


def auxk_loss(aux: SparseLatents, residual: jax.Array, W_dec: jax.Array, dead_mask: jax.Array) -> jax.Array:
    """AuxK (Gao et al. 2024, §A.2): dead latents reconstruct the main reconstruction's error.

    Normalised like FVU by the error's own variance and scaled by min(dead / k_aux, 1), as in
    sparsify; zero when no latent is dead.
    """
    error = jax.lax.stop_gradient(residual)
    k_aux = aux.values.shape[1]

    def loss(aux: SparseLatents, W_dec: jax.Array) -> jax.Array:
        error_hat = dead_decode(aux, W_dec, dead_mask)
        scale = jnp.minimum(jnp.sum(dead_mask) / max(k_aux, 1), 1.0)
        loss = scale * jnp.sum(jnp.square(error - error_hat)) / jnp.maximum(total_variance(error), 1e-12)
        return loss.astype(W_dec.dtype)

    # The k_aux-row decode costs several times the main one, so it only runs when some latent is dead.
    return jax.lax.cond(jnp.any(dead_mask), loss, lambda aux, W_dec: jnp.zeros((), W_dec.dtype), aux, W_dec)


def make(cfg: Mapping[str, Any]) -> Architecture:
    """A TopK architecture from ``cfg`` (``k``; ``aux_k``, ``aux_k_coefficient`` = 1/32; ``multi_topk``).

    Multi-TopK adds ``FVU(4k) / 8`` to the loss (Gao et al. 2024, §5.3) so that the SAE also
    reconstructs well at larger k.

    Example::

        arch = make({"k": 32})
        params, arch_state = arch.init(jax.random.key(0), 576, 9216, sample)
        x_hat = arch.decode(params, arch.encode(params, arch_state, x))
    """
    k, aux_coefficient = cfg["k"], option(cfg, "aux_k_coefficient", AUX_K_COEFFICIENT)
    multi = option(cfg, "multi_topk", False)
    transcode = option(cfg, "transcode", False)

    def init(key, d_in, d_sae, sample, d_out=None, target_sample=None):
        return init_dictionary(key, d_in, d_sae, sample, d_out, target_sample, cfg), {}

    def centre(params: Params, x: jax.Array) -> jax.Array:
        # What topk_encode subtracts from x: b_dec for an SAE, nothing for a transcoder.
        return jnp.zeros(x.shape[-1:], x.dtype) if transcode else params["b_dec"]

    def encode(params: Params, arch_state, x: jax.Array) -> SparseLatents:
        none_dead = jnp.zeros(params["b_enc"].shape, bool)
        return topk_encode(x, params["W_enc"], params["b_enc"], centre(params, x), none_dead, k, 0)[0]

    def decode(params: Params, latents: SparseLatents) -> jax.Array:
        return sparse_decode(latents, params["W_dec"]) + params["b_dec"]

    def loss(params: Params, arch_state, x: jax.Array, y: jax.Array, ctx: LossContext):
        d_out, d_sae = params["W_dec"].shape[1], params["W_dec"].shape[0]
        k_aux = aux_k_size(cfg, d_out, d_sae)
        k_total = min(4 * k, d_sae) if multi else k
        selected, aux = topk_encode(x, params["W_enc"], params["b_enc"], centre(params, x), ctx.dead_mask, k_total,
                                    k_aux)
        latents = SparseLatents(selected.values[:, :k], selected.indices[:, :k])
        x_hat = skip_term(params, x, decode(params, latents))
        variance = total_variance(y)
        fvu = jnp.sum(jnp.square(y - x_hat)) / variance
        terms, total = {"fvu": fvu}, fvu
        if multi:
            terms["fvu_multi_topk"] = jnp.sum(jnp.square(y - skip_term(params, x, decode(params, selected)))) / variance
            total = total + terms["fvu_multi_topk"] / 8
        if k_aux:
            terms["auxk"] = auxk_loss(aux, y - x_hat, params["W_dec"], ctx.dead_mask)
            total = total + aux_coefficient * terms["auxk"]
        return total, LossOutput(latents, terms, arch_state, x_hat)

    return Architecture("topk", init, encode, decode, loss, unit_norm_decoder=True, **topk_family_lr(transcode))


def renormalize_encoder(params: Params, arch_state: dict[str, jax.Array], norms: jax.Array
                        ) -> tuple[Params, dict[str, jax.Array]]:
    """Unit-norm decoder rows with each row's norm moved into its encoder column and bias: the same
    pre-activation scaled per latent (so the same function when every norm is equal)."""
    return {**params, "W_dec": params["W_dec"] / norms[:, None], "W_enc": params["W_enc"] * norms[None, :],
            "b_enc": params["b_enc"] * norms}, arch_state


SPEC = ArchitectureSpec("topk", make, "topk", fields={**AUXK_FIELDS, "multi_topk": MULTI_TOPK},
                        unit_norm_renormalize=renormalize_encoder)
