"""Cross-layer transcoders (Ameisen et al. 2025): the per-source decoder layout against a dense reference.

The reference written here builds what the module never does: the block-upper-triangular decoder
``[L·n, L·d_out]`` (zeros below the diagonal) and a block-diagonal encoder ``[L·d_in, L·n]``, and computes
ŷ, the loss and its gradients with plain matmuls on the concatenated layers.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxinterp.mesh import logical_sharding, make_mesh
from jaxinterp.sae import clt
from jaxinterp.sae.base import total_variance
from jaxinterp.sae.jumprelu import jump_relu
from jaxinterp.sae.spec import LATENT

L, D_IN, D_OUT, N, T, K = 3, 8, 8, 16, 32, 2


def samples(seed: int = 0, tokens: int = T) -> tuple[jax.Array, jax.Array]:
    """Inputs and targets ``[tokens, L, d]`` (numpy draws: no eager XLA op to compile per shape)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(tokens, L, D_IN)) + 0.5
    y = rng.normal(size=(tokens, L, D_OUT)) * np.arange(1.0, L + 1)[None, :, None] - 1.0
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)


def init(activation: str, seed: int = 0) -> dict[str, jax.Array]:
    x, y = samples(seed + 100, 256)
    params = clt.init_clt(jax.random.key(seed), L, D_IN, N, D_OUT, x, y, activation, k=K)
    # Off-init values everywhere, so that no term or gradient is trivially zero or symmetric.
    rng = np.random.default_rng(seed + 1)
    return {name: value + jnp.asarray(0.05 * rng.normal(size=value.shape), jnp.float32)
            for name, value in sorted(params.items())}


def dense_decoder(params) -> np.ndarray:
    """``[L·n, L·d_out]``: block (ℓ, L') = W_dec_ℓ[:, L' − ℓ] for L' ≥ ℓ, zeros below the diagonal."""
    dense = np.zeros((L * N, L * D_OUT), np.float32)
    for source in range(L):
        for target in range(source, L):
            dense[source * N:(source + 1) * N, target * D_OUT:(target + 1) * D_OUT] = np.asarray(
                params[f"W_dec_{source}"][:, target - source])
    return dense


def block_diagonal_encoder(params) -> np.ndarray:
    dense = np.zeros((L * D_IN, L * N), np.float32)
    for layer in range(L):
        dense[layer * D_IN:(layer + 1) * D_IN, layer * N:(layer + 1) * N] = np.asarray(params["W_enc"][layer])
    return dense


def reference_params(params) -> dict[str, jax.Array]:
    ref = {"W_enc": block_diagonal_encoder(params), "b_enc": params["b_enc"].reshape(-1),
           "W_dec": dense_decoder(params), "b_dec": params["b_dec"].reshape(-1)}
    if "log_threshold" in params:
        ref["log_threshold"] = params["log_threshold"].reshape(-1)
    return {name: jnp.asarray(value) for name, value in ref.items()}


def reference_acts(ref, x, activation, k, bandwidth):
    tokens = x.shape[0]
    pre = x.reshape(tokens, -1) @ ref["W_enc"] + ref["b_enc"]  # [T, L·n]
    if activation == "relu":
        return pre, jax.nn.relu(pre)
    if activation == "jumprelu":
        return pre, jump_relu(jax.nn.relu(pre), jnp.exp(ref["log_threshold"]), bandwidth)
    if activation == "topk":
        per_layer = pre.reshape(tokens, L, N)
        kth = jnp.sort(per_layer, axis=-1)[..., -k, None]
        return pre, jnp.where(per_layer >= kth, jax.nn.relu(per_layer), 0.0).reshape(tokens, -1)
    acts = jax.nn.relu(pre)
    kth = jax.lax.stop_gradient(jnp.sort(acts.reshape(-1))[-k * L * tokens])
    return pre, jnp.where(acts >= kth, acts, 0.0)


def reference_loss(ref, x, y, activation, k=K, l0=0.0, c=4.0, lp=0.0, bandwidth=1e-3, combine="concatenated"):
    """The loss with the dense decoder, on layers concatenated: ``y [T, L·d]``, latents ``[T, L·n]``."""
    tokens = x.shape[0]
    pre, acts = reference_acts(ref, x, activation, k, bandwidth)
    y_flat = y.reshape(tokens, -1)
    y_hat = acts @ ref["W_dec"] + ref["b_dec"]
    variance = total_variance(y_flat)  # = Σ_ℓ total_variance(y_ℓ): the variance of concatenated features
    total = jnp.sum(jnp.square(y_flat - y_hat))
    if combine == "concatenated":  # a row of the dense decoder is the latent's concatenated decoder vectors
        norms = jnp.linalg.norm(ref["W_dec"], axis=1)
    else:
        norms = jnp.stack([jnp.sum(jnp.stack([jnp.linalg.norm(ref["W_dec"][i, t * D_OUT:(t + 1) * D_OUT])
                                              for t in range(i // N, L)])) for i in range(L * N)])
    if activation in ("relu", "jumprelu"):
        total = total + l0 * jnp.sum(jnp.tanh(c * norms * acts))
    if activation == "jumprelu":
        total = total + lp * jnp.sum(jax.nn.relu(jnp.exp(ref["log_threshold"]) - pre) * norms)
    return total / variance, y_hat


def test_decode_equals_the_dense_block_triangular_decoder():
    params = init("relu")
    latents = jax.nn.relu(jax.random.normal(jax.random.key(5), (T, L, N)))
    expected = latents.reshape(T, L * N) @ dense_decoder(params) + params["b_dec"].reshape(-1)
    y_hat = jax.jit(clt.decode)(params, latents)
    assert y_hat.shape == (T, L, D_OUT)
    np.testing.assert_allclose(y_hat.reshape(T, -1), expected, rtol=1e-5, atol=1e-5)
    # A latent of the last layer writes only to the last layer; one of layer 0 to every layer.
    only_last = jnp.zeros((1, L, N)).at[0, L - 1, 3].set(2.0)
    np.testing.assert_allclose(clt.decode(params, only_last)[0, :L - 1], params["b_dec"][:L - 1], atol=1e-7)


# (activation, l0_coefficient, pre_act_coefficient, bandwidth): large penalties and a wide STE kernel so
# that every term and the threshold's straight-through gradient weigh in the comparison.
LOSS_CASES = [("jumprelu", 0.3, 0.1, 0.5), ("relu", 0.3, 0.0, 1e-3), ("topk", 0.0, 0.0, 1e-3),
              ("batch_topk", 0.0, 0.0, 1e-3)]


@pytest.mark.parametrize("activation,l0,lp,bandwidth", LOSS_CASES)
def test_loss_and_gradients_equal_the_dense_reference(activation, l0, lp, bandwidth):
    params, (x, y) = init(activation), samples(1)
    ours = jax.jit(jax.value_and_grad(partial(clt.loss, activation=activation, k=K, l0_coefficient=l0,
                                              pre_act_coefficient=lp, bandwidth=bandwidth), has_aux=True))
    (value, aux), grads = ours(params, x, y)
    ref = reference_params(params)
    (ref_value, ref_y_hat), ref_grads = jax.value_and_grad(
        partial(reference_loss, activation=activation, l0=l0, lp=lp, bandwidth=bandwidth), has_aux=True)(ref, x, y)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    np.testing.assert_allclose(aux.y_hat.reshape(T, -1), ref_y_hat, rtol=1e-5, atol=1e-5)
    assert 0.0 < float(aux.terms["fvu"]) < 10.0
    per_layer = [jnp.sum(jnp.square(y[:, i] - ref_y_hat.reshape(T, L, D_OUT)[:, i])) / total_variance(y[:, i])
                 for i in range(L)]
    np.testing.assert_allclose(aux.fvu_per_layer, per_layer, rtol=1e-5)

    # Only the per-source blocks exist: the module never creates a gradient for a below-diagonal block.
    assert sorted(grads) == sorted(params)
    assert all(grads[name].shape == params[name].shape for name in params)
    tol = {"rtol": 2e-4, "atol": 2e-6}
    for source in range(L):
        for target in range(source, L):
            block = ref_grads["W_dec"][source * N:(source + 1) * N, target * D_OUT:(target + 1) * D_OUT]
            np.testing.assert_allclose(grads[f"W_dec_{source}"][:, target - source], block, **tol)
        enc_block = ref_grads["W_enc"][source * D_IN:(source + 1) * D_IN, source * N:(source + 1) * N]
        np.testing.assert_allclose(grads["W_enc"][source], enc_block, **tol)
    for name in ("b_enc", "b_dec", "log_threshold"):
        if name in params:
            np.testing.assert_allclose(grads[name].reshape(-1), ref_grads[name], **tol)
            assert float(jnp.max(jnp.abs(grads[name]))) > 1e-4, name  # a comparison of non-zero numbers


def test_sum_of_norms_penalty_equals_the_reference():
    params, (x, y) = init("relu"), samples(2)
    value, _ = clt.loss(params, x, y, "relu", l0_coefficient=0.3, norm_combine="sum")
    ref_value, _ = reference_loss(reference_params(params), x, y, "relu", l0=0.3, combine="sum")
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    concatenated, _ = clt.loss(params, x, y, "relu", l0_coefficient=0.3)
    assert float(concatenated) < float(value)  # ‖concatenation‖ < Σ norms: a smaller penalty weight


def test_decoder_norms_equal_the_explicit_double_loop():
    params = init("relu")
    concatenated, summed = np.zeros((L, N)), np.zeros((L, N))
    for source in range(L):
        for i in range(N):
            vectors = [np.asarray(params[f"W_dec_{source}"][i, target - source]) for target in range(source, L)]
            concatenated[source, i] = np.sqrt(sum(float(v @ v) for v in vectors))
            summed[source, i] = sum(np.linalg.norm(v) for v in vectors)
    np.testing.assert_allclose(clt.decoder_norms(params), concatenated, rtol=1e-6)
    np.testing.assert_allclose(clt.decoder_norms(params, "sum"), summed, rtol=1e-6)
    with pytest.raises(ValueError, match="decoder norm"):
        clt.decoder_norms(params, "max")


def test_topk_keeps_k_per_token_per_layer():
    params, (x, _) = init("topk"), samples(3)
    latents, kth = clt.encode(params, x, "topk", k=K)
    pre = clt.pre_activations(params, x)
    positive = jnp.sum(pre > 0, axis=-1)
    np.testing.assert_array_equal(jnp.sum(latents > 0, axis=-1), jnp.minimum(K, positive))
    assert int(jnp.sum(positive >= K)) > 0.9 * T * L  # mostly exactly k: not a vacuous count
    kth_pre = jnp.sort(pre, axis=-1)[..., -K, None]
    np.testing.assert_allclose(latents, jnp.where(pre >= kth_pre, jax.nn.relu(pre), 0.0), atol=1e-7)
    assert float(kth) == 0.0


def test_batch_topk_keeps_k_layers_tokens_over_the_whole_batch():
    params, (x, _) = init("batch_topk"), samples(4)
    latents, kth = clt.encode(params, x, "batch_topk", k=K)
    assert int(jnp.sum(latents > 0)) == K * L * T
    assert float(kth) == float(jnp.min(jnp.where(latents > 0, latents, jnp.inf)))
    # Across layers: per-token-per-layer counts vary (it is not a per-layer top-k).
    assert len(np.unique(np.asarray(jnp.sum(latents > 0, axis=-1)))) > 1
    # Inference with a threshold: relu(pre)·1[pre > threshold], no batch selection.
    pre = clt.pre_activations(params, x)
    inferred, _ = clt.encode(params, x, "batch_topk", k=K, threshold=kth)
    np.testing.assert_allclose(inferred, jnp.where(pre > kth, pre, 0.0), atol=1e-7)


def test_jumprelu_is_zero_below_its_threshold():
    params, (x, _) = init("jumprelu"), samples(5)
    latents, _ = clt.encode(params, x, "jumprelu", k=K)
    pre, threshold = clt.pre_activations(params, x), jnp.exp(params["log_threshold"])
    np.testing.assert_allclose(latents, jnp.where(pre > threshold, pre, 0.0), atol=1e-7)
    assert int(jnp.sum((pre > 0) & (pre <= threshold))) > 0  # some positive pre-activations are cut
    assert int(jnp.sum(latents > 0)) > 0


def test_decoder_is_block_triangular_in_the_pytree_and_axes_name_the_latent_dim():
    params = init("jumprelu")
    decoders = sorted(name for name in params if name.startswith("W_dec"))
    assert decoders == [f"W_dec_{source}" for source in range(L)]
    assert [params[name].shape for name in decoders] == [(N, L - source, D_OUT) for source in range(L)]
    assert sum(params[name].size for name in decoders) == N * D_OUT * L * (L + 1) // 2
    assert sum(leaf.size for leaf in jax.tree.leaves(params)) == (
        L * D_IN * N + L * N + L * D_OUT + L * N + N * D_OUT * L * (L + 1) // 2)
    mesh = make_mesh(data=4, model=2)
    for name, value in params.items():
        axes = clt.CLT_PARAM_AXES[name]
        assert len(axes) == value.ndim and axes.count(LATENT) == (name != "b_dec"), name
        if name != "b_dec":  # every param but b_dec [L, d_out] has one latent axis, of size n
            assert value.shape[axes.index(LATENT)] == N, name
            assert logical_sharding(axes, value.shape, mesh).spec[axes.index(LATENT)] == "model", name


def test_init_centres_pre_activations_and_scales_decoders_to_each_target():
    x, y = samples(6, 512)
    params = clt.init_clt(jax.random.key(0), L, D_IN, N, D_OUT, x, y, "jumprelu", k=K)
    np.testing.assert_allclose(params["b_dec"], jnp.mean(y, axis=0), rtol=1e-5, atol=1e-6)
    pre = clt.pre_activations(params, x)
    np.testing.assert_allclose(jnp.mean(pre, axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(jnp.linalg.norm(params["W_enc"], axis=1), 0.1, rtol=1e-5)
    # Decoder vectors into target L' all share one norm (∝ 1/√(L' + 1), the sources adding into it) ...
    into = [jnp.concatenate([jnp.linalg.norm(params[f"W_dec_{s}"][:, t - s], axis=-1) for s in range(t + 1)])
            for t in range(L)]
    for norms in into:
        np.testing.assert_allclose(norms, norms[0], rtol=1e-5)
    # ... 1/√(L' + 1) where that prediction stays below the target, else shrunk to the target's centred norm.
    centred = lambda a: jnp.sum(jnp.square(a - jnp.mean(a, axis=0)), axis=(0, 2))
    for scale in (1.0, 1e-3):  # MLP outputs of a large and of a tiny model
        params = clt.init_clt(jax.random.key(0), L, D_IN, N, D_OUT, x, scale * y, "jumprelu", k=K)
        predicted = centred(clt.decode(params, clt.encode(params, x, "jumprelu", K)[0]))
        unshrunk = np.array([float(jnp.linalg.norm(params["W_dec_0"][0, t])) * np.sqrt(t + 1) for t in range(L)])
        for t in range(L):
            if np.isclose(unshrunk[t], 1.0, rtol=1e-5):
                assert predicted[t] <= centred(scale * y)[t] * (1 + 1e-4), (scale, t)
            else:
                assert unshrunk[t] < 1.0
                np.testing.assert_allclose(predicted[t], centred(scale * y)[t], rtol=1e-4)
        assert (scale == 1.0) == bool(np.allclose(unshrunk, 1.0, rtol=1e-5)), unshrunk  # only the tiny one shrinks
    fires = jnp.mean(pre > jnp.exp(params["log_threshold"]), axis=0)
    np.testing.assert_allclose(fires, K / N, atol=2 / 512)
    assert "log_threshold" not in clt.init_clt(jax.random.key(0), L, D_IN, N, D_OUT, x, y, "topk")
    with pytest.raises(ValueError, match="activation"):
        clt.init_clt(jax.random.key(0), L, D_IN, N, D_OUT, x, y, "gated")


def test_sharded_latents_give_the_same_loss():
    params, (x, y) = init("topk"), samples(7)
    value = jax.jit(partial(clt.loss, activation="topk", k=K))(params, x, y)[0]
    mesh = make_mesh(data=4, model=2)
    sharded = {name: jax.device_put(p, logical_sharding(clt.CLT_PARAM_AXES[name], p.shape, mesh))
               for name, p in params.items()}
    with jax.set_mesh(mesh):
        sharded_value = jax.jit(partial(clt.loss, activation="topk", k=K))(sharded, x, y)[0]
    np.testing.assert_allclose(sharded_value, value, rtol=1e-5)


def ground_truth_data(tokens: int = 256, n_true: int = N, active: int = 2):
    """``x_ℓ = s_ℓ E_ℓ`` of sparse non-negative codes ``s`` (``active`` per token and layer) and a random
    ground-truth CLT's ``y = Σ_{ℓ ≤ L'} s_ℓ W[ℓ→L'] + b``, through the dense reference decoder."""
    keys = jax.random.split(jax.random.key(11), 6)
    scores = jax.random.uniform(keys[0], (tokens, L, n_true))
    chosen = scores >= jnp.sort(scores, axis=-1)[..., -active, None]
    codes = chosen * jax.random.uniform(keys[1], (tokens, L, n_true), minval=0.5, maxval=1.5)
    E = jax.random.normal(keys[2], (L, n_true, D_IN))
    x = jnp.einsum("tln,lnd->tld", codes, E / jnp.linalg.norm(E, axis=-1, keepdims=True))
    x = x + 0.01 * jax.random.normal(keys[3], x.shape)
    W = jax.random.normal(keys[4], (L * n_true, L * D_OUT)) / np.sqrt(D_OUT)
    W = W * np.kron(np.triu(np.ones((L, L))), np.ones((n_true, D_OUT)))
    y = (codes.reshape(tokens, -1) @ W).reshape(tokens, L, D_OUT) + jax.random.normal(keys[5], (L, D_OUT))
    return x, y


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_training_halves_the_loss_on_a_ground_truth_clt(activation):
    x, y = ground_truth_data()
    params = clt.init_clt(jax.random.key(3), L, D_IN, N, D_OUT, x, y, activation, k=2)
    objective = partial(clt.loss, activation=activation, k=2, l0_coefficient=0.1)
    tx = optax.adam(1e-2)

    @jax.jit
    def train(params):
        def step(carry, _):
            params, opt_state = carry
            (value, _), grads = jax.value_and_grad(objective, has_aux=True)(params, x, y)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        (params, _), values = jax.lax.scan(step, (params, tx.init(params)), None, length=200)
        return params, values

    trained, values = train(params)
    initial, final = float(objective(params, x, y)[0]), float(objective(trained, x, y)[0])
    assert np.all(np.isfinite(values))
    assert final < 0.5 * initial, (initial, final)
