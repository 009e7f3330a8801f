"""A clean console: no program of a probe sweep, a training run or its evaluation embeds data as
compile-time constants (XLA folds those at compile time, and over a 30-layer sweep's features that
printed ``slow_operation_alarm`` "Constant folding ... taking > 1s" blocks), and nothing prints
an XLA error-level line.

A subprocess runs them with ``--xla_dump_to`` and every program it compiled is read back: none may
hold a constant of more than :data:`MAX_CONSTANT` elements (a few small ones, e.g. the L2 penalty's
per-column mask, are shapes, not data)."""

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.test_train import store_url  # noqa: F401  (a fixture)

ROOT = Path(__file__).parents[1]
MAX_CONSTANT = 1024  # elements; every feature, weight or row-index array here is larger
_CONSTANT = re.compile(r"= ([a-z0-9]+)\[([0-9,]*)\](?:\{[0-9,]*\})? constant\(")

SCRIPT = r"""
import sys
import numpy as np
from jaxinterp import schemas
from jaxinterp.config import load_config
from jaxinterp.export import load_sae
from jaxinterp.probe.data import Splits
from jaxinterp.probe.families import fit_probes
from jaxinterp.probe.latents import encode_sparse
from jaxinterp.probe.run import run_probe
from jaxinterp.train import train
from tests.test_train import train_config

store, run, model, out = sys.argv[1:5]
summary = train(train_config(store, run, steps=20, checkpoint_every=10), progress=False)  # step, holdout eval
rng = np.random.default_rng(0)
n, d = 1500, 32
features = {f"blocks.{i}.hook_resid_post": rng.normal(size=(n, d)).astype(np.float32) for i in range(3)}
labels = (features["blocks.0.hook_resid_post"][:, 0] > 0).astype(np.int64)
order = rng.permutation(n)
splits = Splits(np.sort(order[:900]), np.sort(order[900:1200]), np.sort(order[1200:]))

def probe(**fields):
    return load_config("configs/probe.py", {"max_iter": 30, "mlp.steps": 5, "k": "1,4", **fields}, schemas.PROBE, "probe")

fit_probes(features, labels, "binary", splits, probe(families="logistic,ksparse,mlp"))
fit_probes(features, labels, "binary", splits, probe(families="logistic", penalty="l1"))
fit_probes(features, labels.astype(np.float32) + rng.normal(size=n), "regression", splits, probe(families="ridge"))
latents = encode_sparse(load_sae(run), rng.normal(size=(n, 32)).astype(np.float32))  # the SAE-latent features
fit_probes({"blocks.0.hook_resid_post": latents}, labels, "binary", splits, probe(families="ksparse"))
# the whole verb on a (tiny, random) Llama through the JAX backend: forward passes, pooling, sweep
run_probe(probe(model=model, backend="jax", n_examples=200, hooks="all", families="logistic", out=out), progress=False)
print("done", summary["steps"])
"""


def largest_constants(dump: Path) -> list[tuple[int, str, str]]:
    """(elements, shape, program) of every constant over :data:`MAX_CONSTANT` elements in the dumped
    programs as JAX handed them to XLA (before its own passes)."""
    found = []
    for path in sorted(dump.glob("*before_optimizations.txt")):
        for dtype, dims in _CONSTANT.findall(path.read_text()):
            size = 1
            for dim in filter(None, dims.split(",")):
                size *= int(dim)
            if size > MAX_CONSTANT:
                found.append((size, f"{dtype}[{dims}]", path.name))
    return sorted(found, reverse=True)


def test_probe_sweeps_training_and_eval_embed_no_data_and_print_no_xla_errors(store_url, tiny_llama,  # noqa: F811
                                                                              tmp_path):
    dump = tmp_path / "hlo"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_dump_to={dump} --xla_dump_hlo_as_text --xla_dump_hlo_pass_re=^$"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, store_url, str(tmp_path / "run"), tiny_llama, str(tmp_path / "probe")], env=env, cwd=str(ROOT),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "done 20" in done.stdout
    programs = list(dump.glob("*before_optimizations.txt"))
    assert any("sweep_l2" in p.name for p in programs) and any("encode_dense" in p.name for p in programs)
    assert any("forward" in p.name for p in programs)  # the source model's
    assert largest_constants(dump) == []
    errors = [line for line in done.stderr.splitlines()
              if "slow_operation_alarm" in line or "Constant folding" in line or re.match(r"^E\d{4} ", line)]
    assert errors == []
