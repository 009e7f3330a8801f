"""A dictionary architecture defined outside jaxinterp, named ``sae.architecture=tests.custom_architecture``.

A ReLU SAE with a learned per-latent output gain, ``f = relu(pre) · exp(log_gain)``, and an L1
penalty on ``f``. It has its own config fields (``gain_init``, ``gain_l1``) and its own parameter
``log_gain [d_sae]`` on the latent axis. Since ``exp(log_gain) > 0``, ``relu(pre)·g = relu(pre·g)``:
its portable form folds the gain into ``W_enc`` and ``b_enc``, a plain ReLU (``relu`` family), which
SAELens holds as ``standard``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.config import Field
from jaxinterp.sae.base import (Architecture, LossContext, LossOutput, Params, dense_decode, init_dictionary,
                                pre_activations, skip_term, total_variance)
from jaxinterp.sae.spec import LATENT, ArchitectureSpec, standard_from_portable, standard_to_portable

FIELDS = {
    "gain_init": Field(float, "custom: initial per-latent output gain", minimum=1e-6, default=1.0),
    "gain_l1": Field(float, "custom: L1 penalty weight on the gained activations", minimum=0.0, default=0.5),
}


def make(cfg: Mapping[str, Any]) -> Architecture:
    gain_init, l1 = cfg.get("gain_init", 1.0), cfg.get("gain_l1", 0.5)
    transcode = cfg.get("transcode", False)

    def init(key, d_in, d_sae, sample, d_out=None, target_sample=None):
        params = init_dictionary(key, d_in, d_sae, sample, d_out, target_sample, cfg)
        return {**params, "log_gain": jnp.full((d_sae,), math.log(gain_init), jnp.float32)}, {}

    def encode(params: Params, arch_state, x: jax.Array) -> jax.Array:
        return jax.nn.relu(pre_activations(params, x, transcode)) * jnp.exp(params["log_gain"])

    def loss(params: Params, arch_state, x: jax.Array, y: jax.Array, ctx: LossContext):
        acts = encode(params, arch_state, x)
        x_hat = skip_term(params, x, dense_decode(params, acts))
        variance = total_variance(y)
        squared_error = jnp.sum(jnp.square(y - x_hat))
        penalty = jnp.sum(acts)
        terms = {"fvu": squared_error / variance, "l1": penalty / variance}
        return (squared_error + l1 * penalty) / variance, LossOutput(acts, terms, arch_state, x_hat)

    return Architecture("custom", init, encode, dense_decode, loss, unit_norm_decoder=False, base_lr=2e-4)


def to_portable(params: Params, arch_state, cfg: Mapping[str, Any]) -> dict[str, np.ndarray]:
    gain = np.exp(np.asarray(params["log_gain"], np.float32))
    weights = standard_to_portable(params, arch_state, cfg)
    return {**weights, "W_enc": weights["W_enc"] * gain[None, :], "b_enc": weights["b_enc"] * gain}


def from_portable(weights: Mapping[str, np.ndarray], cfg: Mapping[str, Any]) -> tuple[Params, dict]:
    params, arch_state = standard_from_portable(weights, cfg)
    return {**params, "log_gain": jnp.zeros(params["b_enc"].shape, jnp.float32)}, arch_state


SPEC = ArchitectureSpec("tests.custom_architecture", make, "relu", fields=FIELDS,
                        param_axes={"log_gain": (LATENT,)}, to_portable=to_portable, from_portable=from_portable)
