"""Per-layer transcoders in one sweep run: each member (its own hook → target_hook pair) equals a
separate run of that one member with the same seed and batches, bitwise (params and logged metrics)."""

import json

import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.config import load_config
from jaxinterp.runs import load_trained
from jaxinterp.train import train
from tests.stores import sparse_activations, write_store

LAYERS = (0, 1, 2)


def hooks(layer: int) -> tuple[str, str]:
    return f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.hook_mlp_out"


def mlp_target(x: np.ndarray, seed: int) -> np.ndarray:
    """A fixed random ReLU MLP of ``x``: a layer's MLP output, different per layer."""
    rng = np.random.default_rng(seed)
    d = x.shape[1]
    W_in = rng.normal(size=(d, 2 * d)).astype(np.float32) / np.sqrt(d)
    W_out = rng.normal(size=(2 * d, d)).astype(np.float32) / np.sqrt(2 * d)
    return np.maximum(x @ W_in, 0.0) @ W_out


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("tc_sweep_store") / "s")
    activations = {}
    for layer in LAYERS:
        x = sparse_activations(4096, 32, n_features=96, active=4, seed=layer)
        activations.update({hooks(layer)[0]: x, hooks(layer)[1]: mlp_target(x, 10 + layer)})
    write_store(url, activations, context_size=16, chunk_mib=2**-9, shard_mib=2**-6)
    return url


def train_config(store_url, out, layer: int, **overrides):
    hook, target = hooks(layer)
    fields = {"store": store_url, "hook": hook, "target_hook": target, "out": str(out), "steps": 16, "batch_size": 128,
              "lr": 3e-3, "warmup_steps": 4, "sae.n_latents": 128, "sae.k": 8, "log_every": 4, "checkpoint_every": 16,
              "eval_tokens": 512, "holdout_fraction": 0.1, "dead_tokens": 1000, "mixing_chunks": 4, "mesh.data": 1,
              **overrides}
    return load_config("configs/train.py", fields, schemas.TRAIN, "train")


def metric_lines(run, member: str) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    timing = {"tokens_per_s", "seconds", "elapsed_s", "step_s", "wall_s", "sae"}
    return [{k: v for k, v in line.items() if k not in timing} for line in lines if line.get("sae") == member]


def test_per_layer_transcoder_sweep_equals_separate_runs(store_url, tmp_path):
    # Layer 2's member is a skip transcoder (its own sae.* override besides its hook pair).
    sweep = "; ".join(f"l{layer}: hook={hooks(layer)[0]}, target_hook={hooks(layer)[1]}"
                      + (", skip=true" if layer == 2 else "") for layer in LAYERS)
    together = train(train_config(store_url, tmp_path / "sweep", 0, sweep=sweep), progress=False)
    for layer in LAYERS:
        name = f"l{layer}"
        overrides = {"sae.skip": True} if layer == 2 else {}
        alone = train(train_config(store_url, tmp_path / name, layer, **overrides), progress=False)
        a, b = load_trained(str(tmp_path / "sweep"), name), load_trained(str(tmp_path / name))
        assert a.config["hook_name"] == b.config["hook_name"] == hooks(layer)[0]
        assert a.config["target_hook"] == b.config["target_hook"] == hooks(layer)[1]
        assert set(a.state.params) == set(b.state.params) == {"W_enc", "b_enc", "W_dec", "b_dec"} | (
            {"W_skip"} if layer == 2 else set())
        for key in a.state.params:
            np.testing.assert_array_equal(a.state.params[key], b.state.params[key], err_msg=f"{name} {key}")
        assert together["eval"][name] == alone["eval"]["sae"], name
        swept, separate = metric_lines(tmp_path / "sweep", name), metric_lines(tmp_path / name, "sae")
        assert len(swept) == len(separate) >= 4 and swept == separate, name
    # Trained, not just equal: each layer's target FVU is well below predicting the mean.
    assert all(together["eval"][f"l{layer}"]["fvu"] < 0.8 for layer in LAYERS)
