"""TopK encoder and sparse decoder whose backward passes touch only the selected latents.

Autodiff through ``lax.top_k`` and a row gather would give dense ``[tokens, d_sae]`` cotangents
and a dense ``xᵀ·g`` for the encoder weight gradient, as costly as the forward matmul. Here the
encoder and decoder weight gradients are scatter-adds of the ``tokens·k`` selected rows, and the
``b_dec`` gradient is one mat-vec (``bench/sae_step.py`` records the measurements behind this).

On CPU these gathers and scatters run over chunks of tokens whose ``[chunk, k, d]`` intermediates
stay in cache (one ``[tokens·k, d]`` array is 300 MB at the bench shape, and writing it cost 4-10x
the arithmetic), and the top-k first picks the k best blocks of 16 latents by their maxima.

Latents live in an ambient ('data', 'model') mesh when there is one (``jax.set_mesh``); the
top-k over a latent axis sharded on 'model' is then a local top-k per shard, merged.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

__all__ = ["SparseLatents", "unchunked", "top_k", "dead_top_k", "topk_encode", "sparse_decode", "dead_decode", "aux_widths",
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


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


_BLOCK = 16


def _block_top_k(pre: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """``lax.top_k`` of [tokens, n] via the k blocks of 16 latents with the largest maxima.

    Exact: the k-th largest value is at least the k-th largest block maximum, so every top-k value
    lies in one of those blocks. Blocks stay in index order, so ties pick the lowest index as
    ``lax.top_k`` does. 1.5x faster than ``lax.top_k`` on CPU at 9,216 latents (bench/RESULTS.md,
    "Chunked CPU kernels").
    """
    n = pre.shape[-1]
    if not _on_cpu() or n % _BLOCK or n // _BLOCK < 4 * k:
        return jax.lax.top_k(pre, k)
    blocks = pre.reshape(*pre.shape[:-1], n // _BLOCK, _BLOCK)
    best_blocks = jnp.sort(jax.lax.top_k(jnp.max(blocks, axis=-1), k)[1], axis=-1)
    candidates = jnp.take_along_axis(blocks, best_blocks[..., None], axis=-2).reshape(*pre.shape[:-1], k * _BLOCK)
    values, where = jax.lax.top_k(candidates, k)
    return values, jnp.take_along_axis(best_blocks, where // _BLOCK, axis=-1) * _BLOCK + where % _BLOCK


def top_k(pre: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """``lax.top_k`` over the last (latent) axis; sharded when the ambient mesh splits latents.

    With 'model' of size m each shard keeps its own top k, the m·k candidates are gathered and the
    top k of those kept: the same set as a global top-k, for k ≤ latents per shard.
    """
    shards = _model_axis_size()
    mesh = jax.sharding.get_abstract_mesh()
    data = ("data" if not mesh.empty and "data" in mesh.axis_names and mesh.shape["data"] > 1
            and pre.shape[0] % mesh.shape["data"] == 0 else None)
    if shards == 1 or pre.shape[-1] % shards or k > pre.shape[-1] // shards:
        if data is None:
            return _block_top_k(pre, k)
        # Rows split over 'data' by hand: left to XLA, a wide top-k (AuxK's k_aux) gathered the whole batch.
        return jax.shard_map(lambda rows: tuple(_block_top_k(rows, k)), in_specs=P(data, None),
                             out_specs=(P(data, None), P(data, None)), check_vma=False)(pre)

    def local(block):
        values, indices = _block_top_k(block, k)
        indices = indices + jax.lax.axis_index("model") * block.shape[-1]
        values = jax.lax.all_gather(values, "model", axis=1, tiled=True)
        indices = jax.lax.all_gather(indices, "model", axis=1, tiled=True)
        best, where = jax.lax.top_k(values, k)
        return best, jnp.take_along_axis(indices, where, axis=1)

    return jax.shard_map(local, in_specs=P(data, "model"), out_specs=(P(data, None), P(data, None)),
                         check_vma=False)(pre)


def aux_widths(k_aux: int) -> tuple[int, ...]:
    """The static widths AuxK runs at with up to k_aux dead latents: k_aux, k_aux/4, k_aux/16 (at least 1).

    Only ``min(dead, k_aux)`` of AuxK's ``k_aux`` latents can be non-zero, so with few dead
    latents the narrowest width holding them all gives the same loss and gradients with smaller
    matmuls (at batch 1,024: 0.072 s with 5 dead vs 0.085 s with 200, bench/auxk.py).
    """
    return tuple(sorted({max(k_aux >> shift, 1) for shift in (0, 2, 4)})) if k_aux else ()


def _by_dead_count(dead_mask: jax.Array, k_aux: int, branch, *operands):
    """``branch(width, shared, *operands)`` by the number of dead latents.

    Up to ``k_aux`` dead, every token's AuxK selection is every dead latent (``shared``): the
    narrowest of :func:`aux_widths` that holds them runs, and its gathers and scatter-adds are
    small dense matmuls over those latents. With more, each token's top ``k_aux`` among them runs
    at full width.
    """
    widths = aux_widths(k_aux)
    index = jnp.searchsorted(jnp.asarray(widths), jnp.sum(dead_mask))  # len(widths) past k_aux
    branches = [partial(branch, width, True) for width in widths] + [partial(branch, k_aux, False)]
    return jax.lax.switch(index, branches, *operands)


def _dead_latents(dead_mask: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
    """The first ``width`` dead latents' indices (0 past the last) and which slots hold one."""
    ids = jnp.nonzero(dead_mask, size=width, fill_value=0)[0].astype(jnp.int32)
    return ids, jnp.arange(width) < jnp.sum(dead_mask)


def _first(latents: SparseLatents, width: int) -> SparseLatents:
    return SparseLatents(latents.values[:, :width], latents.indices[:, :width])


def dead_top_k(pre: jax.Array, dead_mask: jax.Array, k_aux: int,
               bias: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Top ``k_aux`` of ``pre + bias`` among ``dead_mask`` latents (zeros where fewer are dead).

    Runs only when some latent is dead. Up to ``k_aux`` dead it is every dead latent, as wide as
    :func:`aux_widths` needs (no top-k); with more, a per-token top-k at full width (it costs as
    much as the main one). Columns past the selection are zeros. ``bias`` is added inside that
    branch, so that ``pre + bias`` is not written out on steps with no dead latent.
    """
    empty = (jnp.zeros((pre.shape[0], k_aux), pre.dtype), jnp.zeros((pre.shape[0], k_aux), jnp.int32))
    if not k_aux:
        return empty

    def select(width, shared, pre):
        if shared:  # every dead latent, in index order; the slots past them are zeros
            ids, valid = _dead_latents(dead_mask, width)
            values = jnp.take(pre, ids, axis=1) + (0.0 if bias is None else bias[ids])
            values, indices = jnp.where(valid, values, -jnp.inf), jnp.broadcast_to(ids, values.shape)
        else:
            values, indices = top_k(jnp.where(dead_mask, pre if bias is None else pre + bias, -jnp.inf), width)
        pad = ((0, 0), (0, k_aux - width))
        return jnp.pad(jnp.where(jnp.isfinite(values), values, 0.0), pad), jnp.pad(indices, pad)

    return jax.lax.cond(jnp.any(dead_mask), lambda pre: _by_dead_count(dead_mask, k_aux, select, pre),
                        lambda pre: empty, pre)


# Tokens per chunk: a chunk's [chunk, k, d] float32 gathers and scatter updates stay near 4 MiB
# (at the bench shape the chunked scatter-add took 0.027 s against 0.11 s for one [tokens·k, d]
# array), and the encoder's [chunk, d_sae] pre-activations near 32 MiB but never under 512 tokens,
# where the matmul keeps its rate (bench/RESULTS.md, "Chunked CPU kernels").
_CHUNK_BYTES = 4 * 2**20
_ENCODER_CHUNK_BYTES = 32 * 2**20
_MIN_ENCODER_CHUNK = 512


# Set by :func:`unchunked` (scoped to a ``with`` block, like ``jax.set_mesh``).
_UNCHUNKED: contextvars.ContextVar[bool] = contextvars.ContextVar("jaxinterp_unchunked", default=False)


@contextlib.contextmanager
def unchunked() -> Iterator[None]:
    """Inside it, programs traced on a one-device CPU take the whole-array form they take on an
    accelerator or a multi-device mesh (the memory planner compiles one device's share this way)."""
    token = _UNCHUNKED.set(True)
    try:
        yield
    finally:
        _UNCHUNKED.reset(token)


def _chunk_tokens(n_tokens: int, row_bytes: int, budget: int, least: int = 1) -> int:
    """Tokens per chunk, ``budget // row_bytes`` or a nearby divisor of ``n_tokens`` (no padding).

    All of them off CPU or in a multi-device mesh: XLA partitions or parallelises the whole op there.
    """
    mesh = jax.sharding.get_abstract_mesh()
    target = max(least, budget // row_bytes, 1)
    if not _on_cpu() or not (mesh.empty or mesh.size == 1) or target >= n_tokens or _UNCHUNKED.get():
        return n_tokens
    return next((c for c in range(target, target // 2, -1) if n_tokens % c == 0), target)


def _over_chunks(body, init, xs: tuple[jax.Array, ...], chunk: int):
    """``lax.scan(body, init, xs)`` over chunks of ``chunk`` tokens (leading axis, zero-padded);
    the stacked outputs come back as [tokens, ...] arrays. One plain call when one chunk holds all."""
    n_tokens = xs[0].shape[0]
    if chunk >= n_tokens:
        return body(init, xs)
    pad = -n_tokens % chunk
    chunks = tuple(jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape(-1, chunk, *a.shape[1:]) for a in xs)
    carry, out = jax.lax.scan(body, init, chunks)
    return carry, jax.tree.map(lambda o: o.reshape(o.shape[0] * chunk, *o.shape[2:])[:n_tokens], out)


def _row_chunk(indices: jax.Array, d: int) -> int:
    """Tokens per chunk for gathers and scatter-adds of ``indices.shape[1]`` rows of ``d`` floats per token."""
    return _chunk_tokens(indices.shape[0], 4 * max(indices.shape[1], 1) * d, _CHUNK_BYTES)


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

    def select(_, chunk):
        # Pre-activations accumulate and stay in float32 whatever the compute dtype: a more exact
        # selection, and XLA:CPU's top_k on bfloat16 is ~20x slower than on float32.
        product = jnp.dot(chunk[0], W_enc, preferred_element_type=jnp.float32)
        bias = b_enc.astype(jnp.float32)
        return None, (top_k(product + bias, k), dead_top_k(product, aux_mask, k_aux, bias))

    chunk = _chunk_tokens(x.shape[0], 4 * W_enc.shape[1], _ENCODER_CHUNK_BYTES, _MIN_ENCODER_CHUNK)
    _, ((values, indices), (aux_values, aux_indices)) = _over_chunks(select, None, (centred,), chunk)
    out = (SparseLatents(jax.nn.relu(values), indices), SparseLatents(jax.nn.relu(aux_values), aux_indices))
    return out, (centred, W_enc, (indices, values > 0), (aux_indices, aux_values > 0), aux_mask)


def _rows(table: jax.Array, indices: jax.Array) -> jax.Array:
    """``table[indices]`` without the out-of-bounds select of ``jnp.take`` (top-k indices are in bounds)."""
    return jnp.asarray(table).at[indices].get(mode="promise_in_bounds")


def _add_outer_products(acc: jax.Array, indices: jax.Array, coefficients: jax.Array, rows: jax.Array) -> jax.Array:
    """``acc[indices[t, j]] += coefficients[t, j] · rows[t]`` for every token t and slot j (float32)."""
    contributions = (coefficients[:, :, None] * rows[:, None, :]).reshape(-1, rows.shape[1])
    return acc.at[indices.reshape(-1)].add(contributions.astype(jnp.float32))


def _scatter_grads(centred, W_enc, indices, g):
    """(d W_enc, d b_enc) of selected pre-activations with cotangent ``g``: scatter-adds of tokens·k rows."""
    flat = indices.reshape(-1)
    g_b_enc = jnp.zeros(W_enc.shape[1], jnp.float32).at[flat].add(g.reshape(-1).astype(jnp.float32))
    # Rows of W_encᵀ are contiguous; sums of many rows accumulate in float32 whatever the compute dtype.
    g_W_enc, _ = _over_chunks(lambda acc, a: (_add_outer_products(acc, a[1], a[2], a[0]), None),
                              jnp.zeros(W_enc.shape[::-1], jnp.float32), (centred, indices, g),
                              _row_chunk(indices, centred.shape[1]))
    return g_W_enc.T.astype(W_enc.dtype), g_b_enc.astype(W_enc.dtype)


def _encode_backward(k, k_aux, residuals, cotangents):
    centred, W_enc, (indices, positive), (aux_indices, aux_positive), aux_mask = residuals
    (g_main, _), (g_aux, _) = cotangents
    g = g_main * positive  # relu'
    g_W_enc, g_b_enc = _scatter_grads(centred, W_enc, indices, g)
    if k_aux:  # AuxK's gradients only cost anything when some latent is dead (see _by_dead_count)
        def add_aux(width, shared, grads):
            g_width = (g_aux * aux_positive)[:, :width]
            if shared:  # the same latents for every token: one [width, d_in] matmul
                ids = aux_indices[0, :width]
                rows = jnp.dot(g_width.T, centred, preferred_element_type=jnp.float32)
                return (grads[0].at[:, ids].add(rows.T.astype(grads[0].dtype)),
                        grads[1].at[ids].add(jnp.sum(g_width, axis=0, dtype=jnp.float32).astype(grads[1].dtype)))
            aux_W_enc, aux_b_enc = _scatter_grads(centred, W_enc, aux_indices[:, :width], g_width)
            return grads[0] + aux_W_enc, grads[1] + aux_b_enc

        g_W_enc, g_b_enc = jax.lax.cond(jnp.any(aux_mask), lambda grads: _by_dead_count(aux_mask, k_aux, add_aux, grads),
                                        lambda grads: grads, (g_W_enc, g_b_enc))
    g_b_dec = -(W_enc @ g_b_enc)
    # d x = Σ_j g_tj W_enc[:, i_tj]: unused (and so removed by XLA) when x is data.
    g_x = jnp.einsum("tk,tkd->td", g, jnp.take(W_enc.T, indices, axis=0))
    g_x = g_x + jnp.einsum("tk,tkd->td", g_aux * aux_positive, jnp.take(W_enc.T, aux_indices, axis=0))
    return g_x.astype(centred.dtype), g_W_enc, g_b_enc, g_b_dec, None


topk_encode.defvjp(lambda *args: _encode_forward(*args), _encode_backward)


@jax.custom_vjp
def sparse_decode(latents: SparseLatents, W_dec: jax.Array) -> jax.Array:
    """``Σ_j values_j · W_dec[indices_j]`` per token (no ``b_dec``), gathering only active rows."""
    def chunk_decode(_, chunk):
        values, indices = chunk
        return None, jnp.einsum("tk,tkd->td", values, _rows(W_dec, indices))

    return _over_chunks(chunk_decode, None, tuple(latents), _row_chunk(latents.indices, W_dec.shape[1]))[1]


def _decode_forward(latents, W_dec):
    return sparse_decode(latents, W_dec), (latents, W_dec)


def _decode_backward(residuals, g):
    latents, W_dec = residuals

    def chunk_backward(g_W_dec, chunk):
        values, indices, g = chunk
        g_values = jnp.einsum("td,tkd->tk", g, _rows(W_dec, indices))
        return _add_outer_products(g_W_dec, indices, values, g), g_values

    g_W_dec, g_values = _over_chunks(chunk_backward, jnp.zeros(W_dec.shape, jnp.float32), (*latents, g),
                                     _row_chunk(latents.indices, W_dec.shape[1]))
    return SparseLatents(g_values, None), g_W_dec.astype(W_dec.dtype)


sparse_decode.defvjp(_decode_forward, _decode_backward)


@jax.custom_vjp
def dead_decode(aux: SparseLatents, W_dec: jax.Array, dead_mask: jax.Array) -> jax.Array:
    """:func:`sparse_decode` of AuxK's latents (from :func:`dead_top_k`), only as wide as the dead count needs.

    Its own VJP, so that autodiff never runs through the width switch: a switch's autodiff keeps
    zeroed residuals of every branch not taken, which cost 5-25% of a step at full width.
    """
    def decode(width, shared, aux, W_dec):
        if shared:  # the same latents for every token: one [tokens, width] x [width, d_in] matmul
            return jnp.einsum("tk,kd->td", aux.values[:, :width], _rows(W_dec, aux.indices[0, :width]))
        return sparse_decode(_first(aux, width), W_dec)

    return _by_dead_count(dead_mask, aux.values.shape[1], decode, aux, W_dec)


def _dead_decode_forward(aux, W_dec, dead_mask):
    return dead_decode(aux, W_dec, dead_mask), (aux, W_dec, dead_mask)


def _dead_decode_backward(residuals, g):
    aux, W_dec, dead_mask = residuals
    k_aux = aux.values.shape[1]

    def backward(width, shared, aux, W_dec, g):
        if shared:
            ids = aux.indices[0, :width]
            g_values = jnp.einsum("td,kd->tk", g, _rows(W_dec, ids))
            rows = jnp.einsum("tk,td->kd", aux.values[:, :width], g, preferred_element_type=jnp.float32)
            g_W_dec = jnp.zeros(W_dec.shape, jnp.float32).at[ids].add(rows).astype(W_dec.dtype)
        else:
            g_latents, g_W_dec = _decode_backward((_first(aux, width), W_dec), g)
            g_values = g_latents.values
        return jnp.pad(g_values, ((0, 0), (0, k_aux - width))), g_W_dec

    g_values, g_W_dec = _by_dead_count(dead_mask, k_aux, backward, aux, W_dec, g)
    return SparseLatents(g_values, None), g_W_dec, None


dead_decode.defvjp(_dead_decode_forward, _dead_decode_backward)


def dense_from_sparse(latents: SparseLatents, d_sae: int) -> jax.Array:
    """[tokens, d_sae] dense activations (for small batches, exports and checks)."""
    dense = jnp.zeros((latents.values.shape[0], d_sae), latents.values.dtype)
    return dense.at[jnp.arange(latents.values.shape[0])[:, None], latents.indices].add(latents.values)
