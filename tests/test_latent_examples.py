"""Per-latent examples: equal to delphi 0.1.3's own LatentDataset (constructor + sampler) on a synthetic cache."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxinterp.config import ConfigError
from jaxinterp.interpret import ExampleConfig, LatentCacheEntries, examples_of, latent_examples, read_latent_cache
from tests.test_latent_cache import delphi_env

CONTEXTS, CONTEXT_SIZE, D_SAE = 40, 64, 6

RUN_DELPHI = r"""
import json, sys, types
import numpy as np
sys.modules["sentence_transformers"] = types.SimpleNamespace(SentenceTransformer=None)
from transformers import AutoTokenizer
from delphi.config import ConstructorConfig, SamplerConfig
from delphi.latents import LatentDataset

raw_dir, tokenizer_dir, result, configs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
out = {}
for name, (constructor, sampler) in configs.items():
    dataset = LatentDataset(raw_dir, SamplerConfig(**sampler), ConstructorConfig(**constructor), tokenizer=tokenizer)
    for record in dataset:
        key = f"{name}_{record.latent.latent_index}"
        for part in ("examples", "train", "test", "not_active"):
            rows = getattr(record, part)
            width = constructor.get("example_ctx_len", 32)
            out[f"{key}_{part}_tokens"] = np.array([r.tokens.numpy() for r in rows]).reshape(len(rows), width)
            out[f"{key}_{part}_acts"] = np.array([r.activations.float().numpy() for r in rows]).reshape(len(rows), width)
            if part in ("train", "test"):
                out[f"{key}_{part}_quantile"] = np.array([r.quantile for r in rows])
        out[f"{key}_freq"] = np.array(record.per_context_frequency)
        out[f"{key}_max"] = np.array(record.max_activation)
np.savez(result, **out)
"""


def synthetic_entries(seed: int = 0) -> LatentCacheEntries:
    """Latents of varied density, every activation distinct (k / 64, k <= 2048: exact in float16) so orders have no ties."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 1000, size=(CONTEXTS, CONTEXT_SIZE)).astype(np.int64)
    locations, values = [], []
    for latent, n in enumerate([0, 30, 120, 400, 900, 2000]):
        flat = rng.choice(CONTEXTS * CONTEXT_SIZE, size=n, replace=False)
        locations.append(np.stack([flat // CONTEXT_SIZE, flat % CONTEXT_SIZE, np.full(n, latent)], axis=1))
        values.append(rng.permutation(np.arange(1, 1 + n)) / 64.0)  # n <= 2048: exact in float16
    where, act = np.concatenate(locations), np.concatenate(values).astype(np.float32)
    order = np.lexsort((where[:, 2], where[:, 1], where[:, 0]))
    return LatentCacheEntries(where[order].astype(np.int64), act[order], tokens, {"cache_ctx_len": CONTEXT_SIZE})


def write_cache(entries: LatentCacheEntries, module_dir) -> None:
    """A delphi-layout module directory holding ``entries`` (two latent ranges)."""
    module_dir.mkdir(parents=True)
    for start, end in ((0, 2), (3, D_SAE - 1)):
        mask = (entries.locations[:, 2] >= start) & (entries.locations[:, 2] <= end)
        where = entries.locations[mask] - np.array([0, 0, start])
        save_file({"locations": where.astype(np.uint16), "activations": entries.activations[mask].astype(np.float16),
                   "tokens": entries.tokens}, str(module_dir / f"{start}_{end}.safetensors"))
    (module_dir / "config.json").write_text(json.dumps({"cache_ctx_len": CONTEXT_SIZE, "model_name": "x"}))


@pytest.fixture(scope="module")
def smollm2_tokenizer_dir(tmp_path_factory):
    from jaxinterp.models import load_tokenizer, resolve_model

    path = tmp_path_factory.mktemp("tokenizer")
    load_tokenizer(resolve_model("smollm2")).save_pretrained(str(path))
    return str(path)


CONFIGS = {  # (ConstructorConfig, SamplerConfig) overrides; the ours-side ExampleConfig takes both
    "fixed": ({"min_examples": 20, "example_ctx_len": 16, "n_non_activating": 7},
              {"n_examples_train": 12, "n_examples_test": 15, "n_quantiles": 4}),
    "centred": ({"min_examples": 20, "example_ctx_len": 16, "center_examples": False, "n_non_activating": 3},
                {"n_examples_train": 10, "n_examples_test": 10, "n_quantiles": 3}),
    "defaults": ({}, {}),
}


def test_examples_equal_delphis_latent_dataset(smollm2_tokenizer_dir, tmp_path):
    entries = synthetic_entries()
    write_cache(entries, tmp_path / "cache" / "layer")
    read = read_latent_cache(str(tmp_path / "cache" / "layer"))
    np.testing.assert_array_equal(read.locations, entries.locations)
    env = {**os.environ, "PYTHONPATH": str(delphi_env()), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", RUN_DELPHI, str(tmp_path / "cache"), smollm2_tokenizer_dir,
                           str(tmp_path / "delphi.npz"), json.dumps(CONFIGS)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    theirs = np.load(tmp_path / "delphi.npz")
    for name, (constructor, sampler) in CONFIGS.items():
        ours = latent_examples(read, ExampleConfig(**constructor, **sampler))
        their_latents = sorted({int(k.split("_")[1]) for k in theirs.files if k.startswith(name + "_")})
        assert ours.latents.tolist() == their_latents, name  # same latents pass min_examples
        for i, latent in enumerate(ours.latents.tolist()):
            key = f"{name}_{latent}"
            for part, got in (("examples", ours.examples), ("train", ours.train), ("test", ours.test)):
                mine = examples_of(got, latent)
                np.testing.assert_array_equal(mine.tokens, theirs[f"{key}_{part}_tokens"], err_msg=f"{key} {part}")
                acts = theirs[f"{key}_{part}_acts"]
                if name == "centred":  # delphi 0.1.3 misindexes the neighbours' activations: compare the maxima,
                    at = mine.activations.shape[1] * 3 // 4  # which it places at ctx_len - ctx_len // 4
                    mine, acts = mine._replace(activations=mine.activations[:, at]), acts[:, at]
                np.testing.assert_array_equal(mine.activations, acts, err_msg=f"{key} {part}")
                if part != "examples":
                    np.testing.assert_array_equal(mine.quantile, theirs[f"{key}_{part}_quantile"])
            assert ours.per_context_frequency[i] == pytest.approx(float(theirs[f"{key}_freq"]))
            assert ours.max_activation[i] == pytest.approx(float(theirs[f"{key}_max"]))
            # non-activating: delphi's count and rule (torch's RNG picks other windows than ours)
            non = examples_of(ours.non_activating, latent)
            assert non.tokens.shape == theirs[f"{key}_not_active_tokens"].shape
            assert not non.activations.any() and (non.quantile == -1).all()


def test_non_activating_windows_follow_the_rule_and_are_seeded():
    entries = synthetic_entries(1)
    cfg = ExampleConfig(min_examples=20, example_ctx_len=16, n_non_activating=9)
    ours = latent_examples(entries, cfg)
    window_of = entries.locations[:, 0] * CONTEXT_SIZE + entries.locations[:, 1]
    windows = entries.tokens.reshape(-1, 16)
    for latent, n_fired in zip(ours.latents.tolist(), ours.n_activating.tolist()):
        fired = set((window_of[entries.locations[:, 2] == latent] // 16).tolist())
        non = examples_of(ours.non_activating, latent)
        assert len(non.tokens) == (9 if windows.shape[0] - n_fired >= 9 else 0)
        matches = [np.flatnonzero((windows == row).all(axis=1)) for row in non.tokens]
        assert all(not fired.issuperset(m.tolist()) for m in matches)  # each is a window the latent never fires in
    again = latent_examples(entries, cfg)
    np.testing.assert_array_equal(again.non_activating.tokens, ours.non_activating.tokens)
    other = latent_examples(entries, ExampleConfig(min_examples=20, example_ctx_len=16, n_non_activating=9, seed=7))
    assert not np.array_equal(other.non_activating.tokens, ours.non_activating.tokens)
    # a latent firing in (almost) every window gets no non-activating examples, as in delphi
    busy = latent_examples(entries, ExampleConfig(min_examples=20, example_ctx_len=16, n_non_activating=100))
    n_free = windows.shape[0] - busy.n_activating
    assert all(len(examples_of(busy.non_activating, lat).tokens) == (100 if free >= 100 else 0)
               for lat, free in zip(busy.latents.tolist(), n_free.tolist()))


def test_quantile_counts_and_config_errors():
    entries = synthetic_entries(2)
    ours = latent_examples(entries, ExampleConfig(min_examples=20, example_ctx_len=16, n_examples_test=20,
                                                  n_quantiles=5, train_type="mix", n_examples_train=10))
    for latent, n in zip(ours.latents.tolist(), ours.n_activating.tolist()):
        test = examples_of(ours.test, latent)
        per = min(20 // 5, n // 5)
        assert np.bincount(test.quantile, minlength=5).tolist() == [per] * 5
        maxima = test.activations.max(axis=1)
        assert all(maxima[test.quantile == q].min() >= maxima[test.quantile == q + 1].max() for q in range(4))
        assert len(examples_of(ours.train, latent).tokens) == 2 + 5  # mix: int(10 * 0.2) top, then 8 // 5 per quantile
    with pytest.raises(ConfigError, match="config field 'example_ctx_len'"):
        latent_examples(entries, ExampleConfig(example_ctx_len=24))
    with pytest.raises(ConfigError, match="config field 'non_activating_source'"):
        latent_examples(entries, ExampleConfig(non_activating_source="FAISS"))
    with pytest.raises(ConfigError, match="config field 'train_type'"):
        latent_examples(entries, ExampleConfig(train_type="best"))
