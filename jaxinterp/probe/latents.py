"""SAE latents as probe features, kept sparse: never a dense ``[texts, d_sae]`` matrix.

Latents are encoded batch by batch and stored in compressed-row form. k-sparse probing
(SAEBench; Gurnee et al. 2023) only needs the class-mean difference of every latent, computed
from the non-zeros, and a dense matrix over the ``k_max`` latents it keeps.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.sae import dense_latents

__all__ = ["SparseRows", "encode_sparse", "mean_difference", "dense_columns", "pool_sparse"]


class SparseRows(NamedTuple):
    """Compressed sparse rows: row ``i``'s non-zeros are ``values[indptr[i]:indptr[i+1]]`` at ``indices``."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    n_cols: int

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1


@partial(jax.jit, static_argnums=(0, 1))
def _encode_dense(architecture, d_sae: int, params, arch_state, batch):
    # the SAE's params are arguments: closed over, they would be compile-time constants that XLA folds
    return dense_latents(architecture.encode(params, arch_state, batch), d_sae)


def encode_sparse(sae, x: np.ndarray, batch_size: int = 1024) -> SparseRows:
    """Encodes raw activations ``x`` with a :class:`~jaxinterp.export.LoadedSAE` (a run's or an
    imported one), batch by batch, keeping only the non-zero latents."""
    d_sae = int(sae.sae.d_sae)
    indptr, indices, values = [np.zeros(1, np.int64)], [], []
    for first in range(0, len(x), batch_size):
        dense = np.asarray(_encode_dense(sae.architecture, d_sae, sae.params, sae.arch_state,
                                         jnp.asarray(x[first: first + batch_size])))
        rows, cols = np.nonzero(dense)
        indices.append(cols.astype(np.int32))
        values.append(dense[rows, cols].astype(np.float32))
        indptr.append(indptr[-1][-1] + np.cumsum(np.bincount(rows, minlength=len(dense))))
    return SparseRows(np.concatenate(indptr), np.concatenate(indices), np.concatenate(values), d_sae)


def _row_of_each_entry(sparse: SparseRows) -> np.ndarray:
    return np.repeat(np.arange(sparse.n_rows), np.diff(sparse.indptr))


def mean_difference(sparse: SparseRows, targets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``[n_cols]`` ranking score over ``rows``: |mean(class 1) − mean(class 0)| for binary targets,
    max over classes c of |mean(c) − mean(not c)| for multiclass."""
    in_rows = np.zeros(sparse.n_rows, bool)
    in_rows[rows] = True
    entry_row = _row_of_each_entry(sparse)
    keep = in_rows[entry_row]
    classes = np.unique(targets[rows])
    score = np.zeros(sparse.n_cols)
    for c in classes[1:] if len(classes) == 2 else classes:
        member = targets[entry_row[keep]] == c
        n_c = np.sum(targets[rows] == c)
        sum_c = np.bincount(sparse.indices[keep][member], sparse.values[keep][member], sparse.n_cols)
        sum_rest = np.bincount(sparse.indices[keep][~member], sparse.values[keep][~member], sparse.n_cols)
        score = np.maximum(score, np.abs(sum_c / n_c - sum_rest / (len(rows) - n_c)))
    return score


def dense_columns(sparse: SparseRows, columns: np.ndarray) -> np.ndarray:
    """``[n_rows, len(columns)]`` dense values of the chosen columns (zero where a row lacks one)."""
    where = np.full(sparse.n_cols, -1, np.int64)
    where[columns] = np.arange(len(columns))
    out = np.zeros((sparse.n_rows, len(columns)), np.float32)
    slot = where[sparse.indices]
    chosen = slot >= 0
    out[_row_of_each_entry(sparse)[chosen], slot[chosen]] = sparse.values[chosen]
    return out


def pool_sparse(sparse: SparseRows, group: np.ndarray, n_groups: int, pooling: str) -> SparseRows:
    """Pools token rows into one row per group (text) by ``mean`` or ``max``, staying sparse.

    SAEBench pools latents, not activations: encode every token, then average per text.
    """
    entry_group = group[_row_of_each_entry(sparse)].astype(np.int64)
    keys, inverse = np.unique(entry_group * sparse.n_cols + sparse.indices, return_inverse=True)
    if pooling == "mean":
        rows_per_group = np.bincount(group, minlength=n_groups)
        values = np.bincount(inverse, sparse.values, len(keys)) / rows_per_group[keys // sparse.n_cols]
    elif pooling == "max":
        values = np.zeros(len(keys))
        np.maximum.at(values, inverse, sparse.values)
    else:
        raise ValueError(f"pooling {pooling!r} cannot pool sparse latents (mean or max)")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(keys // sparse.n_cols, minlength=n_groups))])
    return SparseRows(indptr, (keys % sparse.n_cols).astype(np.int32), values.astype(np.float32), sparse.n_cols)
