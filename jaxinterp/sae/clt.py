"""Cross-layer transcoder (CLT) math as pure functions (Ameisen et al. 2025, "Circuit Tracing: Revealing
Computational Graphs in Language Models"; the layout of circuit-tracer's ``CrossLayerTranscoder``).

A CLT over ``L`` layers has one encoder per layer ℓ, reading that layer's MLP input ``x_ℓ``, and ``n``
latents per layer; a latent of layer ℓ writes to the MLP output of every layer ``L' ≥ ℓ``:

    a_ℓ = σ(x_ℓ W_enc[ℓ] + b_enc[ℓ])                      [tokens, n]
    ŷ_L' = Σ_{ℓ ≤ L'} a_ℓ W_dec[ℓ→L'] + b_dec[L']          [tokens, d_out]

Params, a flat dict (so optax, orbax and the per-name sharding rules handle it):
``W_enc [L, d_in, n]``, ``b_enc [L, n]``, ``b_dec [L, d_out]``, one decoder per source layer
``W_dec_ℓ [n, L − ℓ, d_out]`` (targets ℓ..L−1, circuit-tracer's ``W_dec_{ℓ}``) and, for JumpReLU,
``log_threshold [L, n]``. Decoder memory is ``n·d_out·L(L+1)/2``: the (source, target) structure stays
explicit and no dense ``[L·n, L·d_out]`` decoder is ever built. The latent axis ``n`` of every
parameter is the logical axis ``LATENT`` (:data:`CLT_PARAM_AXES`).

Activations ``σ``: ``jumprelu`` (per-latent threshold, straight-through gradients), ``relu``, ``topk``
(k per token per layer) and ``batch_topk`` (k·L·tokens over all layers' latents of the batch; at
inference a global threshold, the running estimate of the smallest kept activation).

Loss, in :mod:`jaxinterp.sae.base`'s units: ``(Σ_ℓ Σ_t ‖y_ℓ − ŷ_ℓ‖² + penalties) / Σ_ℓ Σ_t ‖y_ℓ − ȳ_ℓ‖²``.
JumpReLU and ReLU add Ameisen et al.'s ``λ·Σ tanh(c·‖W_dec,i‖·a_i)`` and JumpReLU the pre-activation loss
of Anthropic's January 2025 update; TopK and BatchTopK are reconstruction only.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.config import ConfigError, Field
from jaxinterp.sae.base import (TRANSCODER_ENCODER_SCALE, Architecture, LossContext, LossOutput, Params, b_dec_init,
                                linear_warmup, option, total_variance)
from jaxinterp.sae.batch_topk import GLOBAL_THRESHOLD_FIELDS, batch_topk_activations, update_threshold
from jaxinterp.sae.jumprelu import SPEC as JUMPRELU_SPEC
from jaxinterp.sae.jumprelu import initial_log_threshold, jump_relu
from jaxinterp.sae.relu import PENALTY_WARMUP_STEPS
from jaxinterp.sae.sparse import SparseLatents, dense_from_sparse, top_k
from jaxinterp.sae.spec import LATENT, ArchitectureSpec
from jaxinterp.sae.topk import topk_family_lr

__all__ = ["ACTIVATIONS", "CLT_PARAM_AXES", "CLTLossOutput", "MAX_LAYERS", "NORM_COMBINES", "PRE_ACT_COEFFICIENT",
           "TANH_SCALE", "activate", "combined_norms", "decode", "decoder_key", "decoder_norms", "encode", "init_clt",
           "loss",
           "layer_count", "make", "pre_activations", "SPEC"]

ACTIVATIONS = ("jumprelu", "relu", "topk", "batch_topk")

# How a latent's decoder vectors (one per target layer) combine into its penalty weight ‖W_dec,i‖:
# "concatenated": the norm of their concatenation, as Ameisen et al. 2025 define it ("the concatenation of
# all decoder vectors of feature i", § Building an Interpretable Replacement Model); "sum": the sum of
# their norms, the L1-of-norms weight of sparse crosscoders (Lindsey et al. 2024).
NORM_COMBINES = ("concatenated", "sum")

# c in tanh(c·‖W_dec‖·a): 4, Anthropic's "Circuits Updates — January 2025" recipe (as used by e.g. SAELens'
# crosscoder jumprelu_tanh_scale and model-diffing's TanHSparsityTrainConfig.c; Ameisen et al. leave c unstated).
TANH_SCALE = 4.0

# λ_p of the pre-activation loss λ_p·Σ relu(θ − pre)·‖W_dec‖ that revives dead latents: 3e-6, the same
# January 2025 update's value (SAELens' pre_act_loss_coefficient note: "Set to 3e-6 to match Anthropic's setup").
PRE_ACT_COEFFICIENT = 3e-6

# Depths CLT_PARAM_AXES names a decoder key for (the sharding rules need a finite, static mapping).
MAX_LAYERS = 256

_DEC_PREFIX = "W_dec_"


def decoder_key(source: int) -> str:
    """The params key of source layer ``source``'s decoder ``[n, L − source, d_out]``."""
    return f"{_DEC_PREFIX}{source}"


# Logical axes of every CLT parameter: the latent axis is LATENT (mapped to 'model'), all else replicated.
CLT_PARAM_AXES: Mapping[str, tuple[str | None, ...]] = {
    "W_enc": (None, None, LATENT),
    "b_enc": (None, LATENT),
    "b_dec": (None, None),
    "log_threshold": (None, LATENT),
    **{decoder_key(source): (LATENT, None, None) for source in range(MAX_LAYERS)},
}


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"CLT activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")


def layer_count(params: Params) -> int:
    """``L``, the number of layers (static: from ``b_dec``'s shape)."""
    return params["b_dec"].shape[0]


def init_clt(key: jax.Array, n_layers: int, d_in: int, n_latents: int, d_out: int, x_sample: jax.Array,
             y_sample: jax.Array, activation: str, k: int = 32, b_dec_method: str = "mean") -> Params:
    """Untied initial params from samples ``x_sample [tokens, L, d_in]`` and ``y_sample [tokens, L, d_out]``.

    As :func:`jaxinterp.sae.base.init_dictionary`'s transcoder: encoder columns random of norm
    :data:`TRANSCODER_ENCODER_SCALE`, ``b_enc = −x̄_ℓ W_enc[ℓ]`` (the first pre-activations see centred
    input), ``b_dec[ℓ]`` from ``y_sample``'s layer ℓ (:func:`b_dec_init`). Decoder vectors are random unit
    directions, those into target ``L'`` scaled by ``1/√(L' + 1)`` (``L' + 1`` source layers add into that
    target), then those into a target the sample's initial prediction overshoots shrunk to the target's
    centred norm (:func:`_match_target_scale`). JumpReLU:
    ``log_threshold[ℓ]`` where each latent fires on ``k / n`` of the sample (:func:`initial_log_threshold`).
    """
    _check_activation(activation)
    if not 1 <= n_layers <= MAX_LAYERS:
        raise ValueError(f"CLT n_layers {n_layers}: CLT_PARAM_AXES covers 1..{MAX_LAYERS} layers")
    x_sample, y_sample = jnp.asarray(x_sample, jnp.float32), jnp.asarray(y_sample, jnp.float32)
    enc_key, dec_key = jax.random.split(key)
    W_enc = jax.random.normal(enc_key, (n_layers, n_latents, d_in), jnp.float32)
    W_enc = TRANSCODER_ENCODER_SCALE * jnp.swapaxes(W_enc / jnp.linalg.norm(W_enc, axis=-1, keepdims=True), 1, 2)
    params = {
        "W_enc": W_enc,
        "b_enc": -jnp.einsum("ld,ldn->ln", jnp.mean(x_sample, axis=0), W_enc),
        "b_dec": jax.vmap(partial(b_dec_init, method=b_dec_method), in_axes=1)(y_sample),
    }
    # One draw for every (source, target) block, [n, L(L+1)/2, d_out], sliced per source (one op, not L).
    targets = np.concatenate([np.arange(source, n_layers) for source in range(n_layers)])
    W_dec = jax.random.normal(dec_key, (n_latents, len(targets), d_out), jnp.float32)
    W_dec = W_dec / jnp.linalg.norm(W_dec, axis=-1, keepdims=True) / np.sqrt(targets + 1.0, dtype=np.float32)[:, None]
    starts = np.cumsum([0] + [n_layers - source for source in range(n_layers)])
    for source in range(n_layers):
        params[decoder_key(source)] = W_dec[:, starts[source]:starts[source + 1]]
    pre = pre_activations(params, x_sample)
    if activation == "jumprelu":
        params["log_threshold"] = jax.vmap(partial(initial_log_threshold, target_l0=min(k, n_latents)),
                                           in_axes=1)(pre)
    return _match_target_scale(params, activate(params, pre, activation, min(k, n_latents))[0], y_sample)


def _match_target_scale(params: Params, latents: jax.Array, y_sample: jax.Array) -> Params:
    """Shrinks the decoder blocks into each target L' whose sample prediction is larger than the target
    (centred norms) to the target's norm: MLP outputs range from ~0.01 (small models) to ~10, and unit
    decoders far above the target's scale cost hundreds of steps of shrinking (a CLT's decoder norms are
    free, not unit). A smaller prediction is left as it is: random directions at the target's full norm
    would double the initial error."""
    layers = layer_count(params)
    b_dec = params["b_dec"]
    y_hat = decode(params, latents) - b_dec
    predicted = jnp.sqrt(jax.vmap(total_variance, in_axes=1)(y_hat))
    wanted = jnp.sqrt(jax.vmap(total_variance, in_axes=1)(y_sample))
    ratio = jnp.minimum(1.0, wanted / jnp.maximum(predicted, jnp.finfo(jnp.float32).tiny))  # [L'] targets
    for source in range(layers):
        params[decoder_key(source)] = params[decoder_key(source)] * ratio[source:, None]
    return params


def pre_activations(params: Params, x: jax.Array) -> jax.Array:
    """``x_ℓ W_enc[ℓ] + b_enc[ℓ]`` for every layer: ``x [tokens, L, d_in]`` → ``[tokens, L, n]``."""
    return jnp.einsum("tld,ldn->tln", x, params["W_enc"]) + params["b_enc"]


def _topk_per_layer(pre: jax.Array, k: int) -> jax.Array:
    """``relu`` of each token's and layer's top ``k`` pre-activations, zeros elsewhere (dense)."""
    tokens, layers, n = pre.shape
    values, indices = top_k(pre.reshape(tokens * layers, n), k)
    return dense_from_sparse(SparseLatents(jax.nn.relu(values), indices), n).reshape(tokens, layers, n)


def activate(params: Params, pre: jax.Array, activation: str, k: int, bandwidth: float = 1e-3,
             threshold: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Latents ``[tokens, L, n]`` from pre-activations, and BatchTopK's smallest kept activation (else 0).

    ``k``: TopK's latents per token per layer; BatchTopK's mean per token per layer (the batch keeps its
    ``k·L·tokens`` largest activations across all layers jointly, BatchTopK across layers, Bussmann et al.
    2024). ``threshold`` (BatchTopK only): inference, ``relu(pre)·1[pre > threshold]`` with the running
    threshold instead of the batch selection. ``bandwidth``: JumpReLU's straight-through kernel width.
    """
    _check_activation(activation)
    zero = jnp.zeros((), pre.dtype)
    if activation == "relu":
        return jax.nn.relu(pre), zero
    if activation == "jumprelu":
        # jump_relu(relu(pre), θ) = relu(pre)·1[pre > θ] for θ > 0, with Rajamanoharan et al.'s STE for θ.
        return jump_relu(jax.nn.relu(pre), jnp.exp(params["log_threshold"]), bandwidth), zero
    if activation == "topk":
        if k > pre.shape[-1]:
            raise ValueError(f"CLT topk: k {k} exceeds the {pre.shape[-1]} latents per layer")
        return _topk_per_layer(pre, k), zero
    if threshold is not None:
        return jax.nn.relu(pre) * (pre > threshold), zero
    # On [tokens, L, n] as it is: merging L with a latent axis sharded over 'model' would gather it.
    return batch_topk_activations(pre, k * pre.shape[1])


def encode(params: Params, x: jax.Array, activation: str, k: int = 32, bandwidth: float = 1e-3,
           threshold: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """``x [tokens, L, d_in]`` → (latents ``[tokens, L, n]``, BatchTopK's smallest kept activation or 0).

    The second value is what BatchTopK's running inference threshold is updated from
    (:func:`jaxinterp.sae.batch_topk.update_threshold`); pass that threshold as ``threshold`` at inference.
    """
    return activate(params, pre_activations(params, x), activation, k, bandwidth, threshold)


def decode(params: Params, latents: jax.Array) -> jax.Array:
    """``ŷ [tokens, L, d_out]``: for each target L', ``Σ_{ℓ ≤ L'} a_ℓ W_dec_ℓ[:, L' − ℓ] + b_dec[L']``.

    One einsum per source layer into its target slice ℓ..L−1, accumulated: no dense decoder.
    """
    layers = layer_count(params)
    y_hat = jnp.broadcast_to(params["b_dec"], (latents.shape[0], *params["b_dec"].shape))
    for source in range(layers):
        into_targets = jnp.einsum("tn,nsd->tsd", latents[:, source], params[decoder_key(source)])
        y_hat = y_hat.at[:, source:].add(into_targets)
    return y_hat


def decoder_norms(params: Params, combine: str = "concatenated") -> jax.Array:
    """``[L, n]``: each latent's penalty weight ‖W_dec,i‖ from its decoder vectors into its target layers:
    the norm of their concatenation (Ameisen et al. 2025) or the sum of their norms (:data:`NORM_COMBINES`)."""
    return jnp.stack([combined_norms(params[decoder_key(source)], combine) for source in range(layer_count(params))])


def combined_norms(W_dec: jax.Array, combine: str = "concatenated") -> jax.Array:
    """``[n]``: one penalty weight per latent from its decoder vectors ``W_dec [n, targets, d_out]``, combined
    by ``combine`` (:data:`NORM_COMBINES`); a crosscoder's ``W_dec [n, S, d]`` takes ``"sum"``."""
    if combine not in NORM_COMBINES:
        raise ValueError(f"CLT decoder norm {combine!r}; choose one of {', '.join(NORM_COMBINES)}")
    if combine == "concatenated":
        return jnp.linalg.norm(W_dec.reshape(W_dec.shape[0], -1), axis=-1)
    return jnp.sum(jnp.linalg.norm(W_dec, axis=-1), axis=-1)


class CLTLossOutput(NamedTuple):
    """The loss's auxiliary output.

    Attributes:
      latents: ``[tokens, L, n]``.
      terms: named scalar terms in the loss's units: ``fvu`` (all target layers together) and, for
        jumprelu / relu, ``tanh_sparsity`` (and jumprelu ``pre_act``) before their coefficients.
      fvu_per_layer: ``[L]``, each target layer's ``Σ_t ‖y − ŷ‖² / Σ_t ‖y − ȳ‖²``.
      kth: BatchTopK's smallest kept activation (for the running threshold); 0 otherwise.
      y_hat: ``[tokens, L, d_out]``.
    """

    latents: jax.Array
    terms: dict[str, jax.Array]
    fvu_per_layer: jax.Array
    kth: jax.Array
    y_hat: jax.Array


def loss(params: Params, x: jax.Array, y: jax.Array, activation: str, k: int = 32, step: jax.Array | int = 0,
         l0_coefficient: float = 1.0, tanh_scale: float = TANH_SCALE, pre_act_coefficient: float = PRE_ACT_COEFFICIENT,
         penalty_warmup_steps: int = 0, bandwidth: float = 1e-3, norm_combine: str = "concatenated"
         ) -> tuple[jax.Array, CLTLossOutput]:
    """The training loss of inputs ``x [tokens, L, d_in]`` and targets ``y [tokens, L, d_out]``, for ``jax.grad``.

    ``(Σ_ℓ Σ_t ‖y_ℓ − ŷ_ℓ‖² + λ·S + λ_p·P) / Σ_ℓ total_variance(y_ℓ)``, where for jumprelu and relu
    ``S = Σ_{t,ℓ,i} tanh(c·‖W_dec,i‖·a_{t,ℓ,i})`` (Ameisen et al. 2025; ``λ = l0_coefficient`` ramped
    linearly over ``penalty_warmup_steps``, ``c = tanh_scale``; norms from :func:`decoder_norms`), and for
    jumprelu ``P = Σ_{t,ℓ,i} relu(θ_{ℓ,i} − pre_{t,ℓ,i})·‖W_dec,i‖`` (Anthropic's January 2025 update: it
    pulls dead latents' pre-activations up to their thresholds; ``λ_p = pre_act_coefficient``). TopK and
    BatchTopK: reconstruction only. ``l0_coefficient`` defaults to JumpReLU's 1.0 here; Anthropic's recipe
    ramps λ to 20 over the whole run. Static: ``activation``, ``k``, ``penalty_warmup_steps``,
    ``bandwidth``, ``norm_combine``.
    """
    pre = pre_activations(params, x)
    latents, kth = activate(params, pre, activation, k, bandwidth)
    y_hat = decode(params, latents)
    squared_error_per_layer = jnp.sum(jnp.square(y - y_hat), axis=(0, 2))
    variance_per_layer = jax.vmap(total_variance, in_axes=1)(y)
    variance = jnp.sum(variance_per_layer)
    squared_error = jnp.sum(squared_error_per_layer)
    terms, total = {"fvu": squared_error / variance}, squared_error
    if activation in ("jumprelu", "relu"):
        norms = decoder_norms(params, norm_combine)
        sparsity = jnp.sum(jnp.tanh(tanh_scale * norms * latents))
        total = total + linear_warmup(l0_coefficient, penalty_warmup_steps)(jnp.asarray(step)) * sparsity
        terms["tanh_sparsity"] = sparsity / variance
        if activation == "jumprelu":
            pre_act = jnp.sum(jax.nn.relu(jnp.exp(params["log_threshold"]) - pre) * norms)
            total = total + pre_act_coefficient * pre_act
            terms["pre_act"] = pre_act / variance
    return total / variance, CLTLossOutput(latents, terms, squared_error_per_layer / variance_per_layer, kth, y_hat)



# --- the ``clt`` architecture: the math above as an Architecture over stacked layers -------------------
#
# The trainer stacks a CLT member's hooks (``blocks.*.mlp.hook_in`` → ``[tokens, L, d_in]``, its targets
# likewise) and counts its latents flat, ``[n·L]`` (``sae.n_latents`` is the total over layers): flat id
# ``i·L + ℓ`` for latent i of layer ℓ, latent-major so that the flat axis shards over 'model' as n does.


def _flat(latents: jax.Array) -> jax.Array:
    """``[tokens, L, n]`` → ``[tokens, n·L]`` (flat id ``i·L + ℓ``)."""
    return jnp.swapaxes(latents, 1, 2).reshape(latents.shape[0], -1)


def _unflat(latents: jax.Array, layers: int) -> jax.Array:
    return jnp.swapaxes(latents.reshape(latents.shape[0], -1, layers), 1, 2)


def make(cfg: Mapping[str, Any]) -> Architecture:
    """A CLT configured by an ``sae`` block (``activation``, ``k``, and the penalty fields)."""
    activation, k = option(cfg, "activation", "batch_topk"), option(cfg, "k", 32)
    _check_activation(activation)
    penalty = {"l0_coefficient": option(cfg, "sparsity_coefficient", 1.0),
               "tanh_scale": option(cfg, "tanh_scale", TANH_SCALE),
               "pre_act_coefficient": option(cfg, "pre_act_coefficient", PRE_ACT_COEFFICIENT),
               "penalty_warmup_steps": option(cfg, "penalty_warmup_steps", 0),
               "bandwidth": option(cfg, "bandwidth", 1e-3)}

    def init(key, d_in, d_sae, sample, d_out=None, target_sample=None):
        layers = sample.shape[1]
        params = init_clt(key, layers, d_in, d_sae // layers, d_out or d_in, sample,
                          sample if target_sample is None else target_sample, activation, k,
                          option(cfg, "b_dec_init", "mean"))
        return params, ({"threshold": jnp.zeros((), jnp.float32)} if activation == "batch_topk" else {})

    def encode_flat(params, arch_state, x):
        threshold = arch_state.get("threshold") if activation == "batch_topk" else None
        return _flat(encode(params, x, activation, k, penalty["bandwidth"], threshold)[0])

    def decode_flat(params, latents):
        return decode(params, _unflat(latents, layer_count(params)))

    def loss_fn(params, arch_state, x, y, ctx: LossContext):
        value, out = loss(params, x, y, activation, k, ctx.step, **penalty)
        if activation == "batch_topk":
            arch_state = update_threshold(arch_state, out.kth, option(cfg, "threshold_rate", 0.01))
        return value, LossOutput(_flat(out.latents), out.terms, arch_state, out.y_hat)

    # Untuned: the one-layer transcoder's default of the activation's family, at the CLT's total latents.
    lr = topk_family_lr(True) if activation in ("topk", "batch_topk") else {"base_lr": 2e-4, "lr_batch_reference": 0}
    return Architecture("clt", init, encode_flat, decode_flat, loss_fn, unit_norm_decoder=False, **lr)


def _no_file_format(*_args, **_kwargs):
    raise ConfigError("config field 'format': a cross-layer transcoder (sae.architecture=clt) exports as "
                      "format=circuit_tracer only (its cross_layer_transcoder layout); one-hook formats cannot hold it")


def _fold_scales(params: Params, input_scale: float, target_scale: float, transcode: bool) -> Params:
    if input_scale != 1.0 or target_scale != 1.0:
        raise NotImplementedError("a CLT trained with normalize=true: folding per-layer scales is not implemented")
    return params


SPEC = ArchitectureSpec(
    "clt", make, "clt",
    fields={
        "activation": Field(str, "CLT: latent activation (per layer: topk, jumprelu, relu; batch_topk across all "
                                 "layers' latents); crosscoder: over its shared latents", choices=ACTIVATIONS,
                            default="batch_topk"),
        "sparsity_coefficient": Field(float, "CLT jumprelu/relu, crosscoder jumprelu: weight of the tanh(c |W_dec| a) "
                                             "sparsity penalty (Ameisen et al. 2025); crosscoder relu: of the "
                                             "decoder-norm-weighted L1 (Lindsey et al. 2024)", minimum=0.0, default=1.0),
        "tanh_scale": Field(float, "CLT: c of the tanh penalty (Anthropic, Jan 2025: 4)", minimum=0.0,
                            default=TANH_SCALE),
        "pre_act_coefficient": Field(float, "CLT jumprelu: weight of the dead-latent pre-activation loss "
                                            "(Anthropic, Jan 2025: 3e-6)", minimum=0.0, default=PRE_ACT_COEFFICIENT),
        "penalty_warmup_steps": PENALTY_WARMUP_STEPS,
        "bandwidth": JUMPRELU_SPEC.fields["bandwidth"],
        "threshold_rate": GLOBAL_THRESHOLD_FIELDS["threshold_rate"],
    },
    param_axes=CLT_PARAM_AXES, to_portable=_no_file_format, from_portable=_no_file_format,
    fold_scales=_fold_scales, layers=True)
