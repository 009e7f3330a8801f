"""What every one-hook architecture promises through its spec, checked for each built-in (and a custom
one defined in tests/), so an architecture added to BUILTINS is covered without a new test. A multi-hook
one (its spec's ``layers``: clt, crosscoder) has its own tests (tests/test_clt*.py, tests/test_crosscoder.py)."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench.sae_step import dense_vjp_topk_loss
from jaxinterp.mesh import batch_sharding, make_mesh
from jaxinterp.sae import BUILTINS, LossContext, architecture_spec, dense_latents, make_architecture
from jaxinterp.sae.spec import LATENT, one_hook_builtins
from jaxinterp.train import Member, init_state, make_optimizer, train_step
from jaxinterp.train.state import abstract_state, state_shardings
from tests.stores import sparse_activations
from tests.test_sae import sae_cfg

ARCHITECTURES = [*one_hook_builtins(), "tests.custom_architecture"]
D_IN, D_SAE, HOOK = 32, 128, "blocks.0.hook_resid_post"


def _setup(name, **overrides):
    spec = architecture_spec(name)
    cfg = {**sae_cfg(name), **{field: f.default for field, f in spec.fields.items()}, "architecture": name,
           "transcode": False, **overrides}
    x = jnp.asarray(sparse_activations(256, D_IN, n_features=96))
    arch = make_architecture(cfg)
    params, arch_state = arch.init(jax.random.key(0), D_IN, D_SAE, x)
    return cfg, arch, spec, params, arch_state, x


def _dense(arch, params, arch_state, x):
    return np.asarray(dense_latents(arch.encode(params, arch_state, x), D_SAE))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_init_shapes_follow_the_spec_axes(name):
    cfg, arch, spec, params, arch_state, x = _setup(name)
    assert arch.name == spec.name == name
    for param, value in params.items():
        axes = spec.axes(param)
        assert axes is not None or param in ("b_dec", "W_skip"), f"{param} has no logical axes"
        if axes is not None:
            assert len(axes) == value.ndim, param
            assert all(value.shape[dim] == D_SAE for dim, axis in enumerate(axes) if axis == LATENT), param
    for key, value in arch_state.items():
        axes = spec.state_axes.get(key, ())
        assert len(axes) == np.ndim(value), key
    assert name not in BUILTINS or set(spec.fields) <= set(sae_cfg(name)), "sae_config() lacks a field of the spec"
    assert all(field.default is not None for field in spec.fields.values())


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_encode_decode_and_loss_are_finite(name):
    cfg, arch, spec, params, arch_state, x = _setup(name)
    latents = arch.encode(params, arch_state, x)
    assert np.all(np.isfinite(np.asarray(arch.decode(params, latents))))
    ctx = LossContext(jnp.int32(3), jnp.zeros(D_SAE, bool).at[:10].set(True))
    loss, grads = jax.jit(jax.value_and_grad(lambda p: arch.loss(p, arch_state, x, x, ctx)[0]))(params)
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads.values())


@pytest.mark.parametrize("name", [n for n in one_hook_builtins() if architecture_spec(n).family == "topk"])
def test_topk_family_gradients_equal_dense_autodiff(name):
    cfg, arch, spec, params, arch_state, x = _setup(name, aux_k_coefficient=0.0, multi_topk=False)
    params = {**params, "b_enc": 0.1 * jax.random.normal(jax.random.key(2), (D_SAE,))}
    ctx = LossContext(jnp.int32(3), jnp.zeros(D_SAE, bool))
    reference = dense_vjp_topk_loss(cfg["k"])
    value, grads = jax.value_and_grad(lambda p: arch.loss(p, arch_state, x, x, ctx)[0])(params)
    expected_value, expected = jax.value_and_grad(lambda p: reference(p, arch_state, x, x, ctx)[0])(params)
    assert float(value) == pytest.approx(float(expected_value), rel=1e-6)
    for key in expected:
        np.testing.assert_allclose(grads[key], expected[key], rtol=1e-5,
                                   atol=1e-5 * float(jnp.max(jnp.abs(expected[key]))), err_msg=key)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_one_train_step_on_one_device_equals_a_2x4_mesh(name):
    cfg, arch, spec, params, arch_state, x = _setup(name)
    optimizer = make_optimizer({"steps": 10, "warmup_steps": 1, "decay_fraction": 0.0, "grad_clip": 1.0}, 1e-3,
                               arch.unit_norm_decoder)
    members = [Member("sae", HOOK, D_SAE, arch, optimizer)]
    samples = {HOOK: x}
    step = partial(train_step, members=members, dead_tokens=100)
    state = jax.jit(partial(init_state, members=members))(jax.random.key(0), samples)
    one, _ = jax.jit(step)(state, samples)
    mesh = make_mesh(data=2, model=4)
    shardings = state_shardings(abstract_state(members, {HOOK: D_IN}), members, mesh)
    assert shardings.saes["sae"].params["W_dec"].spec == jax.sharding.PartitionSpec("model", None)
    with jax.set_mesh(mesh):
        sharded_state = jax.device_put(state, shardings)
        rows = {HOOK: batch_sharding(mesh)}
        eight, _ = jax.jit(step, in_shardings=(shardings, rows), out_shardings=(shardings, None))(
            sharded_state, jax.device_put(samples, rows))
    for key in one.saes["sae"].params:
        np.testing.assert_allclose(eight.saes["sae"].params[key], one.saes["sae"].params[key], rtol=1e-5, atol=1e-7,
                                   err_msg=key)
    for key in one.saes["sae"].arch_state:
        np.testing.assert_allclose(eight.saes["sae"].arch_state[key], one.saes["sae"].arch_state[key], rtol=1e-5)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_portable_round_trip_encodes_the_same(name):
    cfg, arch, spec, params, arch_state, x = _setup(name)
    if "log_threshold" in params:  # thresholds inside the data's range, so the round trip is exercised
        params = {**params, "log_threshold": params["log_threshold"] - 1.0}
    weights = spec.to_portable(params, arch_state, cfg)
    assert all(isinstance(w, np.ndarray) and w.dtype == np.float32 for w in weights.values())
    assert ("threshold" in weights) == (spec.family == "jumprelu")
    back, back_state = spec.from_portable(weights, cfg)
    np.testing.assert_allclose(_dense(arch, back, back_state, x), _dense(arch, params, arch_state, x),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_fold_scales_then_raw_input_encodes_as_scaled_input(name):
    """Folded params on raw x select the same latents and reconstruct s·x / s. Latent values are equal
    too, except for kinds whose coefficients are in input units (matching pursuit's tied decoder)."""
    cfg, arch, spec, params, arch_state, x = _setup(name)
    scale = 3.0
    folded = spec.fold_scales(params, scale, scale, False)
    raw, scaled = _dense(arch, folded, arch_state, x), _dense(arch, params, arch_state, scale * x)
    np.testing.assert_array_equal(raw > 0, scaled > 0)
    reconstruction = arch.decode(folded, arch.encode(folded, arch_state, x)) * scale
    np.testing.assert_allclose(reconstruction, arch.decode(params, arch.encode(params, arch_state, scale * x)),
                               rtol=1e-4, atol=1e-4)
    if spec.family != "matching_pursuit":
        np.testing.assert_allclose(raw, scaled, rtol=1e-5, atol=1e-5)
        latents = arch.encode(folded, arch_state, x)
        np.testing.assert_allclose(arch.decode(folded, latents) * scale, arch.decode(params, latents), rtol=1e-5,
                                   atol=1e-5)


def test_an_unknown_architecture_lists_the_builtins():
    from jaxinterp.config import ConfigError

    for name in ("gatd", "tests.no_such_module", "tests.stores"):
        with pytest.raises(ConfigError, match="'sae.architecture'.*topk, batch_topk, matryoshka, jumprelu, relu"):
            architecture_spec(name)


def test_every_builtin_resumes_bitwise_and_round_trips_each_format_that_holds_it(tmp_path):
    """One sweep run with a member of every built-in (killed after its first checkpoint and resumed),
    then every member exported to every format that holds its family and read back by jaxinterp's
    importer where the format has one for that family."""
    import shutil

    from jaxinterp.export import FORMAT_FAMILIES, export_run, load_sae, portable_from_trained, to_jaxinterp
    from jaxinterp.runs import load_trained
    from jaxinterp.sae.spec import FAMILY_BUILTINS
    from jaxinterp.store import open_store
    from jaxinterp.train import train
    from tests.stores import small_sparse_store
    from tests.test_train import train_config

    store = small_sparse_store(str(tmp_path / "store"), HOOK)
    sweep = "; ".join(f"{name}: architecture={name}" for name in one_hook_builtins())
    overrides = {"steps": 6, "checkpoint_every": 3, "log_every": 3, "sae.n_latents": 64, "sae.k": 4,
                 "normalize": True, "norm_tokens": 1024, "sweep": sweep, "mesh.data": 2, "mesh.model": 4}
    train(train_config(store, tmp_path / "straight", **overrides), progress=False)
    train(train_config(store, tmp_path / "resumed", **overrides), progress=False)
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "6")  # as if killed between steps 3 and 6
    assert train(train_config(store, tmp_path / "resumed", **overrides), progress=False)["steps"] == 6
    x = open_store(store).read(HOOK, 0, 128)
    for name in one_hook_builtins():
        a, b = load_trained(str(tmp_path / "straight"), name), load_trained(str(tmp_path / "resumed"), name)
        for key in a.state.params:
            np.testing.assert_array_equal(a.state.params[key], b.state.params[key], err_msg=f"{name} {key}")
        portable = portable_from_trained(a)
        arch, params, arch_state = to_jaxinterp(portable)
        reference = np.asarray(dense_latents(arch.encode(params, arch_state, x), 64))
        for fmt, families in FORMAT_FAMILIES.items():
            if portable.family not in families:
                continue
            out = export_run(str(tmp_path / "straight"), fmt, str(tmp_path / "exports" / fmt / name), sae=name)
            if fmt in ("saelens", "sparsify", "npz") and portable.family in FAMILY_BUILTINS:
                loaded = load_sae(out)
                np.testing.assert_allclose(np.asarray(dense_latents(loaded.encode(x), 64)), reference, rtol=1e-5,
                                           atol=1e-5, err_msg=f"{name} {fmt}")
