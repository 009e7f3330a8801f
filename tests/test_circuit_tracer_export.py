"""circuit-tracer 0.5.0 transcoder-set export, loaded by circuit-tracer's own loaders.

One sweep run trains per-layer transcoders blocks.{0,1}.mlp.hook_in → blocks.{0,1}.hook_mlp_out on a
synthetic two-layer store (input and target normalised, so the export folds both scales): JumpReLU,
ReLU with a skip connection, BatchTopK (exported as JumpReLU with its global threshold), and a TopK one.
Each exported set is read back in a subprocess by ``circuit_tracer.utils.caching.load_transcoders_from_cache``
(the local directory route) and by ``circuit_tracer.utils.hf_utils.load_transcoders`` on the parsed
``config.yaml`` (its ``transcoders`` paths, lazy weights); their ``encode``, ``decode`` and the sparse
attribution path (``compute_attribution_components``) are compared with jaxinterp's on the same rows.

circuit-tracer pins transformers <= 4.57.3, so it lives in its own ``--target`` directory
(``.venv-circuit-tracer``, built by launch/setup.sh, or here if missing), put on ``PYTHONPATH`` of a
subprocess of this interpreter; its loader imports neither nnsight nor transformer-lens, so nothing is stubbed
(nnsight is in the directory too, for tests/test_attribution_graph.py).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxinterp import schemas
from jaxinterp.config import ConfigError, load_config
from jaxinterp.export import export_run, loaded_from_trained
from jaxinterp.runs import load_trained
from jaxinterp.sae import dense_latents
from jaxinterp.train import train
from tests.stores import sparse_activations, write_store
from tests.test_transcoder import linear_target

ROOT = Path(__file__).resolve().parents[1]
ENV = ROOT / ".venv-circuit-tracer"
PINS = ("circuit-tracer==0.5.0", "transformers==4.57.3", "huggingface_hub==0.36.0", "tokenizers==0.22.1",
        # circuit-tracer's nnsight backend (tests/test_attribution_graph.py): 0.7.0, the last nnsight with the
        # nnsight.intervention.tracing.tracer.Barrier it imports; then what nnsight's import reaches and .venv lacks
        "nnsight==0.7.0", "python-engineio==4.15.1", "python-socketio==5.18.1", "bidict==0.24.1", "ipython==9.18.1",
        "traitlets==5.16.1", "astor==0.8.1", "zstandard==0.25.0")
LAYERS = (0, 1)
D, N_LATENTS = 32, 64


def hooks(layer: int) -> tuple[str, str]:
    return f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.hook_mlp_out"


# member prefix → overrides; one member per layer (<prefix><layer>)
SETS = {"j": "architecture=jumprelu, l0_coefficient=0.05", "r": "architecture=relu, l1_coefficient=1, skip=true",
        "b": "architecture=batch_topk", "t": "architecture=topk"}


def dist_info(pin: str) -> str:
    """``python-engineio==4.15.1`` → ``python_engineio-4.15.1.dist-info``, what pip writes for it."""
    name, version = pin.split("==")
    return f"{name.replace('-', '_')}-{version}.dist-info"


def circuit_tracer_env() -> Path:
    """The circuit-tracer directory, the pins it lacks installed with pip (the configured index); pip failing fails."""
    missing = [pin for pin in PINS if not (ENV / dist_info(pin)).is_dir()]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(ENV),
                        *missing], check=True)
    return ENV


LOAD = r"""
import json, sys
from pathlib import Path
import numpy as np, torch, yaml
import circuit_tracer
from circuit_tracer.utils.caching import load_transcoders_from_cache
from circuit_tracer.utils.hf_utils import load_transcoders

rows, result, outs = np.load(sys.argv[1]), sys.argv[2], [Path(out) for out in sys.argv[3:]]
cpu = torch.device("cpu")
arrays, meta = {}, {"version": circuit_tracer.__version__}
for out in outs:
    cached, config = load_transcoders_from_cache(out.name, cache_dir=str(out.parent), device=cpu, dtype=torch.float32,
                                                 lazy_encoder=False, lazy_decoder=False)
    parsed = yaml.safe_load((out / "config.yaml").read_text())
    lazy = load_transcoders(parsed, device=cpu, dtype=torch.float32, lazy_encoder=True, lazy_decoder=True)
    x = torch.stack([torch.from_numpy(rows[f"x_{i}"]) for i in range(len(cached))])
    meta[out.name] = {"config": config}
    with torch.no_grad():
        for name, ts in (("cached", cached), ("lazy", lazy)):
            acts = ts.encode(x)
            arrays[f"{out.name}/{name}_acts"] = acts.numpy()
            arrays[f"{out.name}/{name}_pred"] = ts.decode(acts, x).numpy()
            meta[out.name][name] = {"n_layers": ts.n_layers, "d_transcoder": ts.d_transcoder,
                                    "skip": ts.skip_connection, "input": ts.feature_input_hook,
                                    "output": ts.feature_output_hook,
                                    "activation": type(ts[0].activation_function).__name__}
        sparse = cached.compute_attribution_components(x, zero_positions=slice(0, 0))
        arrays[f"{out.name}/sparse_pred"] = sparse["reconstruction"].numpy()
np.savez(result, **arrays)
print(json.dumps(meta))
"""


def load_with_circuit_tracer(outs: list[Path], x: dict[int, np.ndarray], tmp_path: Path) -> tuple[dict, dict]:
    """circuit-tracer's view of the exported sets ``outs``, on rows ``x[layer]`` (one subprocess for all)."""
    rows, result = tmp_path / "rows.npz", tmp_path / "result.npz"
    np.savez(rows, **{f"x_{layer}": x[layer] for layer in LAYERS})
    env = {**os.environ, "PYTHONPATH": str(circuit_tracer_env()), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", LOAD, str(rows), str(result), *map(str, outs)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    meta = json.loads(done.stdout.strip().splitlines()[-1])
    with np.load(result) as arrays:
        return meta, dict(arrays)


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("ct")
    store, run = str(root / "store"), str(root / "run")
    activations = {}
    for layer in LAYERS:
        x = sparse_activations(4096, D, n_features=96, active=4, seed=layer)
        x_in, x_out = hooks(layer)
        activations[x_in], activations[x_out] = 3.0 * x, linear_target(x, seed=10 + layer)
    write_store(store, activations, context_size=16, chunk_mib=2**-9, shard_mib=2**-6)
    x_in, x_out = hooks(0)
    sweep = "; ".join(f"{prefix}{layer}: hook={hooks(layer)[0]}, target_hook={hooks(layer)[1]}, {overrides}"
                      for prefix, overrides in SETS.items() for layer in LAYERS)
    train(load_config("configs/train.py", {
        "store": store, "hook": x_in, "target_hook": x_out, "out": run, "steps": 40, "batch_size": 256,
        "lr": 3e-3, "warmup_steps": 5, "sae.n_latents": N_LATENTS, "sae.k": 4, "normalize": True, "norm_tokens": 1024,
        "eval_tokens": 512, "holdout_fraction": 0.1, "checkpoint_every": 40, "mixing_chunks": 4, "mesh.data": 1,
        "sweep": sweep}, schemas.TRAIN, "train"), progress=False)
    return run


EXPORTED = ("j", "r", "b")
ROWS = {layer: sparse_activations(64, D, n_features=96, active=4, seed=100 + layer) * 3.0 for layer in LAYERS}


@pytest.fixture(scope="module")
def loaded_sets(sweep_run, tmp_path_factory) -> tuple[dict, dict]:
    """Each :data:`EXPORTED` set exported (members listed out of order) and loaded by circuit-tracer."""
    root = tmp_path_factory.mktemp("ct_sets")
    for prefix in EXPORTED:
        members = ",".join(f"{prefix}{layer}" for layer in reversed(LAYERS))
        written = export_run(sweep_run, "circuit_tracer", str(root / prefix), sae=members)
        assert Path(written) == (root / prefix).absolute()
        assert sorted(p.name for p in (root / prefix).iterdir() if not p.name.startswith(".")) == [
            "config.yaml", "layer_0.safetensors", "layer_1.safetensors"]
    return load_with_circuit_tracer([root / prefix for prefix in EXPORTED], ROWS, root)


@pytest.mark.parametrize("prefix", EXPORTED)
def test_circuit_tracer_loads_the_set_and_computes_what_jaxinterp_does(sweep_run, loaded_sets, prefix):
    all_meta, arrays = loaded_sets
    meta, names, x = all_meta[prefix], [f"{prefix}{layer}" for layer in LAYERS], ROWS
    assert all_meta["version"] == "0.5.0"
    assert meta["config"]["model_kind"] == "transcoder_set" and meta["config"]["model_name"] == "synthetic"
    for route in ("cached", "lazy"):
        assert meta[route]["n_layers"] == 2 and meta[route]["d_transcoder"] == N_LATENTS
        assert meta[route]["input"] == "mlp.hook_in" and meta[route]["output"] == "mlp.hook_out"
        assert meta[route]["skip"] == (prefix == "r")
        assert meta[route]["activation"] == ("function" if prefix == "r" else "JumpReLU")
    diffs = {}
    for layer, name in zip(LAYERS, names):
        ours = loaded_from_trained(load_trained(sweep_run, name))
        acts = np.asarray(dense_latents(ours.encode(x[layer]), N_LATENTS))
        pred = np.asarray(ours.predict(x[layer]))
        assert np.count_nonzero(acts) > 0 and np.count_nonzero(acts) < acts.size
        if prefix != "r":  # the threshold gates latents a ReLU would let through: circuit-tracer must apply it
            pre = x[layer] @ ours.sae.params["W_enc"] + ours.sae.params["b_enc"]
            assert np.any((pre > 0) & (pre <= ours.sae.params["threshold"]))
        scale = float(np.abs(pred).max())
        keys = ("cached_acts", "lazy_acts", "cached_pred", "lazy_pred", "sparse_pred")
        theirs = {key: arrays[f"{prefix}/{key}"][layer] for key in keys}
        for key, value in theirs.items():
            if key.endswith("acts"):
                np.testing.assert_array_equal(value > 0, acts > 0)  # the same latents fire
            diff = float(np.abs(value - (acts if key.endswith("acts") else pred)).max())
            diffs[key] = max(diffs.get(key, 0.0), diff)
        assert max(diffs.values()) < 1e-4 * max(scale, 1.0), (name, diffs)
    print(f"circuit-tracer vs jaxinterp ({prefix}): max abs diff {diffs}")


def test_refusals_write_nothing(sweep_run, tmp_path, capsys):
    out = tmp_path / "set"
    with pytest.raises(ConfigError, match=r"config field 'format': 'circuit_tracer' cannot hold a per-token TopK.*"
                                          r"batch_topk.*'sparsify'"):
        export_run(sweep_run, "circuit_tracer", str(out), sae="t0,t1")
    with pytest.raises(ConfigError, match="missing layers 0"):
        export_run(sweep_run, "circuit_tracer", str(out), sae="j1")
    with pytest.raises(ConfigError, match="one skip connection"):
        export_run(sweep_run, "circuit_tracer", str(out), sae="j0,r1")
    with pytest.raises(ConfigError, match="two read blocks.0.mlp.hook_in"):
        export_run(sweep_run, "circuit_tracer", str(out), sae="j0,b0,j1")
    with pytest.raises(ConfigError, match="config field 'sae'.*one sweep run"):
        export_run(f"{sweep_run},{sweep_run}", "circuit_tracer", str(out), sae="j0")
    assert not out.exists()
    export_run(sweep_run, "circuit_tracer", str(out), sae="j0,j1", progress=True)
    bar = capsys.readouterr().err  # one restored checkpoint per member
    assert "restore: 100%" in bar and "2/2" in bar
    with pytest.raises(FileExistsError, match="overwrite"):
        export_run(sweep_run, "circuit_tracer", str(out), sae="b0,b1")
    export_run(sweep_run, "circuit_tracer", str(out), sae="b0,b1", overwrite=True)
    assert set(load_file(str(out / "layer_0.safetensors"))) == {"W_enc", "b_enc", "W_dec", "b_dec",
                                                                "activation_function.threshold"}


def test_a_set_of_separate_runs(sweep_run, tmp_path):
    """``run`` lists one run per layer (each run's only SAE); the layer files hold their weights as circuit-tracer
    orients them."""
    store = load_trained(sweep_run, "j0").run_config["train"]["store"]
    runs = []
    for layer in reversed(LAYERS):
        x_in, x_out = hooks(layer)
        runs.append(str(tmp_path / f"run{layer}"))
        train(load_config("configs/train.py", {
            "store": store, "hook": x_in, "target_hook": x_out, "out": runs[-1], "steps": 10, "batch_size": 256,
            "sae.n_latents": N_LATENTS, "sae.architecture": "relu", "eval_tokens": 256, "holdout_fraction": 0.1,
            "checkpoint_every": 10, "mixing_chunks": 4, "mesh.data": 1}, schemas.TRAIN, "train"), progress=False)
    out = tmp_path / "set"
    export_run(",".join(runs), "circuit_tracer", str(out))
    config = (out / "config.yaml").read_text()
    assert 'model_kind: "transcoder_set"' in config and 'feature_input_hook: "mlp.hook_in"' in config
    assert f'  - "{out.absolute() / "layer_1.safetensors"}"' in config
    for layer in LAYERS:
        ours = loaded_from_trained(load_trained(str(tmp_path / f"run{layer}"))).sae.params
        theirs = load_file(str(out / f"layer_{layer}.safetensors"))
        assert set(theirs) == {"W_enc", "b_enc", "W_dec", "b_dec"}  # ReLU: no threshold, no skip
        np.testing.assert_array_equal(theirs["W_enc"], ours["W_enc"].T)
        np.testing.assert_array_equal(theirs["W_dec"], ours["W_dec"])
