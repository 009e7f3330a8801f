"""Synthetic activation stores, written through the real StoreWriter (for buffer/trainer tests)."""

import numpy as np

from jaxinterp.store import StoreWriter, plan_layout


def sparse_activations(n_tokens: int, d: int, n_features: int = 64, active: int = 4, seed: int = 0) -> np.ndarray:
    """Rows that are non-negative sums of ``active`` of ``n_features`` random unit directions."""
    rng = np.random.default_rng(seed)
    dictionary = rng.normal(size=(n_features, d)).astype(np.float32)
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    codes = np.zeros((n_tokens, n_features), np.float32)
    for row in range(n_tokens):
        codes[row, rng.choice(n_features, active, replace=False)] = rng.uniform(0.5, 2.0, active)
    return codes @ dictionary + 0.01 * rng.normal(size=(n_tokens, d)).astype(np.float32)


def write_store(url: str, activations: dict[str, np.ndarray], context_size: int = 16, chunk_mib: float = 1 / 256,
                shard_mib: float = 1 / 32, prepend_bos: bool = True) -> dict:
    """Writes ``{hook: [n, d]}`` as a complete store with token/doc/pos side arrays; returns the manifest."""
    first = next(iter(activations.values()))
    n_tokens, d_in = first.shape
    layout = plan_layout(d_in, 4, context_size, chunk_mib, shard_mib)
    manifest = {
        "model_name": "synthetic", "model_hash": "0", "model_class": "synthetic", "backend": "none",
        "hook_names": list(activations), "d_in": d_in, "dtype": "float32", "context_size": context_size,
        "prepend_bos": prepend_bos, "bos_token_id": 1, "separator_token_id": 2, "tokenizer": "none",
        "dataset_path": "synthetic", "dataset_hash": "0", "n_documents": 1, "n_tokens": n_tokens,
        "rows_per_chunk": layout.rows_per_chunk, "rows_per_shard": layout.rows_per_shard, "writer_version": 1,
    }
    writer = StoreWriter(url, manifest)
    rows = np.arange(n_tokens)
    for shard in writer.pending_shards():
        start, stop = writer.shard_rows(shard)
        data = {name: values[start:stop] for name, values in activations.items()}
        data.update(tokens=(rows[start:stop] % 500).astype(np.int32), doc=rows[start:stop] // 64,
                    pos=(rows[start:stop] % context_size).astype(np.int32))
        writer.write_shard(shard, data)
    return writer.finish()


def small_sparse_store(url: str, hook: str) -> str:
    """The trainer tests' store: 8,192 tokens of 32-d sparse activations in tiny chunks and shards."""
    write_store(url, {hook: sparse_activations(8192, 32, n_features=96, active=4)}, context_size=16,
                chunk_mib=2**-9, shard_mib=2**-6)
    return url
