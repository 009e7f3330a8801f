"""Starting a run from an existing SAE (``init_from``): a jaxinterp run or an imported export.

The loaded weights act on raw activations; they are put into the run's input units (the inverse
of the architecture's ``fold_scales``). Architectures that keep decoder rows at unit norm get them
renormalised by their spec's ``unit_norm_renormalize``, which moves each norm into the encoder and
leaves the SAE's function unchanged when every row has the same norm (for example one export's
normalisation folded in); unless the spec says the move is exact for unequal norms
(``renormalize_exact``, e.g. a per-latent threshold), a warning says the function changes. Adam's
moments start at zero.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax.numpy as jnp

from jaxinterp.config import ConfigError
from jaxinterp.sae import architecture_spec
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
    spec = architecture_spec(member.architecture.name)
    params = spec.fold_scales(dict(loaded.params), 1.0 / input_scale, 1.0 / input_scale, False)
    arch_state = dict(loaded.arch_state)
    if member.architecture.unit_norm_decoder:
        if spec.unit_norm_renormalize is None:
            raise ConfigError(f"config field 'init_from': a {spec.name} SAE keeps unit-norm decoder rows but its spec "
                              "has no unit_norm_renormalize; start it fresh (init_from='')")
        norms = jnp.linalg.norm(params["W_dec"], axis=-1)
        spread = float(jnp.max(norms) / jnp.maximum(jnp.min(norms), 1e-12))
        if not spec.renormalize_exact and spread > 1 + 1e-4:
            warnings.warn(f"init_from: decoder row norms differ (max/min {spread:.4f}); renormalising them "
                          f"changes which latents a {spec.name} SAE selects", stacklevel=2)
        params, arch_state = spec.unit_norm_renormalize(params, arch_state, norms)
    return {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}, arch_state
