"""Gated, matching-pursuit and top-AFA SAEs: SAELens' own loader encodes our exports identically, the
gradients are the ones intended, top-AFA's rule on hand-computed cases, and short training runs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxinterp.eval.metrics import approximate_feature_activation, code_norm
from jaxinterp.eval.plots import plot_zf
from jaxinterp.export.portable import PortableSAE
from jaxinterp.export.saelens import export_saelens
from jaxinterp.sae import gated, matching_pursuit, top_afa
from jaxinterp.sae.base import LossContext, mean_l0

D_IN, D_SAE = 16, 64


def _ctx(d_sae: int = D_SAE) -> LossContext:
    return LossContext(jnp.int32(0), jnp.zeros((d_sae,), bool))


def _inputs(n: int = 256, scale: float = 3.0, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, D_IN)) * scale + 0.3).astype(np.float32)


def _gated_params(seed: int = 1):
    arch = gated.make({})
    params, state = arch.init(jax.random.key(seed), D_IN, D_SAE, _inputs())
    keys = jax.random.split(jax.random.key(seed + 1), 3)
    extra = {name: 0.3 * jax.random.normal(key, (D_SAE,)) for name, key in zip(("b_gate", "r_mag", "b_mag"), keys)}
    return arch, {**params, **extra}, state


def _saelens(tmp_path, architecture: str, weights: dict, k: int = 0):
    sae_lens = pytest.importorskip("sae_lens")
    sae = PortableSAE(architecture, weights, D_IN, D_SAE, k, "blocks.0.hook_resid_post", {"model_name": "tiny"})
    return sae_lens.SAE.load_from_disk(str(export_saelens(sae, str(tmp_path / architecture))))


def _torch_encode(sae, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch

    with torch.no_grad():
        latents = sae.encode(torch.from_numpy(x))
        return latents.numpy(), sae.decode(latents).numpy()


def test_gated_saelens_encodes_our_export_identically(tmp_path):
    arch, params, state = _gated_params()
    scale = 0.25  # trained on 0.25·x: the standard fold must give SAELens the same latents from raw x
    folded = gated.SPEC.fold_scales(params, scale, scale, False)
    x = _inputs(seed=5)
    sae = _saelens(tmp_path, "gated", gated.SPEC.to_portable(folded, state, {}))
    ref_latents, ref_x_hat = _torch_encode(sae, x)
    latents = np.asarray(arch.encode(params, state, jnp.asarray(scale * x)))
    assert 0 < (latents > 0).mean() < 1
    np.testing.assert_allclose(ref_latents, latents, atol=1e-5)
    np.testing.assert_allclose(ref_x_hat, np.asarray(arch.decode(params, jnp.asarray(latents))) / scale, atol=1e-4)


@pytest.mark.parametrize("threshold,stop_duplicate", [(0.0, True), (2.5, True), (2.5, False), (0.0, False)])
def test_matching_pursuit_saelens_encodes_our_export_identically(tmp_path, threshold, stop_duplicate):
    k, scale = 12, 0.5
    cfg = {"k": k, "residual_threshold": threshold, "stop_on_duplicate_support": stop_duplicate}
    arch = matching_pursuit.make(cfg)
    x = _inputs(seed=3)
    params, state = arch.init(jax.random.key(2), D_IN, D_SAE, scale * x)
    folded = matching_pursuit.SPEC.fold_scales(params, scale, scale, False)
    weights = matching_pursuit.SPEC.to_portable(folded, state, cfg)
    sae = _saelens(tmp_path, "matching_pursuit", weights, k)
    assert (sae.cfg.max_iterations, sae.cfg.stop_on_duplicate_support) == (k, stop_duplicate)
    assert sae.cfg.residual_threshold == pytest.approx(threshold / scale)
    ref_latents, ref_x_hat = _torch_encode(sae, x)
    latents = np.asarray(arch.encode(params, state, jnp.asarray(scale * x))) / scale
    l0 = (latents > 0).sum(-1)
    assert l0.max() <= k and (threshold == 0 or l0.min() < k)  # the threshold stops some tokens early
    np.testing.assert_allclose(ref_latents, latents, atol=1e-5)
    np.testing.assert_allclose(ref_x_hat, np.asarray(arch.decode(params, jnp.asarray(latents * scale))) / scale,
                               atol=1e-4)
    # the portable form read back (options in arch_state) encodes raw x as SAELens does
    imported, imported_state = matching_pursuit.SPEC.from_portable(weights, {"k": k})
    np.testing.assert_allclose(np.asarray(matching_pursuit.make({"k": k}).encode(imported, imported_state, x)),
                               ref_latents, atol=1e-5)


def test_matching_pursuit_stops_on_a_repeated_latent():
    # one atom along z: step 1 takes all of it, step 2 finds nothing positive and (duplicate support) stops
    W_dec = jnp.eye(4, dtype=jnp.float32)
    z = jnp.asarray([[2.0, 1.0, 0.0, 0.0]])
    stopped = matching_pursuit.pursuit(W_dec, z, 4, 0.0, True)
    np.testing.assert_allclose(stopped.values, [[2.0, 1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(stopped.indices[:, :2], [[0, 1]])
    # non-orthogonal atoms: step 3 re-selects atom 1 with a positive coefficient; the update is applied,
    # then the token stops (stop_on_duplicate_support) or goes on to atom 2 again (0.01505)
    W_dec = jnp.asarray([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    z = jnp.asarray([[1.0, 1.0]])
    stopped = matching_pursuit.pursuit(W_dec, z, 4, 0.0, True)
    np.testing.assert_allclose(stopped.values, [[1.4, 0.192, 0.05376, 0.0]], atol=1e-6)
    np.testing.assert_array_equal(stopped.indices[:, :3], [[1, 2, 1]])
    going_on = matching_pursuit.pursuit(W_dec, z, 4, 0.0, False)
    np.testing.assert_allclose(going_on.values, [[1.4, 0.192, 0.05376, 0.0150528]], atol=1e-6)


def test_matching_pursuit_gradient_matches_finite_differences():
    cfg = {"k": 3, "residual_threshold": 0.0}
    arch = matching_pursuit.make(cfg)
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 5)))
        params, state = arch.init(jax.random.key(0), 5, 7, x)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)

        loss = jax.jit(lambda p: arch.loss(p, state, x, x, _ctx(7))[0])
        grads = jax.jit(jax.grad(loss))(params)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
        assert float(jnp.abs(grads["W_dec"]).max()) > 0
        directions = jax.tree.map(lambda a: jnp.asarray(np.random.default_rng(1).normal(size=a.shape)), params)
        eps = 1e-6
        plus = loss(jax.tree.map(lambda p, v: p + eps * v, params, directions))
        minus = loss(jax.tree.map(lambda p, v: p - eps * v, params, directions))
        analytic = sum(jnp.sum(g * v) for g, v in zip(jax.tree.leaves(grads), jax.tree.leaves(directions)))
        assert float(analytic) == pytest.approx(float((plus - minus) / (2 * eps)), rel=1e-5)


def test_gated_gradients_reach_every_parameter_and_the_aux_decoder_is_frozen():
    arch, params, state = _gated_params()
    x = jnp.asarray(_inputs())
    def grad_of(term=None):
        return jax.jit(jax.grad(lambda p: (lambda out: out[0] if term is None else out[1].terms[term])(
            arch.loss(p, state, x, x, _ctx()))))(params)

    grads = grad_of()
    for name in ("W_enc", "r_mag", "b_gate", "b_mag", "W_dec", "b_dec"):
        assert bool(jnp.all(jnp.isfinite(grads[name]))) and float(jnp.abs(grads[name]).max()) > 0, name
    aux = grad_of("aux_fvu")
    assert float(jnp.abs(aux["W_dec"]).max()) == 0 and float(jnp.abs(aux["b_gate"]).max()) > 0
    # the main reconstruction reaches the gate only through the magnitude path's shared W_enc
    fvu = grad_of("fvu")
    assert float(jnp.abs(fvu["b_gate"]).max()) == 0 and float(jnp.abs(fvu["r_mag"]).max()) > 0


@pytest.mark.parametrize("module", [gated, matching_pursuit, top_afa])
def test_transcoders_are_refused_naming_the_field(module):
    with pytest.raises(ValueError, match="sae.architecture"):
        module.make({"k": 4, "transcode": True})


def test_top_afa_rule_on_the_authors_worked_example():
    # etc/afa_step_by_step.ipynb of the reference code: AFA = ‖acts @ W_dec‖, two latents kept per token
    acts = jnp.asarray([[5.0, 4.0, 3.0], [1.0, 1.0, 1.0], [1.0, 10.0, 2.0]])
    W_dec = jnp.asarray([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    afa = approximate_feature_activation(acts @ W_dec)
    np.testing.assert_allclose(afa, [54.4059, 15.0, 67.8012], rtol=1e-5)
    mask = top_afa.top_afa_mask(acts, afa, jnp.linalg.norm(W_dec, axis=-1))
    np.testing.assert_array_equal(acts * mask, [[0, 4, 3], [0, 1, 1], [0, 10, 2]])


def test_top_afa_rule_by_hand():
    # sorted squares 16, 9, 1, 0 -> prefix norms 4, 5, √26 ≈ 5.099, (all: excluded)
    acts = jnp.asarray([[3.0, 0.0, 4.0, 1.0]] * 4)
    afa = jnp.asarray([5.0, 4.4, 4.6, 100.0])
    mask = np.asarray(top_afa.top_afa_mask(acts, afa, jnp.ones(4)))
    np.testing.assert_array_equal(mask, [[1, 0, 1, 0], [0, 0, 1, 0], [1, 0, 1, 0], [1, 0, 1, 1]])
    # AFA = ‖x − b_dec‖: (3, 4) from the centre
    b_dec = jnp.asarray([1.0, -1.0])
    np.testing.assert_allclose(approximate_feature_activation(jnp.asarray([[4.0, 3.0]]), b_dec), [5.0])
    np.testing.assert_allclose(code_norm(jnp.asarray([[3.0, 4.0]]), jnp.asarray([2.0, 0.5])), [np.sqrt(40.0)])


def test_top_afa_fold_is_exact():
    arch = top_afa.make({})
    x = _inputs(seed=4)
    params, state = arch.init(jax.random.key(3), D_IN, D_SAE, 0.2 * x)
    folded = top_afa.SPEC.fold_scales(params, 0.2, 0.2, False)
    weights = top_afa.SPEC.to_portable(folded, state, {})
    imported, imported_state = top_afa.SPEC.from_portable(weights, {})
    trained = np.asarray(arch.encode(params, state, jnp.asarray(0.2 * x)))
    np.testing.assert_allclose(np.asarray(arch.encode(imported, imported_state, x)), trained, atol=1e-5)
    assert 1 <= (trained > 0).sum(-1).min() and (trained > 0).sum(-1).max() < D_SAE


def test_zf_plot_writes_a_png(tmp_path):
    x = _inputs(n=300)
    latents = np.abs(np.random.default_rng(0).normal(size=(300, D_SAE))).astype(np.float32)
    path = plot_zf(x, latents, tmp_path / "zf.png", "test", b_dec=x.mean(0), max_tokens=200)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="tokens"):
        plot_zf(x, latents[:10], tmp_path / "bad.png", "test")


# Synthetic sparse data: 4 of 128 unit features per token, magnitudes U(0.5, 2), offset 0.5.
_FEATURES = np.random.default_rng(0).normal(size=(128, 32))
_FEATURES /= np.linalg.norm(_FEATURES, axis=1, keepdims=True)


def _sparse_batch(key: jax.Array, n: int = 512) -> jax.Array:
    active_key, magnitude_key = jax.random.split(key)
    active = jax.random.uniform(active_key, (n, 128)) < 4 / 128
    magnitudes = jax.random.uniform(magnitude_key, (n, 128), minval=0.5, maxval=2.0)
    return (active * magnitudes) @ jnp.asarray(_FEATURES, jnp.float32) + 0.5


# measured (200 adam steps at lr 1e-2, 512 tokens a step): FVU 0.20 / 0.14 / 0.09, L0 15 / 3.9 / 24.5
@pytest.mark.parametrize("module,cfg", [(gated, {"l1_coefficient": 2.0}), (matching_pursuit, {"k": 4}),
                                        (top_afa, {})], ids=["gated", "matching_pursuit", "top_afa"])
def test_short_training_reaches_a_reasonable_fvu(module, cfg):
    arch = module.make(cfg)
    params, state = arch.init(jax.random.key(0), 32, 128, _sparse_batch(jax.random.key(99)))
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, key, t):
        x = _sparse_batch(key)
        (loss, out), grads = jax.value_and_grad(arch.loss, has_aux=True)(params, state, x, x,
                                                                         LossContext(t, jnp.zeros(128, bool)))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if arch.unit_norm_decoder:
            params = {**params, "W_dec": params["W_dec"] / jnp.linalg.norm(params["W_dec"], axis=-1, keepdims=True)}
        return params, opt_state, loss, out.terms["fvu"], mean_l0(out.latents)

    losses = []
    for t in range(200):
        params, opt_state, loss, fvu, l0 = step(params, opt_state, jax.random.key(t), jnp.int32(t))
        losses.append(float(loss))
    assert np.mean(losses[-10:]) < 0.5 * losses[0]
    assert float(fvu) < 0.3 and 1 <= float(l0) <= 32, (float(fvu), float(l0))


def test_top_afa_rank_cap_is_exact():
    acts = jax.nn.relu(jax.random.normal(jax.random.key(5), (64, D_SAE)))
    norms = jnp.abs(jax.random.normal(jax.random.key(7), (D_SAE,))) + 0.5
    masks = jax.jit(lambda afa: (top_afa.top_afa_mask(acts, afa, norms, rank_cap=8),
                                 top_afa.top_afa_mask(acts, afa, norms, rank_cap=D_SAE)))
    for scale in (0.5, 3.0, 100.0):  # within the cap; past it for some tokens (the full-sort branch)
        capped, full = masks(jnp.abs(jax.random.normal(jax.random.key(6), (64,))) * scale)
        np.testing.assert_array_equal(capped, full)


def test_saelens_export_refuses_a_gated_transcoder(tmp_path):
    _, params, state = _gated_params()
    weights = gated.SPEC.to_portable(params, state, {})
    sae = PortableSAE("gated", weights, D_IN, D_SAE, 0, "blocks.0.ln2.hook_normalized", {},
                      target_hook="blocks.0.hook_mlp_out")
    with pytest.raises(ValueError, match="cannot hold a 'gated'"):
        export_saelens(sae, str(tmp_path / "gated"))


@pytest.mark.parametrize("architecture", ["gated", "matching_pursuit"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_saelens_files_import_and_encode_as_saelens_does(tmp_path, architecture, apply_b_dec):
    """SAELens gated / matching-pursuit directories read back by jaxinterp's importer encode as SAELens'
    own loader does, also with ``apply_b_dec_to_input: false`` (folded into the biases, or no b_dec)."""
    import json

    from jaxinterp.export import load_sae
    from jaxinterp.sae import dense_latents

    if architecture == "gated":
        _, params, state = _gated_params()
        weights = gated.SPEC.to_portable(params, state, {})
    else:
        arch = matching_pursuit.make({"k": 6})
        params, state = arch.init(jax.random.key(3), D_IN, D_SAE, _inputs())
        weights = matching_pursuit.SPEC.to_portable(params, state, {"residual_threshold": 0.5})
    sae_lens = pytest.importorskip("sae_lens")
    out = export_saelens(PortableSAE(architecture, weights, D_IN, D_SAE, 6, "blocks.0.hook_resid_post",
                                     {"model_name": "tiny"}), str(tmp_path / architecture))
    cfg = json.loads((out / "cfg.json").read_text())
    (out / "cfg.json").write_text(json.dumps({**cfg, "apply_b_dec_to_input": apply_b_dec}))
    x = _inputs(seed=7)
    ref_latents, ref_x_hat = _torch_encode(sae_lens.SAE.load_from_disk(str(out)), x)
    loaded = load_sae(str(out))
    assert loaded.architecture.name == architecture
    latents = np.asarray(dense_latents(loaded.encode(jnp.asarray(x)), D_SAE))
    assert (latents > 0).any()
    np.testing.assert_allclose(latents, ref_latents, atol=1e-5)
    np.testing.assert_allclose(np.asarray(loaded.decode(loaded.encode(jnp.asarray(x)))), ref_x_hat, atol=1e-4)
