import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxinterp.eval import explained_variance, fraction_variance_unexplained, l0
from jaxinterp.sae import normalize_decoder, remove_parallel_decoder_grad, topk
from jaxinterp.train import init_state, make_optimizer, train_step


def test_fvu_definition():
    x = jax.random.normal(jax.random.key(0), (64, 8)) + 5.0
    assert float(fraction_variance_unexplained(x, x)) == 0.0
    assert float(fraction_variance_unexplained(x, jnp.broadcast_to(x.mean(0), x.shape))) == pytest.approx(1.0)
    # about the mean, not about zero: predicting zeros is much worse than 1 for offset data
    assert float(explained_variance(x, jnp.zeros_like(x))) < -1.0


def test_encode_decode_are_consistent_with_dense_math():
    params = topk.init_params(jax.random.key(1), 16, 64, jnp.full((16,), 0.3))
    x = jax.random.normal(jax.random.key(2), (10, 16))
    latents = topk.encode(params, x, 5)
    dense = topk.dense_latents(latents, 64)
    assert float(l0(dense)) <= 5
    pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
    kth = jnp.sort(pre, axis=-1)[:, -5][:, None]
    np.testing.assert_allclose(dense, jnp.where(pre >= kth, jax.nn.relu(pre), 0.0), atol=1e-6)
    np.testing.assert_allclose(topk.decode(params, latents), dense @ params["W_dec"] + params["b_dec"], atol=1e-5)
    np.testing.assert_allclose(params["W_enc"], params["W_dec"].T)
    np.testing.assert_allclose(jnp.linalg.norm(params["W_dec"], axis=-1), 1.0, atol=1e-6)


def test_parallel_gradient_is_removed():
    params = normalize_decoder({"W_dec": jax.random.normal(jax.random.key(3), (8, 4))})
    grads = {"W_dec": jax.random.normal(jax.random.key(4), (8, 4))}
    tx = remove_parallel_decoder_grad()
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(jnp.sum(updates["W_dec"] * params["W_dec"], axis=-1), 0.0, atol=1e-6)


def test_training_on_sparse_data_reaches_low_fvu():
    from tests.stores import sparse_activations

    x = jnp.asarray(sparse_activations(4096, 32, n_features=48, active=3))
    cfg = {"lr": 3e-3, "steps": 300, "warmup_steps": 10, "decay_fraction": 0.2, "grad_clip": 1.0,
           "sae": {"n_latents": 128}}
    optimizer = make_optimizer(cfg)
    state = init_state(jax.random.key(0), x.mean(0), 32, 128, optimizer)
    step = jax.jit(lambda s, b: train_step(s, b, k=4, optimizer=optimizer, dead_tokens=10**6))
    first = None
    for i in range(cfg["steps"]):
        state, metrics = step(state, x[(i % 16) * 256: (i % 16 + 1) * 256])
        first = first if first is not None else float(metrics["fvu"])
    assert first > 0.5 and float(metrics["fvu"]) < 0.1
    assert int(state.step) == 300 and float(state.tokens_seen) == 300 * 256
    np.testing.assert_allclose(jnp.linalg.norm(state.params["W_dec"], axis=-1), 1.0, atol=1e-5)


def test_optimizer_schedule_warms_up_and_decays():
    cfg = {"lr": 1e-3, "steps": 100, "warmup_steps": 10, "decay_fraction": 0.2, "grad_clip": 0.0,
           "sae": {"n_latents": 4}}
    optimizer = make_optimizer(cfg)
    params = {"W_dec": jnp.eye(4), "W_enc": jnp.eye(4)}
    state = optimizer.init(params)
    counts = [s.count for s in jax.tree.leaves(state, is_leaf=lambda n: isinstance(n, optax.ScaleByAdamState))
              if isinstance(s, optax.ScaleByAdamState)]
    assert counts  # adam is in the chain
    from jaxinterp.train.state import learning_rate

    assert learning_rate({"lr": 0.0, "sae": {"n_latents": 2**14}}) == pytest.approx(2e-4)
    assert learning_rate({"lr": 0.0, "sae": {"n_latents": 2**16}}) == pytest.approx(1e-4)
