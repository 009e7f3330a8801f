"""``jaxinterp interpret``: its stages, their reuse and refusals (the stages' own math has its own tests)."""

import json

import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.config import ConfigError, load_config
from jaxinterp.export import load_sae
from jaxinterp.interpret import interpret, latent_cache, read_latent_cache
from jaxinterp.store import open_store

HOOK = "blocks.1.hook_resid_post"


def interpret_config(**fields):
    return load_config("configs/interpret.py", fields, schemas.INTERPRET, "interpret")


def test_the_cache_stage_writes_reuses_and_refuses(tiny_llama_run, tmp_path):
    run, out = str(tiny_llama_run / "run"), tmp_path / "out"
    summary = interpret(interpret_config(run=run, out=str(out), n_tokens=64 * 12, batch_contexts=4, n_splits=2))
    module = out / "cache" / HOOK
    assert summary["cache"]["directory"] == str(module) and not summary["cache"]["reused"]
    sae = load_sae(run)
    direct = latent_cache(sae.encode, sae.sae.d_sae, open_store(str(tiny_llama_run / "store")), HOOK,
                          str(tmp_path / "direct"), HOOK, n_tokens=64 * 12, n_splits=2)
    ours, reference = read_latent_cache(str(module)), read_latent_cache(str(direct / HOOK))
    np.testing.assert_array_equal(ours.locations, reference.locations)
    np.testing.assert_array_equal(ours.activations, reference.activations)
    assert summary["cache"]["live_latents"] == int((np.load(module / "firing_counts.npy") > 0).sum()) > 0
    assert json.loads((module / "config.json").read_text())["jaxinterp_dictionary"].endswith("#sae@40")

    again = interpret(interpret_config(run=run, out=str(out), n_tokens=64 * 12, n_splits=2))
    assert again["cache"]["reused"]
    with pytest.raises(ConfigError, match="config field 'n_tokens': .* was cached with n_tokens=768, not 1024"):
        interpret(interpret_config(run=run, out=str(out), n_tokens=64 * 16, n_splits=2))
    redone = interpret(interpret_config(run=run, out=str(out), n_tokens=64 * 16, n_splits=2, overwrite=True))
    assert not redone["cache"]["reused"] and read_latent_cache(str(module)).tokens.shape == (16, 64)


def test_refusals_name_the_field(tiny_llama_run, tmp_path):
    run = str(tiny_llama_run / "run")
    with pytest.raises(ConfigError, match="config field 'stages': unknown stage 'explian'; choose from cache"):
        interpret(interpret_config(run=run, out=str(tmp_path / "o"), stages="cache,explian"))
    export = tmp_path / "saelens"
    from jaxinterp.export import export_run

    export_run(run, "saelens", str(export))
    with pytest.raises(ConfigError, match="config field 'store': .* is an imported SAE; name the store"):
        interpret(interpret_config(run=str(export), out=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()
