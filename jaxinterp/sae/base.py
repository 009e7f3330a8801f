"""What every dictionary architecture provides, and the pieces they share.

A dictionary maps an input ``x [tokens, d_in]`` to a target ``y [tokens, d_out]``: an SAE is the
case ``y = x``; a transcoder (Dunefsky et al. 2024, "Transcoders find interpretable LLM feature
circuits") reads an MLP's input and predicts its output. An architecture is a :class:`Architecture`
of pure functions over a params dict (``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``,
``W_dec [d_sae, d_out]``, ``b_dec [d_out]``, plus its own, e.g. ``log_threshold``; a skip
transcoder adds ``W_skip [d_in, d_out]``) and a small ``arch_state`` dict of non-trained values
(e.g. BatchTopK's running threshold). A new architecture is one module with a ``make(cfg)`` factory.

``cfg["transcode"]`` (set by the trainer when the target hook differs from the input hook) makes
the encoder read ``x`` itself instead of ``x − b_dec`` (``b_dec`` lives in the target's space, as in
sparsify's ``transcode``); ``cfg["skip"]`` adds ``x @ W_skip`` to the output (a skip transcoder,
Paulo et al. 2025, "Transcoders beat sparse autoencoders for interpretability").

Loss units: every loss is ``(Σ_t ‖y_t − ŷ_t‖² + λ·Σ_t penalty_t) / Σ_t ‖y_t − ȳ‖²`` over the
batch, i.e. the paper's loss divided by the batch's total variance of the target. The
reconstruction term is then the target's FVU (as in sparsify), and a penalty coefficient λ keeps
the paper's meaning when the activations are normalised the paper's way (``normalize=True``:
mean norm √d).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.sae.sparse import SparseLatents, dense_from_sparse, sparse_decode

__all__ = [
    "TRANSCODER_ENCODER_SCALE",
    "Architecture",
    "Latents",
    "LossContext",
    "LossOutput",
    "Params",
    "dense_decode",
    "dense_latents",
    "encoder_input",
    "B_DEC_INITS",
    "b_dec_init",
    "geometric_median",
    "init_dictionary",
    "init_tied",
    "latent_fires",
    "linear_warmup",
    "mean_l0",
    "pre_activations",
    "predict",
    "skip_term",
    "total_variance",
]

Params = dict[str, jax.Array]
Latents = SparseLatents | jax.Array  # sparse (TopK) or dense [tokens, d_sae]


class LossContext(NamedTuple):
    """Training-time inputs to a loss besides params and data."""

    step: jax.Array  # optimizer step, for penalty warm-ups
    dead_mask: jax.Array  # [d_sae] bool: latents that count as dead (for AuxK)


class LossOutput(NamedTuple):
    """The loss's auxiliary output: latents, named loss terms (``fvu`` always, of the target), new arch
    state, and the prediction ŷ [tokens, d_out] of the target the ``fvu`` term measures (for metrics,
    without a second decode; x̂ for an SAE)."""

    latents: Latents
    terms: dict[str, jax.Array]
    arch_state: dict[str, jax.Array]
    x_hat: jax.Array


class Architecture(NamedTuple):
    """An SAE architecture as pure functions.

    Attributes:
      name: config name, e.g. ``"topk"``.
      init: ``(key, d_in, d_sae, sample[tokens, d_in], d_out=None, target_sample=None) -> (params,
        arch_state)``; ``sample`` is training data for data-dependent initialisation (thresholds;
        ``b_dec`` from ``target_sample``, which defaults to ``sample``; ``d_out`` to ``d_in``).
      encode: ``(params, arch_state, x) -> latents`` at inference.
      decode: ``(params, latents) -> ŷ`` without the skip term (:func:`predict` adds it).
      loss: ``(params, arch_state, x, y, LossContext) -> (loss, LossOutput)`` for ``jax.grad``; ``y``
        is the target (pass ``x`` itself for an SAE).
      unit_norm_decoder: decoder rows are kept at unit norm (gradient projected, rows renormalised).
      base_lr: default Adam lr at 2¹⁴ latents, scaled by 1/√(n_latents/2¹⁴) (Gao et al. 2024, §2.3).
      lr_batch_reference: > 0: the default lr also scales by √(batch_size / lr_batch_reference), the
        square-root rule for Adam (Malladi et al. 2022, "On the SDEs and Scaling Rules for Adaptive
        Gradient Algorithms"); 0: the default does not depend on the batch.
    """

    name: str
    init: Callable[..., tuple[Params, dict[str, jax.Array]]]
    encode: Callable[[Params, dict[str, jax.Array], jax.Array], Latents]
    decode: Callable[[Params, Latents], jax.Array]
    loss: Callable[[Params, dict[str, jax.Array], jax.Array, jax.Array, LossContext], tuple[jax.Array, LossOutput]]
    unit_norm_decoder: bool
    base_lr: float
    lr_batch_reference: int = 0


# ``b_dec``'s initial value: the sample's mean (sparsify, Gao et al. 2024), its geometric median
# (Bricken et al. 2023, SAELens' ``b_dec_init_method``), or zero.
B_DEC_INITS = ("mean", "geometric_median", "zero")


def geometric_median(sample: jax.Array, iterations: int = 64, eps: float = 1e-8) -> jax.Array:
    """The point minimising ``Σ_t ‖x_t − m‖`` (Weiszfeld's algorithm from the mean, a fixed number
    of reweighted means; ``eps`` keeps a point that sits on the median from dividing by zero)."""
    sample = jnp.asarray(sample, jnp.float32)

    def step(median, _):
        weights = 1.0 / jnp.maximum(jnp.linalg.norm(sample - median, axis=-1), eps)
        return weights @ sample / jnp.sum(weights), None

    return jax.lax.scan(step, jnp.mean(sample, axis=0), None, length=iterations)[0]


def b_dec_init(sample: np.ndarray | jax.Array, method: str = "mean") -> jax.Array:
    """``b_dec``'s initial value from a data sample [tokens, d], by ``method`` (:data:`B_DEC_INITS`)."""
    sample = jnp.asarray(sample, jnp.float32)
    if method == "mean":
        return jnp.mean(sample, axis=0)
    if method == "geometric_median":
        return geometric_median(sample)
    if method == "zero":
        return jnp.zeros(sample.shape[1:], jnp.float32)
    raise ValueError(f"config field 'sae.b_dec_init': {method!r}; choose one of {', '.join(B_DEC_INITS)}")


def init_tied(key: jax.Array, d_in: int, d_sae: int, sample: np.ndarray | jax.Array, b_dec_method: str = "mean"
              ) -> Params:
    """Unit-norm random decoder rows, ``W_enc = W_decᵀ``, zero ``b_enc``, ``b_dec`` from the sample
    (:func:`b_dec_init`, the mean by default)."""
    W_dec = jax.random.normal(key, (d_sae, d_in), jnp.float32)
    W_dec = W_dec / jnp.linalg.norm(W_dec, axis=-1, keepdims=True)
    return {
        "W_enc": W_dec.T,
        "b_enc": jnp.zeros((d_sae,), jnp.float32),
        "W_dec": W_dec,
        "b_dec": b_dec_init(sample, b_dec_method),
    }


# Norm of a transcoder's initial encoder columns. Measured on a synthetic store (y a fixed linear map of
# 32-d sparse x, TopK 256 latents, k 8, lr 3e-3): holdout target FVU 0.31 / 0.15 after 60 / 200 steps at
# 0.1 against 0.62 / 0.22 at 1.0 (the SAE's scale); 0.3 measured like 0.1.
TRANSCODER_ENCODER_SCALE = 0.1


def init_dictionary(key: jax.Array, d_in: int, d_sae: int, sample, d_out: int | None, target_sample, cfg) -> Params:
    """:func:`init_tied` for an SAE (bitwise as before); an untied init for a transcoder.

    Transcoder (``cfg["transcode"]``): decoder rows are unit-norm random directions of the target
    space and the encoder an independent draw of random columns of the input space, of norm
    :data:`TRANSCODER_ENCODER_SCALE` (untied: the two spaces differ), ``b_dec`` from the target
    sample (the mean unless ``cfg["b_dec_init"]`` says otherwise), and ``b_enc = −x̄ W_enc`` so that
    the first pre-activations see the centred input (the encoder reads raw ``x``). sparsify's
    ``transcode`` starts from a zero decoder so that the first prediction is ``b_dec``; under the
    unit-norm decoder constraint here a zero row would stay zero until selected, so the small
    encoder plays that part (k random unit rows at full scale would start the target FVU above 1).
    With ``cfg["skip"]``, ``W_skip [d_in, d_out]`` starts at zero (Paulo et al. 2025).
    """
    if not option(cfg, "transcode", False):
        if option(cfg, "skip", False):
            raise ValueError("config field 'sae.skip': a skip connection needs a transcoder (a target_hook other "
                             "than hook)")
        return init_tied(key, d_in, d_sae, sample, option(cfg, "b_dec_init", "mean"))
    d_out = d_in if d_out is None else d_out
    target_sample = sample if target_sample is None else target_sample
    enc_key, dec_key = jax.random.split(key)
    W_dec = jax.random.normal(dec_key, (d_sae, d_out), jnp.float32)
    W_dec = W_dec / jnp.linalg.norm(W_dec, axis=-1, keepdims=True)
    W_enc = jax.random.normal(enc_key, (d_sae, d_in), jnp.float32)
    W_enc = TRANSCODER_ENCODER_SCALE * (W_enc / jnp.linalg.norm(W_enc, axis=-1, keepdims=True)).T
    params = {
        "W_enc": W_enc,
        "b_enc": -jnp.mean(jnp.asarray(sample, jnp.float32), axis=0) @ W_enc,
        "W_dec": W_dec,
        "b_dec": b_dec_init(target_sample, option(cfg, "b_dec_init", "mean")),
    }
    if option(cfg, "skip", False):
        params["W_skip"] = jnp.zeros((d_in, d_out), jnp.float32)
    return params


def encoder_input(params: Params, x: jax.Array, transcode: bool) -> jax.Array:
    """What the encoder reads: ``x − b_dec`` for an SAE, ``x`` for a transcoder."""
    return x if transcode else x - params["b_dec"]


def skip_term(params: Params, x: jax.Array, y_hat: jax.Array) -> jax.Array:
    """``ŷ + x @ W_skip`` for a skip transcoder; ``ŷ`` itself otherwise."""
    if "W_skip" not in params:
        return y_hat
    return y_hat + x @ params["W_skip"]


def predict(architecture: "Architecture", params: Params, arch_state: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """Inference: the target's prediction ŷ from input ``x`` (encode, decode, plus the skip term)."""
    return skip_term(params, x, architecture.decode(params, architecture.encode(params, arch_state, x)))


def dense_decode(params: Params, latents: Latents) -> jax.Array:
    """``latents @ W_dec + b_dec`` for dense or sparse latents."""
    if isinstance(latents, SparseLatents):
        return sparse_decode(latents, params["W_dec"]) + params["b_dec"]
    return latents @ params["W_dec"] + params["b_dec"]


def pre_activations(params: Params, x: jax.Array, transcode: bool = False) -> jax.Array:
    """``(x − b_dec) W_enc + b_enc`` (``b_dec`` subtracted first, SAELens' ``apply_b_dec_to_input``);
    ``x W_enc + b_enc`` for a transcoder."""
    return encoder_input(params, x, transcode) @ params["W_enc"] + params["b_enc"]


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
