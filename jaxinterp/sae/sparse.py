"""TopK encoder and sparse decoder whose backward passes touch only the selected latents.

Autodiff through ``lax.top_k`` and a row gather would give dense ``[tokens, d_sae]`` cotangents
and a dense ``xᵀ·g`` for the encoder weight gradient, as costly as the forward matmul. Here the
encoder and decoder weight gradients are scatter-adds of the ``tokens·k`` selected rows, and the
``b_dec`` gradient is one mat-vec (``bench/sae_step.py`` records the measurements behind this).

Latents live in an ambient ('data', 'model') mesh when there is one (``jax.set_mesh``); the
top-k over a latent axis sharded on 'model' is then a local top-k per shard, merged.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

__all__ = ["SparseLatents", "top_k", "dead_top_k", "topk_encode", "sparse_decode", "dead_decode", "aux_widths",
           "dense_from_sparse"]


class SparseLatents(NamedTuple):
    """The active latents of each token: ``values`` (≥ 0) and ``indices``, both [tokens, k]."""

    values: jax.Array
    indices: jax.Array


def _model_axis_size() -> int:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or "model" not in mesh.axis_names:
        return 1
    return mesh.shape["model"]


def top_k(pre: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """``lax.top_k`` over the last (latent) axis; sharded when the ambient mesh splits latents.

    With 'model' of size m each shard keeps its own top k, the m·k candidates are gathered and the
    top k of those kept: the same set as a global top-k, for k ≤ latents per shard.
    """
    shards = _model_axis_size()
    if shards == 1 or pre.shape[-1] % shards or k > pre.shape[-1] // shards:
        return jax.lax.top_k(pre, k)
    mesh = jax.sharding.get_abstract_mesh()
    data = "data" if "data" in mesh.axis_names and pre.shape[0] % mesh.shape["data"] == 0 else None

    def local(block):
        values, indices = jax.lax.top_k(block, k)
        indices = indices + jax.lax.axis_index("model") * block.shape[-1]
        values = jax.lax.all_gather(values, "model", axis=1, tiled=True)
        indices = jax.lax.all_gather(indices, "model", axis=1, tiled=True)
        best, where = jax.lax.top_k(values, k)
        return best, jnp.take_along_axis(indices, where, axis=1)

    return jax.shard_map(local, in_specs=P(data, "model"), out_specs=(P(data, None), P(data, None)),
                         check_vma=False)(pre)


def aux_widths(k_aux: int) -> tuple[int, ...]:
    """The static widths AuxK's selection runs at: k_aux, k_aux/4, k_aux/16 (at least 1).

    Only ``min(dead, k_aux)`` of AuxK's ``k_aux`` latents can be non-zero, so with few dead
    latents the narrowest width holding them all gives the same loss and gradients at a fraction
    of the top-k, gather and scatter cost (4x the whole step at k_aux 288, batch 1,024).
    """
    return tuple(sorted({max(k_aux >> shift, 1) for shift in (0, 2, 4)})) if k_aux else ()


def _by_dead_count(dead_mask: jax.Array, k_aux: int, branch, *operands):
    """``branch(width, *operands)`` at the narrowest of :func:`aux_widths` holding every dead latent."""
    widths = aux_widths(k_aux)
    index = jnp.minimum(jnp.searchsorted(jnp.asarray(widths), jnp.sum(dead_mask)), len(widths) - 1)
    return jax.lax.switch(index, [partial(branch, width) for width in widths], *operands)


def _first(latents: SparseLatents, width: int) -> SparseLatents:
    return SparseLatents(latents.values[:, :width], latents.indices[:, :width])


def dead_top_k(pre: jax.Array, dead_mask: jax.Array, k_aux: int) -> tuple[jax.Array, jax.Array]:
    """Top ``k_aux`` pre-activations among ``dead_mask`` latents (zeros where fewer are dead).

    The second top-k costs as much as the first, so it runs only when some latent is dead, and
    only as wide as :func:`aux_widths` needs (the columns past it are zeros).
    """
    empty = (jnp.zeros((pre.shape[0], k_aux), pre.dtype), jnp.zeros((pre.shape[0], k_aux), jnp.int32))
    if not k_aux:
        return empty

    def select(width, pre):
        values, indices = top_k(jnp.where(dead_mask, pre, -jnp.inf), width)
        pad = ((0, 0), (0, k_aux - width))
        return jnp.pad(jnp.where(jnp.isfinite(values), values, 0.0), pad), jnp.pad(indices, pad)

    return jax.lax.cond(jnp.any(dead_mask), lambda pre: _by_dead_count(dead_mask, k_aux, select, pre),
                        lambda pre: empty, pre)


@partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def topk_encode(x: jax.Array, W_enc: jax.Array, b_enc: jax.Array, b_dec: jax.Array, aux_mask: jax.Array,
                k: int, k_aux: int) -> tuple[SparseLatents, SparseLatents]:
    """``topk(relu(W_encᵀ(x − b_dec) + b_enc))``, plus the top ``k_aux`` among ``aux_mask`` latents.

    The second selection is AuxK's (Gao et al. 2024, §A.2): the largest pre-activations of dead
    latents, from the same matmul. With ``k_aux == 0`` it is empty (``[tokens, 0]``).

    Example::

        latents, _ = topk_encode(x, W_enc, b_enc, b_dec, jnp.zeros(d_sae, bool), 32, 0)
    """
    return _encode_forward(x, W_enc, b_enc, b_dec, aux_mask, k, k_aux)[0]


def _encode_forward(x, W_enc, b_enc, b_dec, aux_mask, k, k_aux):
    centred = x - b_dec
    # Pre-activations accumulate and stay in float32 whatever the compute dtype: a more exact
    # selection, and XLA:CPU's top_k on bfloat16 is ~20x slower than on float32.
    pre = jnp.dot(centred, W_enc, preferred_element_type=jnp.float32) + b_enc.astype(jnp.float32)
    values, indices = top_k(pre, k)
    aux_values, aux_indices = dead_top_k(pre, aux_mask, k_aux)
    out = (SparseLatents(jax.nn.relu(values), indices), SparseLatents(jax.nn.relu(aux_values), aux_indices))
    return out, (centred, W_enc, (indices, values > 0), (aux_indices, aux_values > 0), aux_mask)


def _scatter_grads(centred, W_enc, indices, g):
    """(d W_enc, d b_enc) of selected pre-activations with cotangent ``g``: scatter-adds of tokens·k rows."""
    flat = indices.reshape(-1)
    g_b_enc = jnp.zeros(W_enc.shape[1], jnp.float32).at[flat].add(g.reshape(-1).astype(jnp.float32))
    contributions = (g[:, :, None] * centred[:, None, :]).reshape(-1, centred.shape[1])
    # Sums of many rows accumulate in float32 whatever the compute dtype.
    g_W_enc = jnp.zeros(W_enc.shape[::-1], jnp.float32).at[flat].add(contributions.astype(jnp.float32)).T
    return g_W_enc.astype(W_enc.dtype), g_b_enc.astype(W_enc.dtype)


def _encode_backward(k, k_aux, residuals, cotangents):
    centred, W_enc, (indices, positive), (aux_indices, aux_positive), aux_mask = residuals
    (g_main, _), (g_aux, _) = cotangents
    g = g_main * positive  # relu'
    g_W_enc, g_b_enc = _scatter_grads(centred, W_enc, indices, g)
    if k_aux:  # AuxK's rows only cost a scatter when some latent is dead, only as wide as its selection
        def add_aux(width, grads):
            aux_W_enc, aux_b_enc = _scatter_grads(centred, W_enc, aux_indices[:, :width],
                                                  (g_aux * aux_positive)[:, :width])
            return grads[0] + aux_W_enc, grads[1] + aux_b_enc

        g_W_enc, g_b_enc = jax.lax.cond(jnp.any(aux_mask), lambda grads: _by_dead_count(aux_mask, k_aux, add_aux, grads),
                                        lambda grads: grads, (g_W_enc, g_b_enc))
    g_b_dec = -(W_enc @ g_b_enc)
    # d x = Σ_j g_tj W_enc[:, i_tj]: unused (and so removed by XLA) when x is data.
    g_x = jnp.einsum("tk,tkd->td", g, jnp.take(W_enc.T, indices, axis=0))
    g_x = g_x + jnp.einsum("tk,tkd->td", g_aux * aux_positive, jnp.take(W_enc.T, aux_indices, axis=0))
    return g_x.astype(centred.dtype), g_W_enc, g_b_enc, g_b_dec, None


topk_encode.defvjp(lambda *args: _encode_forward(*args), _encode_backward)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def sparse_decode(latents: SparseLatents, W_dec: jax.Array, keep_rows: bool = True) -> jax.Array:
    """``Σ_j values_j · W_dec[indices_j]`` per token (no ``b_dec``), gathering only active rows.

    ``keep_rows`` keeps the gathered rows for the backward pass (saving a second gather, up to
    1 GiB). Pass False under a ``lax.cond`` (AuxK): a cond's autodiff materialises the residuals
    of the branch not taken as zeros, and ``tokens·k_aux·d_in`` zeros cost more than the gather.
    """
    return jnp.einsum("tk,tkd->td", latents.values, jnp.take(W_dec, latents.indices, axis=0))


_MAX_SAVED_ROWS_BYTES = 2**30


def _decode_forward(latents, W_dec, keep_rows):
    rows = jnp.take(W_dec, latents.indices, axis=0)
    out = jnp.einsum("tk,tkd->td", latents.values, rows)
    saved = rows if keep_rows and rows.size * rows.dtype.itemsize <= _MAX_SAVED_ROWS_BYTES else None
    return out, (latents, W_dec, saved)


def _decode_backward(keep_rows, residuals, g):
    latents, W_dec, rows = residuals
    rows = jnp.take(W_dec, latents.indices, axis=0) if rows is None else rows
    g_values = jnp.einsum("td,tkd->tk", g, rows)
    flat = latents.indices.reshape(-1)
    contributions = (latents.values[:, :, None] * g[:, None, :]).reshape(-1, g.shape[1])
    g_W_dec = jnp.zeros(W_dec.shape, jnp.float32).at[flat].add(contributions.astype(jnp.float32)).astype(W_dec.dtype)
    return SparseLatents(g_values, None), g_W_dec


sparse_decode.defvjp(_decode_forward, _decode_backward)


@jax.custom_vjp
def dead_decode(aux: SparseLatents, W_dec: jax.Array, dead_mask: jax.Array) -> jax.Array:
    """:func:`sparse_decode` of AuxK's latents (from :func:`dead_top_k`), only as wide as the dead count needs.

    Its own VJP, so that autodiff never runs through the width switch: a switch's autodiff keeps
    zeroed residuals of every branch not taken, which cost 5-25% of a step at full width.
    """
    return _by_dead_count(dead_mask, aux.values.shape[1], lambda width, aux, W_dec: _decode_forward(
        _first(aux, width), W_dec, False)[0], aux, W_dec)


def _dead_decode_forward(aux, W_dec, dead_mask):
    return dead_decode(aux, W_dec, dead_mask), (aux, W_dec, dead_mask)


def _dead_decode_backward(residuals, g):
    aux, W_dec, dead_mask = residuals
    k_aux = aux.values.shape[1]

    def backward(width, aux, W_dec, g):
        g_latents, g_W_dec = _decode_backward(False, (_first(aux, width), W_dec, None), g)
        return jnp.pad(g_latents.values, ((0, 0), (0, k_aux - width))), g_W_dec

    g_values, g_W_dec = _by_dead_count(dead_mask, k_aux, backward, aux, W_dec, g)
    return SparseLatents(g_values, None), g_W_dec, None


dead_decode.defvjp(_dead_decode_forward, _dead_decode_backward)


def dense_from_sparse(latents: SparseLatents, d_sae: int) -> jax.Array:
    """[tokens, d_sae] dense activations (for small batches, exports and checks)."""
    dense = jnp.zeros((latents.values.shape[0], d_sae), latents.values.dtype)
    return dense.at[jnp.arange(latents.values.shape[0])[:, None], latents.indices].add(latents.values)
