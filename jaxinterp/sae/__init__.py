"""SAE architectures as pure functions over params pytrees (one module each)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxinterp.sae import batch_topk, jumprelu, matryoshka, relu, topk
from jaxinterp.sae.base import Architecture, Latents, LossContext, LossOutput, dense_latents, latent_fires, mean_l0
from jaxinterp.sae.decoder_norm import normalize_decoder, remove_parallel_decoder_grad
from jaxinterp.sae.sparse import SparseLatents, dense_from_sparse

__all__ = [
    "ARCHITECTURES",
    "Architecture",
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

ARCHITECTURES = ("topk", "batch_topk", "matryoshka", "jumprelu", "relu")


def make_architecture(cfg: Mapping[str, Any]) -> Architecture:
    """The architecture ``cfg["architecture"]`` configured by the rest of ``cfg`` (an ``sae`` config)."""
    factories = {"topk": topk.make, "batch_topk": batch_topk.make, "matryoshka": matryoshka.make,
                 "jumprelu": jumprelu.make, "relu": relu.make}
    if cfg["architecture"] not in factories:
        raise ValueError(f"unknown SAE architecture {cfg['architecture']!r}; choose one of {', '.join(ARCHITECTURES)}")
    return factories[cfg["architecture"]](cfg)
