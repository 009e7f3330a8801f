"""Matryoshka BatchTopK SAE (Bussmann et al. 2025, "Learning Multi-Level Features with Matryoshka
Sparse Autoencoders"; Nabeshima 2024).

BatchTopK activations, but the loss averages the FVU of nested dictionary prefixes
(latents ``[0, m_1)``, ``[0, m_2)``, …, all), so early latents learn general features on their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxinterp.config import Field
from jaxinterp.sae.base import (Architecture, LossContext, LossOutput, Params, dense_decode, option, pre_activations,
                                skip_term, total_variance)
from jaxinterp.sae.batch_topk import (GLOBAL_THRESHOLD_FIELDS, batch_topk_activations, dense_auxk_loss,
                                      global_threshold_from_portable, global_threshold_to_portable,
                                      init_with_threshold, renormalize_global_threshold, threshold_encode,
                                      update_threshold)
from jaxinterp.sae.spec import ArchitectureSpec
from jaxinterp.sae.topk import AUX_K_COEFFICIENT, topk_family_lr

__all__ = ["make", "prefix_sizes", "SPEC"]


def prefix_sizes(spec: str, d_sae: int) -> list[int]:
    """``"1024,4096"`` → ``[1024, 4096, d_sae]``; empty → four prefixes doubling up to ``d_sae``."""
    sizes = [int(s) for s in spec.split(",") if s.strip()] if spec else [d_sae // 8, d_sae // 4, d_sae // 2]
    if any(not 0 < s < d_sae for s in sizes) or sizes != sorted(set(sizes)):
        raise ValueError(f"matryoshka prefixes must increase within (0, {d_sae}), got {spec!r}")
    return [*sizes, d_sae]


def make(cfg: Mapping[str, Any]) -> Architecture:
    """A Matryoshka BatchTopK architecture: BatchTopK's fields plus ``matryoshka_prefixes``."""
    k, rate = cfg["k"], option(cfg, "threshold_rate", 0.01)
    aux_coefficient = option(cfg, "aux_k_coefficient", AUX_K_COEFFICIENT)
    transcode = option(cfg, "transcode", False)

    def init(key, d_in, d_sae, sample, d_out=None, target_sample=None):
        prefix_sizes(option(cfg, "matryoshka_prefixes", ""), d_sae)  # fail at init, not mid-run
        return init_with_threshold(key, d_in, d_sae, sample, d_out, target_sample, cfg)

    def encode(params: Params, arch_state, x: jax.Array) -> jax.Array:
        return threshold_encode(params, arch_state, x, transcode)

    def loss(params: Params, arch_state, x: jax.Array, y: jax.Array, ctx: LossContext):
        d_sae = params["W_dec"].shape[0]
        pre = pre_activations(params, x, transcode)
        acts, kth = batch_topk_activations(pre, k)
        variance = total_variance(y)
        # Every prefix's prediction includes the skip term (it is not a latent).
        x_hat, start, prefix_fvus = skip_term(params, x, params["b_dec"]), 0, []
        for stop in prefix_sizes(option(cfg, "matryoshka_prefixes", ""), d_sae):
            x_hat = x_hat + acts[:, start:stop] @ params["W_dec"][start:stop]
            prefix_fvus.append(jnp.sum(jnp.square(y - x_hat)) / variance)
            start = stop
        terms = {"fvu": prefix_fvus[-1], "fvu_prefix_mean": jnp.mean(jnp.stack(prefix_fvus))}
        total = terms["fvu_prefix_mean"]
        auxk = dense_auxk_loss(cfg, params, pre, y - x_hat, ctx.dead_mask)
        if auxk is not None:
            terms["auxk"], total = auxk, total + aux_coefficient * auxk
        return total, LossOutput(acts, terms, update_threshold(arch_state, kth, rate), x_hat)

    return Architecture("matryoshka", init, encode, dense_decode, loss, unit_norm_decoder=True,
                        **topk_family_lr(transcode))


SPEC = ArchitectureSpec(
    "matryoshka", make, "jumprelu",
    fields={**GLOBAL_THRESHOLD_FIELDS,
            "matryoshka_prefixes": Field(str, "Matryoshka: increasing prefix sizes, e.g. 512,2048; empty = "
                                              "d_sae/8,/4,/2", default="")},
    state_axes={"threshold": ()}, to_portable=global_threshold_to_portable,
    from_portable=global_threshold_from_portable, unit_norm_renormalize=renormalize_global_threshold)
