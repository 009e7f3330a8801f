"""Starting a run from an existing SAE (``init_from``): a jaxinterp run or an imported export.

The loaded weights act on raw activations; they are put into the run's input units (the inverse
of :func:`jaxinterp.sae.topk.fold_input_scale`). Architectures that keep decoder rows at unit norm
get them renormalised with the norm moved into the encoder (``W_enc`` columns, ``b_enc``, and a
JumpReLU's threshold), which leaves the SAE's function unchanged when every row has the same norm
(for example one export's normalisation folded in); for a TopK-family SAE with unequal row norms
the top-k ranking changes, and a warning says so. Adam's moments start at zero.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax.numpy as jnp

from jaxinterp.config import ConfigError
from jaxinterp.sae.topk import fold_input_scale
from jaxinterp.train.members import Member

__all__ = ["warm_start_params"]


def warm_start_params(loaded: Any, member: Member, d_in: int, input_scale: float) -> tuple[dict, dict]:
    """``(params, arch_state)`` for ``member`` from a :class:`~jaxinterp.export.LoadedSAE`.

    Raises:
      ConfigError: the loaded SAE's architecture or shape differs from the run's SAE.
    """
    sae = loaded.sae
    if sae.transcode:
        raise ConfigError(f"config field 'init_from': it holds a transcoder ({sae.hook_name} -> {sae.target_hook}); "
                          "an SAE warm-starts from an SAE")
    if sae.architecture != member.architecture.name or (sae.d_in, sae.d_sae) != (d_in, member.d_sae):
        raise ConfigError(f"config field 'init_from': it holds a {sae.architecture} SAE {sae.d_in}→{sae.d_sae}, the run "
                          f"trains a {member.architecture.name} SAE {d_in}→{member.d_sae}; set sae.architecture and "
                          "sae.n_latents to match")
    params = fold_input_scale(dict(loaded.params), 1.0 / input_scale)
    if member.architecture.unit_norm_decoder:
        norms = jnp.linalg.norm(params["W_dec"], axis=-1)
        spread = float(jnp.max(norms) / jnp.maximum(jnp.min(norms), 1e-12))
        if member.architecture.name != "jumprelu" and spread > 1 + 1e-4:
            warnings.warn(f"init_from: decoder row norms differ (max/min {spread:.4f}); renormalising them "
                          f"changes which latents a {member.architecture.name} SAE selects", stacklevel=2)
        params = {**params, "W_dec": params["W_dec"] / norms[:, None], "W_enc": params["W_enc"] * norms[None, :],
                  "b_enc": params["b_enc"] * norms}
        if "log_threshold" in params:
            params["log_threshold"] = params["log_threshold"] + jnp.log(norms)
    arch_state = dict(loaded.arch_state)
    if member.architecture.unit_norm_decoder and "threshold" in arch_state:  # a global threshold on pre-activations
        arch_state["threshold"] = arch_state["threshold"] * jnp.mean(norms)
    return {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}, arch_state
