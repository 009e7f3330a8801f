"""Sparse crosscoder math as pure functions (Lindsey et al. 2024, "Sparse Crosscoders for Cross-Layer Features
and Model Diffing").

One latent space is read from and written to ``S`` sources (store hooks: several layers of one model, or, in a
two-model store, the same hook of both models), with an encoder and a decoder per source::

    pre = Σ_s x_s W_enc[s] + b_enc                 [tokens, n]
    a   = σ(pre)
    x̂_s = a W_dec[:, s] + b_dec[s]                 [tokens, S, d]

Acausal: the target is the input (``y = x``). Params, a flat dict: ``W_enc [S, d, n]``, ``b_enc [n]``,
``W_dec [n, S, d]``, ``b_dec [S, d]`` and, for JumpReLU, ``log_threshold [n]``. The latent axis ``n`` of every
parameter is the logical axis ``LATENT`` (:data:`CROSSCODER_PARAM_AXES`, mapped to 'model'); latents are
shared across sources, so the trainer's latent ids are ``0..n−1`` (``sae.n_latents`` is ``n``, not ``n·S``).

Choices:

- Activations are the CLT's (:func:`jaxinterp.sae.clt.activate` on a one-"layer" stack): ``batch_topk`` by
  default (Minder et al. 2025, "Overcoming Sparsity Artifacts in Crosscoders to Interpret Chat-Tuning": the
  L1 crosscoder's decoder-norm penalty fakes model-exclusive latents, BatchTopK does not), keeping ``k·tokens``
  of the batch's shared latents, with a running global threshold at inference; ``topk`` (k per token);
  ``relu`` and ``jumprelu``.
- Sparsity, weighted by each latent's decoder norms summed over sources, ``w_i = Σ_s ‖W_dec,i,s‖``
  (:func:`jaxinterp.sae.clt.combined_norms` with ``"sum"``): ``relu`` adds Lindsey et al.'s L1
  ``λ·Σ_{t,i} a_{t,i}·w_i``; ``jumprelu`` the CLT's ``λ·Σ tanh(c·w_i·a_{t,i})`` and pre-activation loss
  (Anthropic, "Circuits Updates — January 2025"; SAELens' crosscoder uses the same tanh). TopK and
  BatchTopK are reconstruction only (no AuxK).
- Init: unit random decoder vectors per (latent, source); ``W_enc[s] = W_dec[:, s]ᵀ/√S`` (tied, as for one
  SAE; ``1/√S`` because S sources add into one pre-activation), ``b_enc = −Σ_s x̄_s W_enc[s]`` (centred),
  ``b_dec[s]`` from source s's sample.
- Loss in :mod:`jaxinterp.sae.base`'s units: ``(Σ_s Σ_t ‖x_s − x̂_s‖² + penalties) / Σ_s total_variance(x_s)``;
  each source's FVU is reported too.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.config import ConfigError
from jaxinterp.sae import clt
from jaxinterp.sae.base import (Architecture, LossContext, LossOutput, Params, b_dec_init, linear_warmup, option,
                                total_variance)
from jaxinterp.sae.batch_topk import update_threshold
from jaxinterp.sae.jumprelu import initial_log_threshold
from jaxinterp.sae.spec import LATENT, ArchitectureSpec
from jaxinterp.sae.topk import topk_family_lr

__all__ = ["ACTIVATIONS", "CROSSCODER_PARAM_AXES", "CrosscoderLossOutput", "SPEC", "activate", "decode",
           "decoder_norms", "encode", "init_crosscoder", "loss", "make", "pre_activations", "source_count",
           "source_norms"]

ACTIVATIONS = clt.ACTIVATIONS

# Logical axes: the shared latent axis is LATENT (mapped to 'model'), all else replicated.
CROSSCODER_PARAM_AXES: Mapping[str, tuple[str | None, ...]] = {
    "W_enc": (None, None, LATENT),
    "b_enc": (LATENT,),
    "W_dec": (LATENT, None, None),
    "b_dec": (None, None),
    "log_threshold": (LATENT,),
}


def _check_activation(activation: str, k: int = 1, n_latents: int | None = None) -> None:
    if activation not in ACTIVATIONS:
        raise ConfigError(f"config field 'sae.activation': crosscoder activation {activation!r}; choose one of "
                          f"{', '.join(ACTIVATIONS)}")
    if activation == "topk" and n_latents is not None and k > n_latents:
        raise ConfigError(f"config field 'sae.k': crosscoder topk k={k} exceeds its {n_latents} latents")


def source_count(params: Params) -> int:
    """``S``, the number of sources (static: from ``b_dec``'s shape)."""
    return params["b_dec"].shape[0]


def init_crosscoder(key: jax.Array, n_latents: int, x_sample: jax.Array, activation: str, k: int = 32,
                    b_dec_method: str = "mean") -> Params:
    """Initial params from a sample ``x_sample [tokens, S, d]`` (module docstring, "Init")."""
    _check_activation(activation, k, n_latents)
    x_sample = jnp.asarray(x_sample, jnp.float32)
    _, n_sources, d_model = x_sample.shape
    W_dec = jax.random.normal(key, (n_latents, n_sources, d_model), jnp.float32)
    W_dec = W_dec / jnp.linalg.norm(W_dec, axis=-1, keepdims=True)
    W_enc = jnp.transpose(W_dec, (1, 2, 0)) / np.sqrt(n_sources, dtype=np.float32)
    params = {
        "W_enc": W_enc,
        "b_enc": -jnp.einsum("sd,sdn->n", jnp.mean(x_sample, axis=0), W_enc),
        "W_dec": W_dec,
        "b_dec": jax.vmap(partial(b_dec_init, method=b_dec_method), in_axes=1)(x_sample),
    }
    if activation == "jumprelu":
        params["log_threshold"] = initial_log_threshold(pre_activations(params, x_sample), min(k, n_latents))
    return params


def pre_activations(params: Params, x: jax.Array) -> jax.Array:
    """``Σ_s x_s W_enc[s] + b_enc``: ``x [tokens, S, d]`` → ``[tokens, n]``."""
    return jnp.einsum("tsd,sdn->tn", x, params["W_enc"]) + params["b_enc"]


def activate(params: Params, pre: jax.Array, activation: str, k: int, bandwidth: float = 1e-3,
             threshold: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Latents ``[tokens, n]`` and BatchTopK's smallest kept activation (else 0): the CLT's activations on
    a one-layer stack (topk: k per token; batch_topk: k·tokens over the batch; ``threshold``: inference)."""
    _check_activation(activation, k, pre.shape[-1])
    latents, kth = clt.activate(params, pre[:, None], activation, k, bandwidth, threshold)
    return latents[:, 0], kth


def encode(params: Params, x: jax.Array, activation: str, k: int = 32, bandwidth: float = 1e-3,
           threshold: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """``x [tokens, S, d]`` → (latents ``[tokens, n]``, BatchTopK's smallest kept activation or 0)."""
    return activate(params, pre_activations(params, x), activation, k, bandwidth, threshold)


def decode(params: Params, latents: jax.Array) -> jax.Array:
    """``x̂ [tokens, S, d]``: ``a W_dec[:, s] + b_dec[s]`` for every source."""
    return jnp.einsum("tn,nsd->tsd", latents, params["W_dec"]) + params["b_dec"]


def source_norms(params: Params) -> jax.Array:
    """``[n, S]``: ‖W_dec,i,s‖, each latent's decoder norm into each source."""
    return jnp.linalg.norm(params["W_dec"], axis=-1)


def decoder_norms(params: Params) -> jax.Array:
    """``[n]``: the penalty weight ``Σ_s ‖W_dec,i,s‖`` (Lindsey et al. 2024's L1 of decoder norms)."""
    return clt.combined_norms(params["W_dec"], "sum")


class CrosscoderLossOutput(NamedTuple):
    """The loss's auxiliary output.

    Attributes:
      latents: ``[tokens, n]``.
      terms: named scalar terms in the loss's units: ``fvu`` (all sources together) and ``l1`` (relu) or
        ``tanh_sparsity`` and ``pre_act`` (jumprelu) before their coefficients.
      fvu_per_source: ``[S]``, each source's ``Σ_t ‖x_s − x̂_s‖² / Σ_t ‖x_s − x̄_s‖²``.
      kth: BatchTopK's smallest kept activation (for the running threshold); 0 otherwise.
      x_hat: ``[tokens, S, d]``.
    """

    latents: jax.Array
    terms: dict[str, jax.Array]
    fvu_per_source: jax.Array
    kth: jax.Array
    x_hat: jax.Array


def loss(params: Params, x: jax.Array, activation: str, k: int = 32, step: jax.Array | int = 0,
         l0_coefficient: float = 1.0, tanh_scale: float = clt.TANH_SCALE,
         pre_act_coefficient: float = clt.PRE_ACT_COEFFICIENT, penalty_warmup_steps: int = 0,
         bandwidth: float = 1e-3) -> tuple[jax.Array, CrosscoderLossOutput]:
    """The training loss of ``x [tokens, S, d]`` (its own target), for ``jax.grad``.

    ``(Σ_s Σ_t ‖x_s − x̂_s‖² + λ·P + λ_p·Q) / Σ_s total_variance(x_s)`` with ``w_i = Σ_s ‖W_dec,i,s‖``:
    relu ``P = Σ_{t,i} a_{t,i}·w_i`` (Lindsey et al. 2024); jumprelu ``P = Σ tanh(c·w_i·a_{t,i})`` and
    ``Q = Σ relu(θ_i − pre_{t,i})·w_i`` (Anthropic, January 2025); topk / batch_topk: ``P = Q = 0``.
    ``λ = l0_coefficient`` ramps linearly over ``penalty_warmup_steps``. Static: ``activation``, ``k``,
    ``penalty_warmup_steps``, ``bandwidth``.
    """
    pre = pre_activations(params, x)
    latents, kth = activate(params, pre, activation, k, bandwidth)
    x_hat = decode(params, latents)
    squared_error_per_source = jnp.sum(jnp.square(x - x_hat), axis=(0, 2))
    variance_per_source = jax.vmap(total_variance, in_axes=1)(x)
    variance = jnp.sum(variance_per_source)
    total = jnp.sum(squared_error_per_source)
    terms = {"fvu": total / variance}
    if activation in ("relu", "jumprelu"):
        norms = decoder_norms(params)
        coefficient = linear_warmup(l0_coefficient, penalty_warmup_steps)(jnp.asarray(step))
        if activation == "relu":
            sparsity = jnp.sum(latents * norms)
            terms["l1"] = sparsity / variance
        else:
            sparsity = jnp.sum(jnp.tanh(tanh_scale * norms * latents))
            terms["tanh_sparsity"] = sparsity / variance
            pre_act = jnp.sum(jax.nn.relu(jnp.exp(params["log_threshold"]) - pre) * norms)
            total = total + pre_act_coefficient * pre_act
            terms["pre_act"] = pre_act / variance
        total = total + coefficient * sparsity
    return total / variance, CrosscoderLossOutput(latents, terms, squared_error_per_source / variance_per_source,
                                                  kth, x_hat)


def make(cfg: Mapping[str, Any]) -> Architecture:
    """A crosscoder configured by an ``sae`` block (``activation``, ``k`` and the penalty fields)."""
    activation, k = option(cfg, "activation", "batch_topk"), option(cfg, "k", 32)
    _check_activation(activation)
    penalty = {"l0_coefficient": option(cfg, "sparsity_coefficient", 1.0),
               "tanh_scale": option(cfg, "tanh_scale", clt.TANH_SCALE),
               "pre_act_coefficient": option(cfg, "pre_act_coefficient", clt.PRE_ACT_COEFFICIENT),
               "penalty_warmup_steps": option(cfg, "penalty_warmup_steps", 0),
               "bandwidth": option(cfg, "bandwidth", 1e-3)}

    def init(key, d_in, d_sae, sample, d_out=None, target_sample=None):
        if sample.ndim != 3:
            raise ConfigError("config field 'hook': a crosscoder reads two or more hooks (stacked [tokens, S, d])")
        params = init_crosscoder(key, d_sae, sample, activation, k, option(cfg, "b_dec_init", "mean"))
        return params, ({"threshold": jnp.zeros((), jnp.float32)} if activation == "batch_topk" else {})

    def encode_fn(params, arch_state, x):
        threshold = arch_state.get("threshold") if activation == "batch_topk" else None
        return encode(params, x, activation, k, penalty["bandwidth"], threshold)[0]

    def loss_fn(params, arch_state, x, y, ctx: LossContext):
        # Acausal: y is x (the trainer passes the input itself as an SAE's target).
        value, out = loss(params, x, activation, k, ctx.step, **penalty)
        if activation == "batch_topk":
            arch_state = update_threshold(arch_state, out.kth, option(cfg, "threshold_rate", 0.01))
        return value, LossOutput(out.latents, out.terms, arch_state, out.x_hat)

    # Untuned: one SAE's default of the activation's family, at the crosscoder's latents.
    lr = topk_family_lr(False) if activation in ("topk", "batch_topk") else {"base_lr": 2e-4, "lr_batch_reference": 0}
    return Architecture("crosscoder", init, encode_fn, decode, loss_fn, unit_norm_decoder=False, **lr)


def _portable_refused(*_args, **_kwargs):
    raise ConfigError("config field 'format': a crosscoder (sae.architecture=crosscoder) exports only as "
                      "format=crosscoder (its own safetensors + cfg.json)")


def _fold_scales(params: Params, input_scale: float, target_scale: float, transcode: bool) -> Params:
    if input_scale != 1.0 or target_scale != 1.0:
        raise NotImplementedError("a crosscoder trained with normalize=true: folding per-source scales is not "
                                  "implemented")
    return params


SPEC = ArchitectureSpec(
    "crosscoder", make, "crosscoder",
    fields={name: clt.SPEC.fields[name] for name in ("activation", "sparsity_coefficient", "tanh_scale",
                                                     "pre_act_coefficient", "penalty_warmup_steps", "bandwidth",
                                                     "threshold_rate")},
    param_axes=CROSSCODER_PARAM_AXES, to_portable=_portable_refused, from_portable=_portable_refused,
    fold_scales=_fold_scales, transcoder=False, layers=True)
