"""Sparse crosscoders (Lindsey et al. 2024): the math against a dense reference, training over two hooks, the
mesh, resume, refusals, export round trip, eval and the relative decoder norm.

The reference treats a crosscoder as what it equals: one SAE on the concatenated sources ``[tokens, S·d]``
with ``W_enc`` reshaped to ``[S·d, n]`` and ``W_dec`` to ``[n, S·d]``; its activations are written here
with plain sorts and masks.
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.cli import main
from jaxinterp.config import ConfigError, load_config
from jaxinterp.eval.crosscoder import norm_sharing, plot_relative_norms, relative_decoder_norms
from jaxinterp.export import load_sae
from jaxinterp.mesh import make_mesh
from jaxinterp.runs import load_trained
from jaxinterp.sae import crosscoder as xc
from jaxinterp.sae.jumprelu import jump_relu
from jaxinterp.train import abstract_state, build_members, train
from jaxinterp.train.loop import massive_mode
from jaxinterp.train.members import check_widths, source_hooks
from jaxinterp.train.state import state_shardings
from tests.stores import write_store

S, D, N, T, K = 2, 8, 16, 32, 2


def sample(seed: int = 0, tokens: int = T) -> jax.Array:
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(tokens, S, D)) * np.array([1.0, 3.0])[None, :, None] + 0.5, jnp.float32)


def init(activation: str, seed: int = 0) -> dict[str, jax.Array]:
    params = xc.init_crosscoder(jax.random.key(seed), N, sample(seed + 100, 256), activation, k=K)
    rng = np.random.default_rng(seed + 1)  # off-init values: no term or gradient trivially zero or symmetric
    return {name: value + jnp.asarray(0.05 * rng.normal(size=value.shape), jnp.float32)
            for name, value in sorted(params.items())}


def reference_loss(params, x, activation, l0=0.0, c=4.0, lp=0.0, bandwidth=1e-3):
    x_cat = x.reshape(len(x), S * D)
    W_enc, W_dec = params["W_enc"].reshape(S * D, N), params["W_dec"].reshape(N, S * D)
    pre = x_cat @ W_enc + params["b_enc"]
    acts = jax.nn.relu(pre)
    if activation == "topk":
        kth = jnp.sort(pre, axis=-1)[:, -K][:, None]
        acts = acts * (pre >= kth)
    elif activation == "batch_topk":
        kth = jnp.sort(jax.lax.stop_gradient(acts).ravel())[-K * len(x)]
        acts = acts * (acts >= kth)
    elif activation == "jumprelu":
        acts = jump_relu(acts, jnp.exp(params["log_threshold"]), bandwidth)
    x_hat = acts @ W_dec + params["b_dec"].reshape(-1)
    variance = sum(jnp.sum(jnp.square(x[:, s] - x[:, s].mean(0))) for s in range(S))
    norms = sum(jnp.linalg.norm(W_dec[:, s * D:(s + 1) * D], axis=-1) for s in range(S))
    total = jnp.sum(jnp.square(x_cat - x_hat))
    if activation == "relu":
        total = total + l0 * jnp.sum(acts * norms)
    if activation == "jumprelu":
        total = total + l0 * jnp.sum(jnp.tanh(c * norms * acts))
        total = total + lp * jnp.sum(jax.nn.relu(jnp.exp(params["log_threshold"]) - pre) * norms)
    return total / variance


@pytest.mark.parametrize("activation,l0,lp", [("topk", 0.0, 0.0), ("batch_topk", 0.0, 0.0), ("relu", 0.3, 0.0),
                                              ("jumprelu", 0.3, 0.2)])
def test_loss_and_gradients_equal_the_concatenated_sae_reference(activation, l0, lp):
    params, x = init(activation), sample(1)
    kwargs = dict(l0_coefficient=l0, pre_act_coefficient=lp)
    value, grads = jax.value_and_grad(lambda p: xc.loss(p, x, activation, K, **kwargs)[0])(params)
    ref_value, ref_grads = jax.value_and_grad(lambda p: reference_loss(p, x, activation, l0, lp=lp))(params)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for name in params:
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=2e-4, atol=1e-6, err_msg=name)
        assert float(jnp.abs(grads[name]).max()) > 0, name
    _, out = xc.loss(params, x, activation, K, **kwargs)
    per_source = [jnp.sum(jnp.square(x[:, s] - out.x_hat[:, s])) / jnp.sum(jnp.square(x[:, s] - x[:, s].mean(0)))
                  for s in range(S)]
    np.testing.assert_allclose(out.fvu_per_source, per_source, rtol=1e-5)
    if activation == "topk":
        assert np.all(np.sum(out.latents > 0, axis=1) <= K)
    if activation == "batch_topk":
        assert int(np.sum(out.latents > 0)) == K * T  # k·tokens over the batch's shared latents


def test_param_axes_shard_the_shared_latent_axis():
    params = init("jumprelu")
    spec = xc.SPEC
    for name, value in params.items():
        axes = spec.axes(name)
        latent_dims = [dim for dim, size in enumerate(value.shape) if size == N]
        assert [dim for dim, axis in enumerate(axes) if axis == "latent"] == latent_dims, name


# --- training through `jaxinterp train` ---------------------------------------------------------------------

HOOKS = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")
WIDTH, LATENTS = 16, 64


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    """Two hooks written by 48 shared features (different directions in each) and 8 exclusive to each."""
    rng = np.random.default_rng(5)
    tokens, shared, own = 8192, 48, 8
    codes = np.zeros((tokens, shared + 2 * own), np.float32)
    for row in range(tokens):
        codes[row, rng.choice(shared + 2 * own, 3, replace=False)] = rng.uniform(0.5, 2.0, 3)
    hooks = {}
    for index, hook in enumerate(HOOKS):
        dictionary = rng.normal(size=(shared + 2 * own, WIDTH)).astype(np.float32)
        dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
        dictionary[shared + (1 - index) * own: shared + (2 - index) * own] = 0  # the other hook's own features
        hooks[hook] = codes @ dictionary + 0.01 * rng.normal(size=(tokens, WIDTH)).astype(np.float32)
    hooks["blocks.0.hook_mlp_out"] = hooks[HOOKS[0]][:, ::-1].copy()
    url = str(tmp_path_factory.mktemp("xc_store") / "s")
    write_store(url, hooks, context_size=16, chunk_mib=2**-9, shard_mib=2**-6)
    return url


def xc_config(store_url, out, **overrides):
    fields = {"store": store_url, "hook": ",".join(HOOKS), "out": str(out), "steps": 60, "batch_size": 256,
              "lr": 3e-3, "sae.architecture": "crosscoder", "sae.n_latents": LATENTS, "sae.k": 4, "log_every": 10,
              "checkpoint_every": 20, "eval_tokens": 1024, "holdout_fraction": 0.1, "dead_tokens": 5000,
              "mixing_chunks": 4, "mesh.data": 1, **overrides}
    return load_config("configs/train.py", fields, schemas.TRAIN, "train")


@pytest.mark.parametrize("activation", ["batch_topk", "relu"])
def test_a_crosscoder_trains_over_two_hooks(store_url, tmp_path, activation):
    extra = {"sae.sparsity_coefficient": 0.01} if activation == "relu" else {}
    summary = train(xc_config(store_url, tmp_path / "xc", **{"sae.activation": activation, **extra}), progress=False)
    cfg = json.loads((tmp_path / "xc" / "cfg.json").read_text())["saes"]["sae"]
    assert cfg["hook_names"] == list(HOOKS) and cfg["d_in"] == WIDTH and cfg["d_sae"] == LATENTS
    lines = [json.loads(line) for line in (tmp_path / "xc" / "metrics.jsonl").read_text().splitlines()]
    first, last = next(line["fvu"] for line in lines if line["split"] == "train"), summary["eval"]["sae"]["fvu"]
    assert last < 0.5 * first and last < 0.4, (first, last)
    trained = load_trained(str(tmp_path / "xc"))
    assert trained.state.params["W_dec"].shape == (LATENTS, 2, WIDTH)
    if activation == "batch_topk":
        assert float(trained.state.arch_state["threshold"]) > 0


def test_an_l1_crosscoder_finds_the_features_exclusive_to_each_hook(store_url, tmp_path):
    """The store's 8 + 8 hook-exclusive features show as latents with relative norm ~0 / ~1 (Lindsey et al.'s
    histogram), its 48 shared ones near 1/2. Measured: 8 / 7 exclusive, 49 shared, holdout FVU 0.085."""
    cfg = xc_config(store_url, tmp_path / "xc", steps=800, lr=1e-2, checkpoint_every=800,
                    **{"sae.activation": "relu", "sae.sparsity_coefficient": 0.3})
    assert train(cfg, progress=False)["eval"]["sae"]["fvu"] < 0.15
    relative = relative_decoder_norms(np.asarray(load_trained(str(tmp_path / "xc")).state.params["W_dec"]))
    counts = norm_sharing(relative)
    assert counts["exclusive_a"] >= 6 and counts["exclusive_b"] >= 6 and counts["shared"] >= 40, counts
    assert np.sum(np.abs(relative - 0.5) < 0.1) >= 40  # the shared features write to both hooks alike


def test_a_layer_wildcard_names_the_same_sources():
    cfg = xc_config("unused", "unused", hook="blocks.*.hook_resid_post")
    (member,) = build_members(cfg, ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"])
    assert member.input_hooks == HOOKS and member.target_hooks == HOOKS and not member.transcoder
    # Shrinking each source's massive rows by its own factor would unpair one token's sources: they are dropped.
    assert cfg["massive_tokens"] == "shrink" and massive_mode("shrink", [member]) == "drop"


def test_any_store_hook_names_work_as_sources():
    store = ["blocks.3.hook_resid_post", "b/blocks.3.hook_resid_post", "chat/blocks.*.x"]
    assert source_hooks("blocks.3.hook_resid_post, b/blocks.3.hook_resid_post", store) == tuple(store[:2])
    assert source_hooks("b/blocks.*.hook_resid_post,blocks.3.hook_resid_post", store) == (store[1], store[0])


def test_a_crosscoder_on_a_2x4_mesh_equals_one_device_and_shards_its_latents(store_url, tmp_path):
    one = train(xc_config(store_url, tmp_path / "one", steps=40), progress=False)
    cfg = xc_config(store_url, tmp_path / "mesh", steps=40, **{"mesh.data": 2, "mesh.model": 4})
    mesh = train(cfg, progress=False)
    assert mesh["mesh"] == {"data": 2, "model": 4}
    a, b = load_trained(str(tmp_path / "one")), load_trained(str(tmp_path / "mesh"))
    for name in a.state.params:
        np.testing.assert_allclose(a.state.params[name], b.state.params[name], rtol=2e-4, atol=2e-5)
    assert mesh["eval"]["sae"]["fvu"] == pytest.approx(one["eval"]["sae"]["fvu"], rel=1e-3)
    members = build_members(cfg, list(HOOKS))
    shardings = state_shardings(abstract_state(members, dict.fromkeys(HOOKS, WIDTH)), members,
                                make_mesh(2, 4)).saes["sae"]
    for name, shape in [("W_enc", (2, WIDTH, LATENTS)), ("W_dec", (LATENTS, 2, WIDTH)), ("b_enc", (LATENTS,))]:
        assert np.prod(shardings.params[name].shard_shape(shape)) * 4 == np.prod(shape), name
    assert shardings.params["b_dec"].shard_shape((2, WIDTH)) == (2, WIDTH)
    assert jax.device_count() == 8


def test_a_killed_crosscoder_run_resumes_exactly(store_url, tmp_path):
    train(xc_config(store_url, tmp_path / "straight"), progress=False)
    train(xc_config(store_url, tmp_path / "resumed"), progress=False)
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "60")  # as if killed between step 40 and 60
    assert train(xc_config(store_url, tmp_path / "resumed"), progress=False)["steps"] == 60
    a, b = load_trained(str(tmp_path / "straight")), load_trained(str(tmp_path / "resumed"))
    for name in a.state.params:
        np.testing.assert_array_equal(a.state.params[name], b.state.params[name])
    np.testing.assert_array_equal(a.state.arch_state["threshold"], b.state.arch_state["threshold"])


@pytest.mark.parametrize("overrides, message", [
    ({"target_hook": "blocks.0.hook_mlp_out"}, "config field 'target_hook'.*leave target_hook ''"),
    ({"hook": "blocks.0.hook_resid_post,blocks.7.hook_resid_post"},
     "config field 'hook'.*no hook 'blocks.7.hook_resid_post'.*it has blocks.0.hook_resid_post, "),
    ({"hook": "blocks.0.hook_resid_post"}, "config field 'hook'.*two or more hooks"),
    ({"sae.architecture": "topk"}, "config field 'hook'.*hook list"),
    ({"normalize": True}, "config field 'normalize'"),
])
def test_crosscoder_config_mistakes_are_refused_naming_the_field(store_url, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(xc_config(store_url, tmp_path / "bad", **overrides), progress=False)
    assert not (tmp_path / "bad").exists()


def test_sources_of_unequal_widths_are_refused_naming_them():
    members = build_members(xc_config("unused", "unused"), list(HOOKS))
    check_widths(members, dict.fromkeys(HOOKS, WIDTH))
    with pytest.raises(ConfigError, match="config field 'hook'.*blocks.0.hook_resid_post 16, blocks.1.hook_resid_post 8"):
        check_widths(members, {HOOKS[0]: 16, HOOKS[1]: 8})


# --- export, eval -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["batch_topk", "jumprelu"])
def test_export_round_trip_gives_the_same_latents_and_reconstructions(store_url, tmp_path, activation, capsys):
    extra = {"sae.sparsity_coefficient": 0.01} if activation == "jumprelu" else {}
    run = tmp_path / "xc"
    train(xc_config(store_url, run, steps=20, **{"sae.activation": activation, **extra}), progress=False)
    out = tmp_path / "export"
    assert main(["export", f"--config.run={run}", f"--config.out={out}", "--config.format=crosscoder"]) == 0
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["hook_names"] == list(HOOKS) and (cfg["d_in"], cfg["d_sae"], cfg["n_sources"]) == (WIDTH, LATENTS, 2)
    assert cfg["activation"] == activation and cfg["k"] == 4
    assert (cfg["threshold"] > 0) if activation == "batch_topk" else cfg["threshold"] is None
    exported, from_run, trained = load_sae(str(out)), load_sae(str(run)), load_trained(str(run))
    assert exported.format == "crosscoder" and exported.sae.hook_name == ",".join(HOOKS)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(128, 2, WIDTH)), jnp.float32)
    expected = trained.architecture.encode(trained.state.params, trained.state.arch_state, x)
    assert int(jnp.sum(expected > 0)) > 0
    for loaded in (exported, from_run):
        np.testing.assert_allclose(loaded.encode(x), expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(loaded.predict(x), trained.architecture.decode(trained.state.params, expected),
                                   rtol=1e-6, atol=1e-6)
    assert main(["export", f"--config.run={run}", f"--config.out={tmp_path / 'sl'}", "--config.format=saelens"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exports only as format=crosscoder" in err[0], err


def test_eval_reports_per_source_fvu_and_relative_norms(store_url, tmp_path):
    run = tmp_path / "xc"
    summary = train(xc_config(store_url, run, steps=40), progress=False)["eval"]["sae"]
    assert main(["eval", f"--config.run={run}", "--config.ce_contexts=0", "--config.eval_tokens=1024"]) == 0
    result = json.loads((run / "eval" / "eval.json").read_text())
    # The same held-out rows as the trainer's own evaluation: the same FVU and L0 (running BatchTopK threshold).
    assert result["fvu"] == pytest.approx(summary["fvu"], rel=1e-4) and result["tokens"] == summary["tokens"]
    assert result["l0"] == pytest.approx(summary["l0"], rel=1e-6)
    assert list(result["fvu_by_hook"]) == list(HOOKS) and all(0 < f < 0.6 for f in result["fvu_per_source"])
    assert min(result["fvu_per_source"]) < result["fvu"] < max(result["fvu_per_source"])
    (pair,) = result["relative_norms"]
    assert pair["exclusive_a"] + pair["exclusive_b"] + pair["shared"] + pair["no_norm"] == LATENTS
    assert (run / "eval" / "relative_norms_0_1.png").stat().st_size > 0


def test_relative_norms_of_constructed_decoders(tmp_path):
    W_dec = np.zeros((6, 2, 4), np.float32)
    W_dec[0, 0, 0] = 2.0                           # only source a: r = 0
    W_dec[1, 1, 1] = 0.5                           # only source b: r = 1
    W_dec[2, :, 2] = [1.0, 1.0]                    # equal: r = 1/2
    W_dec[3, 0, :2], W_dec[3, 1, 3] = [3.0, 4.0], 5.0 / 3  # ‖a‖ = 5, ‖b‖ = 5/3: r = 1/4
    W_dec[4, 0, 0], W_dec[4, 1, 0] = 1.0, 19.0     # r = 0.95
    relative = relative_decoder_norms(W_dec)       # latent 5 has no norm: NaN
    np.testing.assert_allclose(relative[:5], [0.0, 1.0, 0.5, 0.25, 0.95], rtol=1e-6)
    assert np.isnan(relative[5])
    np.testing.assert_allclose(relative_decoder_norms(W_dec, 1, 0)[:5], [1.0, 0.0, 0.5, 0.75, 0.05], rtol=1e-6)
    assert norm_sharing(relative) == {"exclusive_a": 1, "exclusive_b": 2, "shared": 2, "no_norm": 1}
    assert plot_relative_norms(relative, tmp_path / "r.png", "t").stat().st_size > 0
