"""Top-AFA SAE (Lee et al. 2025, "Evaluating and Designing Sparse Autoencoders by Approximating
Quasi-Orthogonality", arXiv 2503.24277).

If the decoder rows are unit-norm and ε-quasi-orthogonal, the dense input ``z = x − b_dec`` and
its sparse code ``f`` have nearly the same norm (``‖z‖² = ‖f‖² + Σ_{i≠j} f_i f_j d_i·d_j``); the
*approximate feature activation* is ``AFA(z) = ‖z‖₂``
(:func:`~jaxinterp.eval.metrics.approximate_feature_activation`). Top-AFA replaces TopK's fixed k
by a per-token count: with ``a = relu(z W_enc)``, latents are ranked by ``(a_i ‖d_i‖)²``, and the
token keeps the shortest prefix of that ranking whose norm ``√(Σ_{j≤k} (a_j ‖d_j‖)²)`` is nearest to
``AFA(z)`` (:func:`top_afa_mask`). The loss adds the norm-matching term ``(‖f‖ − AFA(z))²`` (the
paper's L_AFA, the ZF plot's diagonal) and AuxK for dead latents::

    L = (‖x − x̂‖² + afa_coefficient · d · Σ_t (‖f_t‖ − AFA(z_t))²) / total_variance + aux_k_coefficient · AuxK

The paper's text (equation numbers) was not readable from here; the rule follows the authors'
reference code (github.com/SewoongLee/top-afa-sae, ``training/sae.py``, ``TopAFASAE``, and
``etc/afa_step_by_step.ipynb``). Choices where it is silent or where this differs:

- Pre-activations have no encoder bias, as there (``relu((x − b_dec) W_enc)``); ``b_enc`` is absent
  (zero in the portable form).
- The reference overwrites the last cumulative sum with 1e8 so that the full prefix is (almost) never
  picked; here it is never picked, which keeps the rule scale-free (so the standard scale fold is exact).
- Nearest prefix: ``argmin_k |√cum_k − AFA|``, the first on ties (``torch.argmin``'s rule); ties in the
  ranking pick the lowest index.
- The reference's L_AFA compares ``‖f‖`` with ``‖x‖`` (its inputs are standardised per token), its
  selection with ``‖x − b_dec‖``; both use ``AFA(z)`` here, with ``AFA`` a constant target
  (stop-gradient), as ``‖x‖`` is there.
- Units: the reference's loss is the element-mean squared error plus ``afa_coeff`` times the
  token-mean of the norm term, so ``afa_coefficient · d`` here keeps its ``afa_coeff`` (swept there over
  1/128 … 1/16; default 1/32). AuxK is this package's (:func:`~jaxinterp.sae.topk.auxk_loss`), as the
  reference's TopK one.

Cost (CPU, 2 shared cores; d_in 576, d_sae 4,096, batch 1,024, jitted ``value_and_grad``, median of 5):
0.94 / 1.4 s against TopK's (k 32) 0.39 / 0.44 s, with L0 ≈ 100 at initialisation (a full sort per
token cost 4.3 s; :data:`RANK_CAP`). The code is dense (its L0 varies per token), so it does not use
the sparse kernels of :mod:`jaxinterp.sae.sparse` except for AuxK.

No peer format holds it (family ``top_afa``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.config import Field
from jaxinterp.eval.metrics import approximate_feature_activation, code_norm
from jaxinterp.sae.base import (Architecture, LossContext, LossOutput, Params, dense_decode, init_dictionary, option,
                                total_variance)
from jaxinterp.sae.sparse import SparseLatents, dead_top_k
from jaxinterp.sae.spec import ArchitectureSpec
from jaxinterp.sae.topk import TOPK_BASE_LR, auxk_loss, aux_k_size

__all__ = ["SPEC", "make", "top_afa_mask"]

FIELDS = {
    "afa_coefficient": Field(float, "top-AFA: weight of the norm-matching term (‖f‖ − ‖x − b_dec‖)², in the "
                                    "authors' afa_coeff units (Lee et al. 2025 sweep 1/128..1/16)", minimum=0.0,
                             default=1 / 32),
}


# Ranks computed first: a lax.top_k of this many latents, with a full sort only when some token's prefix
# norm has not reached its AFA within it (exact either way; the full sort cost 10x TopK's step on CPU).
RANK_CAP = 256


def top_afa_mask(acts: jax.Array, afa: jax.Array, decoder_norms: jax.Array, rank_cap: int = RANK_CAP) -> jax.Array:
    """[tokens, d_sae] bool: per token, the shortest prefix of latents ranked by ``(acts_i ‖d_i‖)²`` whose
    norm is nearest to ``afa`` [tokens] (never all ``d_sae``, never none; ties rank the lowest index first).

    The prefix norms only grow, so ``|norm_k − afa|`` falls until they pass ``afa`` and then rises: once
    the top ``rank_cap`` reach ``afa``, the nearest prefix is among them.
    """
    scaled = jnp.square(acts * decoder_norms)
    n_latents = acts.shape[-1]
    rows = jnp.arange(acts.shape[0])[:, None]

    def prefix(width: int) -> tuple[jax.Array, jax.Array]:
        values, order = jax.lax.top_k(scaled, width)
        cumulative = jnp.sqrt(jnp.cumsum(values, axis=-1))
        if width == n_latents:  # the full set is never the answer (the reference's 1e8 sentinel)
            cumulative = cumulative.at[..., -1].set(jnp.inf)
        k = jnp.argmin(jnp.abs(cumulative - afa[:, None]), axis=-1) + 1
        mask = jnp.zeros(acts.shape, bool).at[rows, order].set(jnp.arange(width) < k[:, None])
        return mask, cumulative[:, -1] >= afa

    if rank_cap >= n_latents:
        return prefix(n_latents)[0]
    capped, reached = prefix(rank_cap)
    return jax.lax.cond(jnp.all(reached), lambda: capped, lambda: prefix(n_latents)[0])


def _refuse_transcoder(cfg: Mapping[str, Any]) -> None:
    if option(cfg, "transcode", False) or option(cfg, "skip", False):
        raise ValueError("config field 'sae.architecture': 'top_afa' matches the code's norm to its own input's, "
                         "so it has no transcoder form; use 'topk' for a transcoder")


def make(cfg: Mapping[str, Any]) -> Architecture:
    """A top-AFA architecture (``afa_coefficient`` = 1/32; AuxK's ``aux_k``, ``aux_k_coefficient`` as TopK)."""
    _refuse_transcoder(cfg)
    afa_coefficient = option(cfg, "afa_coefficient", FIELDS["afa_coefficient"].default)
    aux_coefficient = option(cfg, "aux_k_coefficient", 1 / 32)

    def init(key, d_in, d_sae, sample, d_out=None, target_sample=None):
        params = init_dictionary(key, d_in, d_sae, sample, d_out, target_sample, cfg)
        del params["b_enc"]  # the reference's top-AFA encoder has no bias
        return params, {}

    def select(params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(acts, pre, afa)``: the kept latents, all ``relu(z W_enc)``, and AFA(z)."""
        z = x - params["b_dec"]
        pre = jax.nn.relu(z @ params["W_enc"])
        afa = jax.lax.stop_gradient(approximate_feature_activation(z))
        mask = top_afa_mask(jax.lax.stop_gradient(pre), afa, jnp.linalg.norm(jax.lax.stop_gradient(params["W_dec"]),
                                                                             axis=-1))
        return pre * mask, pre, afa

    def encode(params: Params, arch_state, x: jax.Array) -> jax.Array:
        return select(params, x)[0]

    def loss(params: Params, arch_state, x: jax.Array, y: jax.Array, ctx: LossContext):
        acts, pre, afa = select(params, x)
        x_hat = dense_decode(params, acts)
        variance = total_variance(y)
        squared_error = jnp.sum(jnp.square(y - x_hat))
        # ‖f‖ with a floor inside the root: a token with no positive latent must not give NaN gradients.
        norms = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(acts), axis=-1), 1e-12))
        norm_term = jnp.sum(jnp.square(norms - afa))
        d_out, d_sae = params["W_dec"].shape[1], params["W_dec"].shape[0]
        total = (squared_error + afa_coefficient * d_out * norm_term) / variance
        terms = {"fvu": squared_error / variance, "afa": norm_term / variance,
                 "code_norm_ratio": jnp.mean(code_norm(jax.lax.stop_gradient(acts)) / jnp.maximum(afa, 1e-12))}
        k_aux = aux_k_size(cfg, d_out, d_sae)
        if k_aux:
            values, indices = dead_top_k(pre, ctx.dead_mask, k_aux)
            terms["auxk"] = auxk_loss(SparseLatents(values, indices), y - x_hat, params["W_dec"], ctx.dead_mask)
            total = total + aux_coefficient * terms["auxk"]
        return total, LossOutput(acts, terms, arch_state, x_hat)

    return Architecture("top_afa", init, encode, dense_decode, loss, unit_norm_decoder=True, base_lr=TOPK_BASE_LR)


def to_portable(params: Params, arch_state, cfg: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The standard form with a zero ``b_enc`` (the encoder has none)."""
    portable = {name: np.asarray(params[name], np.float32) for name in ("W_enc", "W_dec", "b_dec")}
    return {**portable, "b_enc": np.zeros(portable["W_dec"].shape[0], np.float32)}


def from_portable(weights: Mapping[str, np.ndarray], cfg: Mapping[str, Any]) -> tuple[Params, dict]:
    """``(params, {})``; a non-zero ``b_enc`` has no place in top-AFA's encoder and is refused."""
    _refuse_transcoder(cfg)
    if "b_enc" in weights and np.any(np.asarray(weights["b_enc"]) != 0):
        raise ValueError("top_afa weights: b_enc must be zero (the top-AFA encoder has no bias); this is another "
                         "architecture's SAE")
    return {name: jnp.asarray(weights[name], jnp.float32) for name in ("W_enc", "W_dec", "b_dec")}, {}


# The standard fold is exact: W_enc·s, b_dec/s, W_dec/s give the same acts, AFA/s and decoder norms 1/s,
# so the same prefix (the rule compares √Σ(a_i‖d_i‖)² with AFA, both divided by s).
SPEC = ArchitectureSpec(name="top_afa", make=make, family="top_afa", fields=FIELDS,
                        to_portable=to_portable, from_portable=from_portable, transcoder=False)
