"""SAE architectures as pure functions over params pytrees (one module each, with its ``SPEC``)."""

from __future__ import annotations

from jaxinterp.sae.base import Architecture, Latents, LossContext, LossOutput, dense_latents, latent_fires, mean_l0
from jaxinterp.sae.decoder_norm import normalize_decoder, remove_parallel_decoder_grad
from jaxinterp.sae.sparse import SparseLatents, dense_from_sparse
from jaxinterp.sae.spec import BUILTINS, ArchitectureSpec, architecture_spec, make_architecture

__all__ = [
    "BUILTINS",
    "Architecture",
    "ArchitectureSpec",
    "architecture_spec",
    "Latents",
    "LossContext",
    "LossOutput",
    "SparseLatents",
    "dense_from_sparse",
    "dense_latents",
    "latent_fires",
    "make_architecture",
    "mean_l0",
    "normalize_decoder",
    "remove_parallel_decoder_grad",
]
