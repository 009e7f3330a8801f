"""Cross-layer transcoders exported as circuit-tracer 0.5.0's ``cross_layer_transcoder``, loaded by its own loaders.

One sweep run trains four CLTs over three layers (BatchTopK, JumpReLU, ReLU, and a per-token TopK that the format
refuses). Each export is read back by ``read_circuit_tracer_clt`` (equal to the trained params) and, in a
subprocess with circuit-tracer on ``PYTHONPATH`` (see tests/test_circuit_tracer_export.py), by
``load_transcoders_from_cache`` (eager) and ``load_clt`` (lazy encoder and decoder files); their ``encode``,
``decode`` and sparse attribution path must compute what jaxinterp's CLT does on the same rows.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.cli import main
from jaxinterp.config import ConfigError
from jaxinterp.export import export_run, read_circuit_tracer_clt
from jaxinterp.runs import load_trained
from jaxinterp.sae import clt
from jaxinterp.train import train
from tests.stores import sparse_activations
from tests.test_circuit_tracer_export import circuit_tracer_env
from tests.test_clt_train import LAYERS, D, clt_config, store_url  # noqa: F401  (store_url: a fixture)

N_PER_LAYER = 64
EXPORTED = ("b", "j", "r")
SWEEP = "b: activation=batch_topk; j: activation=jumprelu, sparsity_coefficient=0.01; r: activation=relu, " \
        "sparsity_coefficient=0.01; t: activation=topk"

LOAD = r"""
import json, sys
from pathlib import Path
import numpy as np, torch
import circuit_tracer
from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
from circuit_tracer.utils.caching import load_transcoders_from_cache

rows, result, outs = np.load(sys.argv[1]), sys.argv[2], [Path(out) for out in sys.argv[3:]]
cpu, x = torch.device("cpu"), torch.from_numpy(rows)  # [L, tokens, d], circuit-tracer's layout
arrays, meta = {}, {"version": circuit_tracer.__version__}
for out in outs:
    cached, config = load_transcoders_from_cache(out.name, cache_dir=str(out.parent), device=cpu, dtype=torch.float32,
                                                 lazy_encoder=False, lazy_decoder=False)
    lazy = load_clt(str(out), device=cpu, dtype=torch.float32, lazy_encoder=True, lazy_decoder=True)
    meta[out.name] = {"config": config, "n_layers": cached.n_layers, "d_transcoder": cached.d_transcoder,
                      "activation": type(cached.activation_function).__name__,
                      "input": cached.feature_input_hook, "output": cached.feature_output_hook}
    with torch.no_grad():
        acts = cached.encode(x)
        arrays[f"{out.name}/acts"] = acts.numpy()
        arrays[f"{out.name}/pred"] = cached.decode(acts.to_sparse()).numpy()
        arrays[f"{out.name}/forward"] = cached(x).numpy()
        lazy_acts = torch.stack([lazy.encode_layer(x[layer], layer) for layer in range(lazy.n_layers)])
        arrays[f"{out.name}/lazy_acts"] = lazy_acts.numpy()
        arrays[f"{out.name}/lazy_pred"] = lazy.decode(lazy_acts.to_sparse()).numpy()
        sparse = cached.compute_attribution_components(x, zero_positions=slice(0, 0))
        arrays[f"{out.name}/sparse_pred"] = sparse["reconstruction"].numpy()
np.savez(result, **arrays)
print(json.dumps(meta))
"""


@pytest.fixture(scope="module")
def clt_run(store_url, tmp_path_factory) -> str:  # noqa: F811
    run = tmp_path_factory.mktemp("clt_export") / "run"
    train(clt_config(store_url, run, steps=40, sweep=SWEEP, **{"sae.n_latents": LAYERS * N_PER_LAYER}),
          progress=False)
    return str(run)


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    """``[tokens, L, d]`` held-out-like rows (the store's distribution, other seeds)."""
    return np.stack([sparse_activations(48, D, n_features=48, active=3, seed=200 + layer) for layer in range(LAYERS)],
                    axis=1)


@pytest.fixture(scope="module")
def loaded(clt_run, rows, tmp_path_factory) -> tuple[dict, dict]:
    root = tmp_path_factory.mktemp("clt_ct")
    for name in EXPORTED:
        written = export_run(clt_run, "circuit_tracer", str(root / name), sae=name)
        assert sorted(p.name for p in written.iterdir() if not p.name.startswith(".")) == sorted(
            ["config.yaml", *(f"W_{kind}_{layer}.safetensors" for kind in ("enc", "dec") for layer in range(LAYERS))])
    np.save(root / "rows.npy", np.ascontiguousarray(np.swapaxes(rows, 0, 1)))
    env = {**os.environ, "PYTHONPATH": str(circuit_tracer_env()), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", LOAD, str(root / "rows.npy"), str(root / "result.npz"),
                           *(str(root / name) for name in EXPORTED)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    with np.load(root / "result.npz") as arrays:
        return json.loads(done.stdout.strip().splitlines()[-1]), {**dict(arrays), "root": root}


def ours(trained, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """jaxinterp's inference latents ``[tokens, L, n]`` and prediction ``[tokens, L, d]``."""
    activation = trained.config["activation"]
    threshold = trained.state.arch_state["threshold"] if activation == "batch_topk" else None
    latents, _ = clt.encode(trained.state.params, jnp.asarray(rows), activation, trained.config["k"],
                            threshold=threshold)
    return np.asarray(latents), np.asarray(clt.decode(trained.state.params, latents))


@pytest.mark.parametrize("name", EXPORTED)
def test_circuit_tracer_loads_the_clt_and_computes_what_jaxinterp_does(clt_run, rows, loaded, name):
    meta, arrays = loaded
    assert meta["version"] == "0.5.0"
    info = meta[name]
    assert info["config"]["model_kind"] == "cross_layer_transcoder" and info["config"]["model_name"] == "synthetic"
    assert (info["n_layers"], info["d_transcoder"]) == (LAYERS, N_PER_LAYER)
    assert (info["input"], info["output"]) == ("mlp.hook_in", "mlp.hook_out")
    assert info["activation"] == ("function" if name == "r" else "JumpReLU")
    trained = load_trained(clt_run, name)
    acts, pred = ours(trained, rows)
    assert 0 < np.count_nonzero(acts) < acts.size
    if name != "r":  # the threshold gates latents a ReLU would let through: circuit-tracer must apply it
        pre = np.asarray(clt.pre_activations(trained.state.params, jnp.asarray(rows)))
        assert np.any((pre > 0) & (acts == 0))
    scale, diffs = max(float(np.abs(pred).max()), 1.0), {}
    for key in ("acts", "lazy_acts", "pred", "lazy_pred", "forward", "sparse_pred"):
        theirs = np.swapaxes(arrays[f"{name}/{key}"], 0, 1)  # [L, tokens, ·] → ours [tokens, L, ·]
        mine = acts if key.endswith("acts") else pred
        if key.endswith("acts"):
            np.testing.assert_array_equal(theirs > 0, mine > 0)  # the same latents fire
        diffs[key] = float(np.abs(theirs - mine).max())
    assert max(diffs.values()) < 1e-4 * scale, diffs
    print(f"circuit-tracer vs jaxinterp CLT ({name}): max abs diff {diffs}")


@pytest.mark.parametrize("name", EXPORTED)
def test_the_export_reads_back_as_the_trained_clt(clt_run, loaded, name):
    back = read_circuit_tracer_clt(str(loaded[1]["root"] / name))
    trained = load_trained(clt_run, name)
    params = {key: np.asarray(value) for key, value in trained.state.params.items()}
    assert back.activation == ("relu" if name == "r" else "jumprelu")
    for key in ("W_enc", "b_enc", "b_dec", *(clt.decoder_key(layer) for layer in range(LAYERS))):
        np.testing.assert_array_equal(back.params[key], params[key])
    if name == "j":
        np.testing.assert_allclose(back.params["log_threshold"], params["log_threshold"], rtol=1e-5, atol=1e-6)
    if name == "b":  # BatchTopK's one running threshold, as every latent's JumpReLU threshold
        theta = float(trained.state.arch_state["threshold"])
        np.testing.assert_allclose(np.exp(back.params["log_threshold"]), theta, rtol=1e-6)


def test_clt_refusals_write_nothing_and_the_cli_exports(clt_run, tmp_path, capsys):
    out = tmp_path / "x"
    with pytest.raises(ConfigError, match=r"config field 'format': 'circuit_tracer' cannot hold a per-token 'topk' "
                                          r"CLT.*batch_topk"):
        export_run(clt_run, "circuit_tracer", str(out), sae="t")
    with pytest.raises(ConfigError, match="exports as format=circuit_tracer only"):
        export_run(clt_run, "saelens", str(out), sae="b")
    assert not out.exists()
    args = ["export", f"--config.run={clt_run}", "--config.sae=j", "--config.format=circuit_tracer",
            f"--config.out={out}"]
    assert main(args) == 0
    assert (out / "config.yaml").is_file() and 'model_kind: "cross_layer_transcoder"' in (out / "config.yaml").read_text()
    capsys.readouterr()
    assert main(args) == 2  # an existing export is never silently overwritten
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "overwrite" in err[0], err
    assert main([*args, "--config.overwrite=true"]) == 0
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        read_circuit_tracer_clt(str(tmp_path))
    assert Path(out / "W_enc_0.safetensors").is_file()
