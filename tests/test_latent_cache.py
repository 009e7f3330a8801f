"""The delphi-layout latent cache: equal to a dense reference encode of the same store rows, in delphi's file layout."""

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxinterp.config import ConfigError
from jaxinterp.export import load_sae
from jaxinterp.interpret import latent_cache, read_latent_cache, split_ranges
from jaxinterp.sae import dense_latents
from jaxinterp.store import open_store

HOOK = "blocks.1.hook_resid_post"
ROOT = Path(__file__).resolve().parents[1]
DELPHI_ENV = ROOT / ".venv-delphi"
# eai-delphi requires vLLM: it lives in its own --target directory without its GPU stack (launch/setup.sh).
DELPHI_PINS = ("eai-delphi==0.1.3", "asyncer==0.0.18", "blobfile==3.3.0", "orjson==3.13.0", "faiss-cpu==1.15.1",
               "pycryptodomex==3.24.2", "lxml==6.2.0")

LOAD = r"""
import sys, types
import numpy as np
# only delphi's neighbour constructors use sentence_transformers (not installed: it would pull scikit-learn & co.)
sys.modules["sentence_transformers"] = types.SimpleNamespace(SentenceTransformer=None)
from transformers import AutoTokenizer
from delphi.config import ConstructorConfig, SamplerConfig
from delphi.latents import LatentDataset

raw_dir, model_dir, result = sys.argv[1:4]
dataset = LatentDataset(raw_dir, SamplerConfig(), ConstructorConfig(), tokenizer=AutoTokenizer.from_pretrained(model_dir))
locations, activations, latents = [], [], []
for buffer in dataset.buffers:
    for record in buffer:
        locations.append(record.activation_data.locations.numpy())
        activations.append(record.activation_data.activations.float().numpy())
        latents.append(record.latent.latent_index)
np.savez(result, tokens=dataset.tokens.numpy(), locations=np.concatenate(locations),
         activations=np.concatenate(activations), latents=np.array(latents))
"""


def delphi_env() -> Path:
    """The delphi directory, with pip (the configured index) installing any pin missing there."""
    missing = [pin for pin in DELPHI_PINS
               if not (DELPHI_ENV / f"{pin.split('==')[0].replace('-', '_')}-{pin.split('==')[1]}.dist-info").is_dir()]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(DELPHI_ENV),
                        *missing], check=True)
    return DELPHI_ENV


def test_split_ranges_are_delphis():
    # delphi: boundaries = linspace(0, width, n_splits + 1).long(); zip(boundaries[:-1], boundaries[1:] - 1)
    assert split_ranges(128, 5) == [(0, 24), (25, 50), (51, 75), (76, 101), (102, 127)]
    assert split_ranges(10, 1) == [(0, 9)]
    with pytest.raises(ConfigError, match="n_splits"):
        split_ranges(10, 11)


def test_cache_equals_a_dense_reference_encode(tiny_llama_run, tmp_path):
    sae = load_sae(str(tiny_llama_run / "run"))
    store = open_store(str(tiny_llama_run / "store"))
    out = latent_cache(sae.encode, sae.sae.d_sae, store, HOOK, str(tmp_path / "cache"), "layers.1", n_tokens=64 * 40,
                       n_splits=5, batch_contexts=7, model_name="tiny")
    module = out / "layers.1"
    assert [p.name for p in out.iterdir()] == ["layers.1"]  # delphi takes every entry of the cache root as a module
    names = sorted(p.name for p in module.iterdir() if not p.name.startswith("."))
    assert names == sorted(["config.json", "firing_counts.npy",
                            *(f"{a}_{b}.safetensors" for a, b in split_ranges(sae.sae.d_sae, 5))])
    first = load_file(str(module / "0_24.safetensors"))
    assert first["locations"].dtype == np.uint16 and first["activations"].dtype == np.float16
    assert first["tokens"].dtype == np.int64 and first["tokens"].shape == (40, 64)
    assert first["locations"][:, 2].max() <= 24

    got = read_latent_cache(str(module))
    x = store.read(HOOK, 0, 64 * 40)
    dense = np.asarray(dense_latents(sae.encode(jnp.asarray(x)), sae.sae.d_sae))
    rows, latent = np.nonzero(np.abs(dense) > 1e-5)
    want = np.stack([rows // 64, rows % 64, latent], axis=1)
    np.testing.assert_array_equal(got.locations, want)  # every non-zero, in (context, position, latent) order
    np.testing.assert_array_equal(got.activations, dense[rows, latent].astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(got.tokens, store.read("tokens", 0, 64 * 40).reshape(40, 64))
    np.testing.assert_array_equal(np.load(module / "firing_counts.npy"), (np.abs(dense) > 1e-5).sum(axis=0))
    config = json.loads((module / "config.json").read_text())
    assert config["cache_ctx_len"] == 64 and config["n_tokens"] == 2560 and config["n_splits"] == 5
    assert config["model_name"] == "tiny"
    with pytest.raises(FileExistsError):
        latent_cache(sae.encode, sae.sae.d_sae, store, HOOK, str(tmp_path / "cache"), "layers.1", n_tokens=64 * 4)
    with pytest.raises(ConfigError, match="config field 'hook'.*has no hook 'blocks.0.hook_mlp_out'"):
        latent_cache(sae.encode, sae.sae.d_sae, store, "blocks.0.hook_mlp_out", str(tmp_path / "c2"), "m")


def test_memory_is_bounded_by_the_batch_not_the_store(tiny_llama_run, tmp_path):
    sae = load_sae(str(tiny_llama_run / "run"))
    store = open_store(str(tiny_llama_run / "store"))
    peaks = []
    for contexts in (32, 256):  # 8x the tokens
        tracemalloc.start()
        latent_cache(sae.encode, sae.sae.d_sae, store, HOOK, str(tmp_path / f"c{contexts}"), "m",
                     n_tokens=64 * contexts, batch_contexts=8)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    print(f"writer peak host memory (tracemalloc): {peaks[0]:,} B for 32 contexts, {peaks[1]:,} B for 256")
    assert peaks[1] < 2.0 * peaks[0], peaks  # host memory of the writer does not grow with the corpus


def test_delphis_own_loader_reads_the_cache(tiny_llama, tiny_llama_run, tmp_path):
    sae = load_sae(str(tiny_llama_run / "run"))
    store = open_store(str(tiny_llama_run / "store"))
    out = latent_cache(sae.encode, sae.sae.d_sae, store, HOOK, str(tmp_path / "cache"), "layers.1", n_tokens=64 * 24,
                       n_splits=3, batch_contexts=5, model_name="tiny")
    env = {**os.environ, "PYTHONPATH": str(delphi_env()), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", LOAD, str(out), tiny_llama, str(tmp_path / "delphi.npz")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    theirs = np.load(tmp_path / "delphi.npz")
    ours = read_latent_cache(str(out / "layers.1"))
    np.testing.assert_array_equal(theirs["tokens"], ours.tokens)
    order = np.lexsort((theirs["locations"][:, 2], theirs["locations"][:, 1], theirs["locations"][:, 0]))
    np.testing.assert_array_equal(theirs["locations"][order], ours.locations)  # delphi's absolute latent ids
    np.testing.assert_array_equal(theirs["activations"][order], ours.activations)
    assert sorted(theirs["latents"]) == sorted(set(ours.locations[:, 2].tolist()))  # one record per firing latent


def test_an_activation_beyond_float16_is_refused_and_nothing_is_written(tiny_llama_run, tmp_path):
    store = open_store(str(tiny_llama_run / "store"))
    d_in = store.manifest["d_in"]
    with pytest.raises(ValueError, match=r"latent \d+ has activation .* at context 0, position \d+: beyond float16"):
        latent_cache(lambda x: jnp.abs(x) * 1e7, d_in, store, HOOK, str(tmp_path / "cache"), "m", n_tokens=64 * 2)
    assert not (tmp_path / "cache" / "m").exists()


def _module_bytes(module: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(module.iterdir()) if p.suffix in (".safetensors", ".npy", ".json")}


def test_one_and_eight_devices_write_the_same_bytes(tiny_llama_run, tmp_path):
    import jax

    sae = load_sae(str(tiny_llama_run / "run"))
    store = open_store(str(tiny_llama_run / "store"))
    written = {}
    for n in (1, 8):
        out = latent_cache(sae.encode, sae.sae.d_sae, store, HOOK, str(tmp_path / f"d{n}"), "m", n_tokens=64 * 21,
                           batch_contexts=5, devices=jax.local_devices()[:n])  # 5 × 64 rows: padded to split 8 ways
        written[n] = _module_bytes(out / "m")
    assert len(jax.local_devices()) == 8 and written[1] == written[8]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d1", "d8"]  # no spill directory left beside the caches
