"""What every SAE architecture provides, and the pieces they share.

An architecture is a :class:`Architecture` of pure functions over a params dict
(``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``, plus its
own, e.g. ``log_threshold``) and a small ``arch_state`` dict of non-trained values (e.g.
BatchTopK's running threshold). A new architecture is one module with a ``make(cfg)`` factory.

Loss units: every loss is ``(Σ_t ‖x_t − x̂_t‖² + λ·Σ_t penalty_t) / Σ_t ‖x_t − x̄‖²`` over the
batch, i.e. the paper's loss divided by the batch's total variance. The reconstruction term is
then the FVU (as in sparsify), and a penalty coefficient λ keeps the paper's meaning when the
inputs are normalised the paper's way (``normalize=True``: mean norm √d_in).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.sae.sparse import SparseLatents, dense_from_sparse, sparse_decode

__all__ = [
    "Architecture",
    "Latents",
    "LossContext",
    "LossOutput",
    "Params",
    "dense_decode",
    "dense_latents",
    "init_tied",
    "latent_fires",
    "linear_warmup",
    "mean_l0",
    "pre_activations",
    "total_variance",
]

Params = dict[str, jax.Array]
Latents = SparseLatents | jax.Array  # sparse (TopK) or dense [tokens, d_sae]


class LossContext(NamedTuple):
    """Training-time inputs to a loss besides params and data."""

    step: jax.Array  # optimizer step, for penalty warm-ups
    dead_mask: jax.Array  # [d_sae] bool: latents that count as dead (for AuxK)


class LossOutput(NamedTuple):
    """The loss's auxiliary output: latents, named loss terms (``fvu`` always), new arch state, and the
    reconstruction x̂ [tokens, d_in] the ``fvu`` term measures (for metrics, without a second decode)."""

    latents: Latents
    terms: dict[str, jax.Array]
    arch_state: dict[str, jax.Array]
    x_hat: jax.Array


class Architecture(NamedTuple):
    """An SAE architecture as pure functions.

    Attributes:
      name: config name, e.g. ``"topk"``.
      init: ``(key, d_in, d_sae, sample[tokens, d_in]) -> (params, arch_state)``; ``sample`` is
        training data for data-dependent initialisation (``b_dec``, thresholds).
      encode: ``(params, arch_state, x) -> latents`` at inference.
      decode: ``(params, latents) -> x̂``.
      loss: ``(params, arch_state, x, LossContext) -> (loss, LossOutput)`` for ``jax.grad``.
      unit_norm_decoder: decoder rows are kept at unit norm (gradient projected, rows renormalised).
      base_lr: default Adam lr at 2¹⁴ latents, scaled by 1/√(n_latents/2¹⁴) (Gao et al. 2024, §2.3).
    """

    name: str
    init: Callable[..., tuple[Params, dict[str, jax.Array]]]
    encode: Callable[[Params, dict[str, jax.Array], jax.Array], Latents]
    decode: Callable[[Params, Latents], jax.Array]
    loss: Callable[[Params, dict[str, jax.Array], jax.Array, LossContext], tuple[jax.Array, LossOutput]]
    unit_norm_decoder: bool
    base_lr: float


def init_tied(key: jax.Array, d_in: int, d_sae: int, sample: np.ndarray | jax.Array) -> Params:
    """Unit-norm random decoder rows, ``W_enc = W_decᵀ``, zero ``b_enc``, ``b_dec`` = sample mean."""
    W_dec = jax.random.normal(key, (d_sae, d_in), jnp.float32)
    W_dec = W_dec / jnp.linalg.norm(W_dec, axis=-1, keepdims=True)
    return {
        "W_enc": W_dec.T,
        "b_enc": jnp.zeros((d_sae,), jnp.float32),
        "W_dec": W_dec,
        "b_dec": jnp.mean(jnp.asarray(sample, jnp.float32), axis=0),
    }


def dense_decode(params: Params, latents: Latents) -> jax.Array:
    """``latents @ W_dec + b_dec`` for dense or sparse latents."""
    if isinstance(latents, SparseLatents):
        return sparse_decode(latents, params["W_dec"]) + params["b_dec"]
    return latents @ params["W_dec"] + params["b_dec"]


def pre_activations(params: Params, x: jax.Array) -> jax.Array:
    """``(x − b_dec) W_enc + b_enc`` (``b_dec`` subtracted first, SAELens' ``apply_b_dec_to_input``)."""
    return (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]


def total_variance(x: jax.Array) -> jax.Array:
    """``Σ_t ‖x_t − x̄‖²`` over the batch: the denominator of FVU and of every loss."""
    return jnp.sum(jnp.square(x - jnp.mean(x, axis=0)))


def dense_latents(latents: Latents, d_sae: int) -> jax.Array:
    """[tokens, d_sae] activations of sparse (TopK-family) or already dense latents."""
    if isinstance(latents, SparseLatents):
        return dense_from_sparse(latents, d_sae)
    return latents


def latent_fires(latents: Latents, d_sae: int) -> jax.Array:
    """[d_sae] number of tokens on which each latent is non-zero."""
    if isinstance(latents, SparseLatents):
        active = (latents.values > 0).astype(jnp.float32)
        return jnp.zeros((d_sae,), jnp.float32).at[latents.indices.reshape(-1)].add(active.reshape(-1))
    return jnp.sum(latents > 0, axis=0, dtype=jnp.float32)


def mean_l0(latents: Latents) -> jax.Array:
    """Mean number of non-zero latents per token."""
    values = latents.values if isinstance(latents, SparseLatents) else latents
    return jnp.mean(jnp.sum(values > 0, axis=-1, dtype=jnp.float32))


def linear_warmup(coefficient: float, warmup_steps: int) -> Callable[[jax.Array], jax.Array]:
    """``step -> coefficient · min(1, step / warmup_steps)`` (penalty warm-up, Conerly et al. 2024)."""
    def schedule(step: jax.Array) -> jax.Array:
        if warmup_steps <= 0:
            return jnp.float32(coefficient)
        return coefficient * jnp.minimum(1.0, step.astype(jnp.float32) / warmup_steps)

    return schedule


def option(cfg: Mapping[str, Any], name: str, default: Any) -> Any:
    """``cfg[name]`` when present: architecture factories accept partial dicts in tests."""
    return cfg.get(name, default)
