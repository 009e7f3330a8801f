from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.config import ConfigError
from jaxinterp.eval import explained_variance, fraction_variance_unexplained
from jaxinterp.sae import dense_from_sparse, make_architecture, mean_l0, normalize_decoder, remove_parallel_decoder_grad
from jaxinterp.sae.batch_topk import batch_topk_activations
from jaxinterp.sae.jumprelu import heaviside, jump_relu
from jaxinterp.sae.matryoshka import prefix_sizes
from jaxinterp.sae.sparse import aux_widths, dead_decode, sparse_decode, top_k, topk_encode
from jaxinterp.train import build_members, init_state, learning_rate, make_optimizer, member_configs, train_step
from tests.stores import sparse_activations


def sae_cfg(architecture="topk", **overrides):
    from jaxinterp.schemas import sae_config

    return {**sae_config(architecture, n_latents=128, k=4).to_dict(), **overrides}


def test_fvu_definition():
    x = jax.random.normal(jax.random.key(0), (64, 8)) + 5.0
    assert float(fraction_variance_unexplained(x, x)) == 0.0
    assert float(fraction_variance_unexplained(x, jnp.broadcast_to(x.mean(0), x.shape))) == pytest.approx(1.0)
    # about the mean, not about zero: predicting zeros is much worse than 1 for offset data
    assert float(explained_variance(x, jnp.zeros_like(x))) < -1.0


def test_topk_encode_decode_are_consistent_with_dense_math():
    arch = make_architecture(sae_cfg(k=5))
    sample = jnp.full((4, 16), 0.3)
    params, state = arch.init(jax.random.key(1), 16, 64, sample)
    x = jax.random.normal(jax.random.key(2), (10, 16))
    latents = arch.encode(params, state, x)
    dense = dense_from_sparse(latents, 64)
    assert float(mean_l0(dense)) <= 5
    pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
    kth = jnp.sort(pre, axis=-1)[:, -5][:, None]
    np.testing.assert_allclose(dense, jnp.where(pre >= kth, jax.nn.relu(pre), 0.0), atol=1e-6)
    np.testing.assert_allclose(arch.decode(params, latents), dense @ params["W_dec"] + params["b_dec"], atol=1e-5)
    np.testing.assert_allclose(params["W_enc"], params["W_dec"].T)
    np.testing.assert_allclose(params["b_dec"], 0.3)
    np.testing.assert_allclose(jnp.linalg.norm(params["W_dec"], axis=-1), 1.0, atol=1e-6)


def _use_small_chunks(monkeypatch, n_latents: int, encoder_tokens: int, row_bytes: int) -> None:
    """The CPU kernels' token chunks at test sizes: ``encoder_tokens`` per encoder chunk, and
    gather/scatter chunks of ``row_bytes`` (the production sizes would hold a whole test batch)."""
    from jaxinterp.sae import sparse

    monkeypatch.setattr(sparse, "_MIN_ENCODER_CHUNK", encoder_tokens)
    monkeypatch.setattr(sparse, "_ENCODER_CHUNK_BYTES", encoder_tokens * 4 * n_latents)
    monkeypatch.setattr(sparse, "_CHUNK_BYTES", row_bytes)


@pytest.mark.parametrize("n_dead,chunked", [(0, False), (1, False), (3, False), (5, False), (30, False),
                                            (0, True), (5, True), (30, True)])
def test_sparse_kernels_give_the_gradients_of_dense_autodiff(n_dead, chunked, monkeypatch):
    # chunked: the CPU kernels' token chunks (encoder 16 tokens, gathers/scatters 8), 53 tokens so
    # that the last chunk is zero-padded.
    B, d, n, k, k_aux = (53 if chunked else 64), 16, 96, 5, 16
    if chunked:
        from jaxinterp.sae import sparse

        _use_small_chunks(monkeypatch, n, encoder_tokens=16, row_bytes=8 * 4 * k_aux * d)
        assert sparse._row_chunk(jnp.zeros((B, k_aux)), d) == 8 and B % 8 and B % 16
    assert aux_widths(k_aux) == (1, 4, 16)  # so the dead counts above use every width, and none
    keys = jax.random.split(jax.random.key(0), 6)
    x = jax.random.normal(keys[0], (B, d))
    W_enc, b_enc = jax.random.normal(keys[1], (d, n)), 0.1 * jax.random.normal(keys[2], (n,))
    b_dec, W_dec = 0.1 * jax.random.normal(keys[3], (d,)), jax.random.normal(keys[4], (n, d))
    dead = jnp.zeros(n, bool).at[jax.random.permutation(keys[5], n)[:n_dead]].set(True)

    def ours(W_enc, b_enc, b_dec, W_dec):
        main, aux = topk_encode(x, W_enc, b_enc, b_dec, dead, k, k_aux)
        x_hat = sparse_decode(main, W_dec) + b_dec
        return jnp.sum((x - x_hat) ** 2) + jnp.sum((0.3 * x - dead_decode(aux, W_dec, dead)) ** 2)

    def reference(W_enc, b_enc, b_dec, W_dec):
        pre = (x - b_dec) @ W_enc + b_enc
        values, indices = jax.lax.top_k(pre, k)
        x_hat = jnp.einsum("tk,tkd->td", jax.nn.relu(values), W_dec[indices]) + b_dec
        aux_values, aux_indices = jax.lax.top_k(jnp.where(dead, pre, -jnp.inf), k_aux)
        aux_values = jax.nn.relu(jnp.where(jnp.isfinite(aux_values), aux_values, 0.0))
        return jnp.sum((x - x_hat) ** 2) + jnp.sum((0.3 * x - jnp.einsum("tk,tkd->td", aux_values, W_dec[aux_indices])) ** 2)

    args = (W_enc, b_enc, b_dec, W_dec)
    if chunked:  # also without AuxK: its [tokens, 0] outputs go through the chunks too
        main, aux = topk_encode(x, W_enc, b_enc, b_dec, dead, k, 0)
        assert aux.values.shape == (B, 0)
        np.testing.assert_array_equal(main.indices, jax.lax.top_k((x - b_dec) @ W_enc + b_enc, k)[1])
    value, grads = jax.jit(jax.value_and_grad(ours, argnums=(0, 1, 2, 3)))(*args)
    expected_value, expected = jax.jit(jax.value_and_grad(reference, argnums=(0, 1, 2, 3)))(*args)
    assert float(value) == pytest.approx(float(expected_value), rel=1e-6)
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))


def test_sharded_top_k_equals_global_top_k():
    from jax.sharding import NamedSharding, PartitionSpec as P

    from jaxinterp.mesh import make_mesh

    mesh = make_mesh(data=2, model=4)
    pre = jax.random.normal(jax.random.key(0), (64, 96))
    with jax.set_mesh(mesh):
        sharded = jax.device_put(pre, NamedSharding(mesh, P("data", "model")))
        values, indices = jax.jit(lambda p: top_k(p, 5))(sharded)
    expected_values, expected_indices = jax.lax.top_k(pre, 5)
    np.testing.assert_array_equal(values, expected_values)
    np.testing.assert_array_equal(indices, expected_indices)


def test_block_top_k_equals_lax_top_k():
    from jaxinterp.sae.sparse import _block_top_k

    pre = jax.random.normal(jax.random.key(0), (64, 1024))
    # the CPU path: the 16 best blocks of 16 by their maxima, then the top 16 among their latents
    for p in (pre, pre + 3.0 * (jnp.arange(1024) % 16 == 15), jnp.where(jnp.arange(1024) % 97 == 0, pre, -jnp.inf)):
        values, indices = jax.jit(lambda p: _block_top_k(p, 16))(p)
        expected_values, expected_indices = jax.lax.top_k(p, 16)
        np.testing.assert_array_equal(values, expected_values)
        finite = np.isfinite(np.asarray(expected_values))
        np.testing.assert_array_equal(np.asarray(indices)[finite], np.asarray(expected_indices)[finite])
    # ties: the same values, each taken once
    tied = jnp.round(pre)
    values, indices = jax.jit(lambda p: _block_top_k(p, 16))(tied)
    np.testing.assert_array_equal(values, jax.lax.top_k(tied, 16)[0])
    np.testing.assert_array_equal(jnp.take_along_axis(tied, indices, 1), values)
    assert all(len(set(row)) == 16 for row in np.asarray(indices).tolist())


@pytest.mark.parametrize("n_dead", [5, 40])
def test_topk_loss_with_dead_latents_is_the_same_on_a_sharded_mesh(n_dead):
    # AuxK's dense-matmul path (5 dead ≤ k_aux 16) and its per-token path (40) under a
    # ('data' 2, 'model' 4) mesh give the one-device loss and gradients.
    from jax.sharding import NamedSharding

    from jaxinterp.mesh import make_mesh
    from jaxinterp.sae import LossContext
    from jaxinterp.sae.topk import SPEC
    from jaxinterp.train.state import param_shardings

    arch = make_architecture(sae_cfg(n_latents=256, k=8))
    x = jax.random.normal(jax.random.key(0), (64, 32))
    params, arch_state = arch.init(jax.random.key(1), 32, 256, x)
    params = {**params, "b_enc": 0.1 * jax.random.normal(jax.random.key(2), (256,))}
    dead = jnp.zeros(256, bool).at[jax.random.permutation(jax.random.key(3), 256)[:n_dead]].set(True)

    def loss(params, x, dead):
        return arch.loss(params, arch_state, x, x, LossContext(jnp.int32(10), dead))[0]

    step = jax.jit(jax.value_and_grad(loss))
    value, grads = step(params, x, dead)
    mesh = make_mesh(data=2, model=4)
    with jax.set_mesh(mesh):
        sharded = jax.device_put(params, param_shardings(params, SPEC, mesh))
        value8, grads8 = step(sharded, jax.device_put(x, NamedSharding(mesh, jax.sharding.PartitionSpec("data"))),
                              jax.device_put(dead, NamedSharding(mesh, jax.sharding.PartitionSpec("model"))))
    assert float(value8) == pytest.approx(float(value), rel=1e-5)
    for name in grads:
        np.testing.assert_allclose(grads8[name], grads[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_jumprelu_straight_through_gradients():
    z = jnp.array([[0.5, 1.0004, 2.0, 0.9996]])
    threshold = jnp.ones(4)
    g_z, g_threshold = jax.grad(lambda z, t: jnp.sum(jump_relu(z, t, 0.001)), argnums=(0, 1))(z, threshold)
    np.testing.assert_allclose(g_z, [[0, 1, 1, 0]])
    # −(θ/ε)·K((z−θ)/ε): only entries within ε/2 of the threshold get a threshold gradient
    np.testing.assert_allclose(g_threshold, [0, -1000, 0, -1000], rtol=1e-5)
    g_z, g_threshold = jax.grad(lambda z, t: jnp.sum(heaviside(z, t, 0.001)), argnums=(0, 1))(z, threshold)
    np.testing.assert_allclose(g_z, 0)
    np.testing.assert_allclose(g_threshold, [0, -1000, 0, -1000], rtol=1e-5)


def test_batch_topk_keeps_batch_times_k_activations():
    pre = jax.random.normal(jax.random.key(0), (32, 64))
    acts, kth = batch_topk_activations(pre, 3)
    assert int(jnp.sum(acts > 0)) == 32 * 3
    assert float(jnp.min(jnp.where(acts > 0, acts, jnp.inf))) == float(kth)
    assert len(set(np.asarray(jnp.sum(acts > 0, axis=1)).tolist())) > 1  # varies per token


def test_matryoshka_prefixes():
    assert prefix_sizes("", 64) == [8, 16, 32, 64]
    assert prefix_sizes("10,40", 64) == [10, 40, 64]
    with pytest.raises(ValueError, match="increase"):
        prefix_sizes("40,10", 64)


def test_parallel_gradient_is_removed():
    params = normalize_decoder({"W_dec": jax.random.normal(jax.random.key(3), (8, 4))})
    grads = {"W_dec": jax.random.normal(jax.random.key(4), (8, 4))}
    tx = remove_parallel_decoder_grad()
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(jnp.sum(updates["W_dec"] * params["W_dec"], axis=-1), 0.0, atol=1e-6)


def run_config(**fields):
    from jaxinterp.schemas import sae_config

    base = {"hook": "h", "lr": 3e-3, "steps": 300, "batch_size": 256, "warmup_steps": 10, "decay_fraction": 0.2,
            "grad_clip": 1.0, "sweep": "", "sae": sae_config("topk", n_latents=128, k=4)}
    return {**base, **fields}


@pytest.mark.parametrize("architecture, extra, max_fvu, max_l0", [
    ("topk", {}, 0.15, 4), ("topk", {"multi_topk": True}, 0.15, 4), ("batch_topk", {}, 0.15, 8),
    ("matryoshka", {}, 0.15, 8), ("jumprelu", {"l0_coefficient": 0.05}, 0.15, 12),
    ("relu", {"l1_coefficient": 0.7}, 0.25, 16),  # L1 shrinkage: the known FVU/L0 cost of ReLU SAEs
])
def test_every_architecture_learns_sparse_synthetic_data(architecture, extra, max_fvu, max_l0):
    x = jnp.asarray(sparse_activations(4096, 32, n_features=48, active=3))
    sweep = f"{architecture}: architecture={architecture}" + "".join(f", {k}={v}" for k, v in extra.items())
    members = build_members(run_config(sweep=sweep))
    state = init_state(jax.random.key(0), {"h": x[:1024]}, members)
    step = jax.jit(partial(train_step, members=members, dead_tokens=10**6))
    for i in range(300):
        state, metrics = step(state, {"h": x[(i % 16) * 256: (i % 16 + 1) * 256]})
    metrics = metrics[architecture]
    assert float(metrics["fvu"]) < max_fvu, metrics
    assert float(metrics["l0"]) <= max_l0, metrics
    assert int(state.step) == 300 and float(state.tokens_seen) == 300 * 256
    if members[0].architecture.unit_norm_decoder:
        np.testing.assert_allclose(jnp.linalg.norm(state.saes[architecture].params["W_dec"], axis=-1), 1.0, atol=1e-5)


def test_sweep_members_are_parsed_and_checked():
    members = member_configs(run_config(sweep="small: k=2; n_latents=256, architecture=batch_topk; hook=other, lr=0.01"))
    assert list(members) == ["small", "n_latents256_architecturebatch_topk", "hookother_lr0.01"]
    assert members["small"]["sae"]["k"] == 2 and members["small"]["sae"]["n_latents"] == 128
    assert members["n_latents256_architecturebatch_topk"]["sae"]["architecture"] == "batch_topk"
    assert members["hookother_lr0.01"]["hook"] == "other" and members["hookother_lr0.01"]["lr"] == 0.01
    assert list(member_configs(run_config())) == ["sae"]
    with pytest.raises(ConfigError, match="unknown member field 'width'"):
        member_configs(run_config(sweep="width=3"))
    with pytest.raises(ConfigError, match="'sweep.k' must be an int"):
        member_configs(run_config(sweep="k=many"))
    with pytest.raises(ConfigError, match="used twice"):
        member_configs(run_config(sweep="a: k=2; a: k=3"))


def test_optimizer_schedule_warms_up_and_decays():
    from jaxinterp.schemas import sae_config

    cfg = {"steps": 100, "warmup_steps": 10, "decay_fraction": 0.2, "grad_clip": 0.0}
    optimizer = make_optimizer(cfg, 1e-3)
    params = {"W_dec": jnp.eye(4), "W_enc": jnp.eye(4)}
    state = optimizer.init(params)
    grads = {"W_dec": jnp.ones((4, 4)), "W_enc": jnp.ones((4, 4))}
    sizes = []
    for _ in range(100):
        updates, state = optimizer.update(grads, state, params)
        sizes.append(float(jnp.abs(updates["W_enc"]).max()))
    assert sizes[0] < sizes[9] < sizes[10] * 1.01 and sizes[50] == pytest.approx(1e-3, rel=1e-3) and sizes[99] < 1e-4
    assert learning_rate(0.0, 2**14) == pytest.approx(2e-3)
    assert learning_rate(0.0, 2**16) == pytest.approx(1e-3)
    for name in ("jumprelu", "relu"):
        assert learning_rate(0.0, 2**14, make_architecture(sae_config(name)).base_lr) == pytest.approx(2e-4)
    for name in ("topk", "batch_topk", "matryoshka"):  # a TopK-family transcoder: 4x, and sqrt(batch / 1024)
        sae_arch, transcoder = (make_architecture({**sae_config(name), "transcode": t}) for t in (False, True))
        assert learning_rate(0.0, 2**14, sae_arch.base_lr, 4096, sae_arch.lr_batch_reference) == pytest.approx(2e-3)
        assert learning_rate(0.0, 2**14, transcoder.base_lr, 1024, transcoder.lr_batch_reference) == pytest.approx(8e-3)
        assert learning_rate(0.0, 2**12, transcoder.base_lr, 4096, transcoder.lr_batch_reference) == pytest.approx(3.2e-2)
        assert learning_rate(0.0, 2**12, transcoder.base_lr, 256, transcoder.lr_batch_reference) == pytest.approx(8e-3)
    assert learning_rate(0.01, 2**12, 8e-3, 256, 1024) == 0.01  # a set lr is used as it is


def test_kth_largest_by_bits_equals_sorting():
    from jaxinterp.sae.batch_topk import kth_largest_nonnegative

    values = jax.nn.relu(jax.random.normal(jax.random.key(0), (64, 300)))
    for m in (1, 7, 64 * 3, 5000):
        assert float(kth_largest_nonnegative(values, m)) == float(jnp.sort(values.reshape(-1))[-m])


def test_bfloat16_compute_keeps_float32_master_weights():
    x = jnp.asarray(sparse_activations(1024, 32, n_features=48, active=3))
    results = {}
    for dtype in ("float32", "bfloat16"):
        members = build_members(run_config(sweep="a: k=4; b: architecture=jumprelu"))
        state = init_state(jax.random.key(0), {"h": x}, members)
        step = jax.jit(partial(train_step, members=members, dead_tokens=10**6, compute_dtype=dtype))
        for i in range(20):
            state, metrics = step(state, {"h": x[(i % 4) * 256: (i % 4 + 1) * 256]})
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.saes) if jnp.issubdtype(leaf.dtype, jnp.floating))
        results[dtype] = {name: float(m["fvu"]) for name, m in metrics.items()}
    for name in ("a", "b"):
        assert results["bfloat16"][name] == pytest.approx(results["float32"][name], rel=0.1, abs=0.02)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_chunked_kernels_equal_one_pass(dtype, monkeypatch):
    # The CPU token chunks change where intermediates live, not the arithmetic: loss and
    # gradients equal the one-pass kernels', in float32 and with bf16 compute.
    B, d, n, k, k_aux = 75, 16, 256, 6, 8
    keys = jax.random.split(jax.random.key(3), 5)
    x = jax.random.normal(keys[0], (B, d), dtype)
    params = tuple(jax.random.normal(key, shape, dtype) for key, shape in zip(keys[1:], ((d, n), (n,), (d,), (n, d))))
    dead = jnp.arange(n) % 5 == 0

    def loss(W_enc, b_enc, b_dec, W_dec):
        main, aux = topk_encode(x, W_enc, b_enc, b_dec, dead, k, k_aux)
        x_hat = sparse_decode(main, W_dec) + b_dec
        return jnp.sum(jnp.square(x - x_hat)) + jnp.sum(jnp.square(0.5 * x - dead_decode(aux, W_dec, dead)))

    one_pass = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(*params)
    _use_small_chunks(monkeypatch, n, encoder_tokens=16, row_bytes=4 * 4 * k_aux * d)
    chunked = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(*params)
    for got, want in zip(jax.tree.leaves(chunked), jax.tree.leaves(one_pass)):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


def test_bfloat16_topk_selects_on_float32_pre_activations():
    # bf16 inputs, float32-accumulated pre-activations: the selection equals the float32 one on
    # the same bf16 values, and the gradients come back in the inputs' dtypes.
    x, W_enc = (jax.random.normal(jax.random.key(i), shape, jnp.bfloat16) for i, shape in ((0, (64, 16)), (1, (16, 96))))
    b_enc, b_dec, none_dead = jnp.zeros(96, jnp.bfloat16), jnp.zeros(16, jnp.bfloat16), jnp.zeros(96, bool)
    latents, _ = topk_encode(x, W_enc, b_enc, b_dec, none_dead, 8, 0)
    reference = jax.lax.top_k(x.astype(jnp.float32) @ W_enc.astype(jnp.float32), 8)
    assert latents.values.dtype == jnp.float32
    np.testing.assert_array_equal(np.sort(latents.indices, 1), np.sort(reference[1], 1))

    def loss(W_enc, x):
        return jnp.sum(sparse_decode(topk_encode(x, W_enc, b_enc, b_dec, none_dead, 8, 0)[0], W_enc.T) ** 2)

    g_W_enc, g_x = jax.grad(loss, argnums=(0, 1))(W_enc, x)
    assert g_W_enc.dtype == g_x.dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.isfinite(g_W_enc.astype(jnp.float32))))
