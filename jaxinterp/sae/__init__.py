"""SAE architectures as pure functions over params pytrees."""

from jaxinterp.sae import topk
from jaxinterp.sae.decoder_norm import normalize_decoder, remove_parallel_decoder_grad
from jaxinterp.sae.topk import SparseLatents

__all__ = ["SparseLatents", "normalize_decoder", "remove_parallel_decoder_grad", "topk"]
