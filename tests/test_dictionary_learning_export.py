"""dictionary_learning export, loaded by dictionary-learning 0.1.0's own ``utils.load_dictionary``.

dictionary-learning pins nnsight < 0.4 and imports it (and zstandard, datasets) at import, though its
dictionary classes use neither; it is installed with ``pip --target --no-deps`` into a temporary
directory and run in a subprocess with those two modules stubbed, the main environment untouched.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxinterp.config import ConfigError
from jaxinterp.export import export_run, portable_from_trained, to_jaxinterp
from jaxinterp.export.dictionary_learning import dictionary_learning_state
from jaxinterp.runs import load_trained
from tests.test_export import SAES, dense, tiny_run  # noqa: F401  (tiny_run is a fixture)

LOADER = textwrap.dedent("""
    import importlib.machinery, sys, types
    for name in ("nnsight", "zstandard", "datasets"):  # imported by utils.py, unused by load_dictionary
        stub = types.ModuleType(name)
        stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
        stub.LanguageModel = stub.load_dataset = object
        sys.modules[name] = stub
    import numpy as np, torch
    from dictionary_learning.utils import load_dictionary
    directory, inputs, output = sys.argv[1:4]
    dictionary, config = load_dictionary(directory, device="cpu")
    x = torch.from_numpy(np.load(inputs))
    with torch.no_grad():
        latents = dictionary.encode(x)
        np.savez(output, latents=latents.numpy(), x_hat=dictionary.decode(latents).numpy(),
                 cls=type(dictionary).__name__)
""")


@pytest.fixture(scope="module")
def dictionary_learning_path(tmp_path_factory):
    """A ``--target`` directory holding dictionary-learning 0.1.0 (no dependencies)."""
    target = tmp_path_factory.mktemp("dictionary_learning_pkg")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    "dictionary-learning==0.1.0"], check=True)
    return str(target)


def load_with_dictionary_learning(path, directory, x, tmp_path):
    np.save(tmp_path / "x.npy", np.asarray(x, np.float32))
    script = tmp_path / "load.py"
    script.write_text(LOADER)
    subprocess.run([sys.executable, str(script), str(directory), str(tmp_path / "x.npy"), str(tmp_path / "out.npz")],
                   check=True, env={**os.environ, "PYTHONPATH": path})
    return np.load(tmp_path / "out.npz")


EXPECTED_CLASS = {"topk": "AutoEncoderTopK", "batch": "BatchTopKSAE", "jump": "JumpReluAutoEncoder",
                  "relu": "AutoEncoder"}


@pytest.mark.parametrize("name", sorted(SAES))
def test_dictionary_learning_loader_encodes_as_we_do(tiny_run, dictionary_learning_path, tmp_path, name):  # noqa: F811
    run, x = tiny_run
    portable = portable_from_trained(load_trained(run, name))
    out = export_run(run, "dictionary_learning", str(tmp_path / "dl"), sae=name)
    config = json.loads((out / "config.json").read_text())
    assert config["trainer"]["dict_class"] == EXPECTED_CLASS[name]
    assert config["trainer"]["layer"] == int(portable.hook_name.split(".")[1])
    loaded = load_with_dictionary_learning(dictionary_learning_path, out, x, tmp_path)
    assert str(loaded["cls"]) == EXPECTED_CLASS[name]
    architecture, params, arch_state = to_jaxinterp(portable)
    latents = architecture.encode(params, arch_state, x)
    ours = dense(latents, portable.d_sae)
    x_hat = np.asarray(architecture.decode(params, latents))
    # rows at unit norm: the same latent times its old decoder norm
    norms = np.linalg.norm(portable.params["W_dec"], axis=-1)
    if name in ("topk", "batch"):
        norms = np.full_like(norms, norms.mean())
    np.testing.assert_allclose(loaded["latents"], ours * norms, rtol=1e-4, atol=1e-4)
    assert np.array_equal(loaded["latents"] > 0, ours > 0), "a different set of latents fired"
    assert (ours > 0).sum() > 0
    np.testing.assert_allclose(loaded["x_hat"], x_hat, rtol=1e-4, atol=1e-4)


def test_decoder_rows_are_unit_norm_where_exact(tiny_run):  # noqa: F811
    run, _ = tiny_run
    for name in SAES:
        state = dictionary_learning_state(portable_from_trained(load_trained(run, name)))
        W_dec = state.get("W_dec", state.get("decoder.weight"))
        axis = -1 if "W_dec" in state else 0
        np.testing.assert_allclose(np.linalg.norm(W_dec, axis=axis), 1.0, atol=1e-5, err_msg=name)


def test_unequal_topk_norms_are_written_as_they_are(tiny_run):  # noqa: F811
    run, _ = tiny_run
    portable = portable_from_trained(load_trained(run, "topk"))
    W_dec = portable.params["W_dec"].copy()
    W_dec[0] *= 2
    state = dictionary_learning_state(portable._replace(params={**portable.params, "W_dec": W_dec}))
    np.testing.assert_array_equal(state["decoder.weight"], W_dec.T)


def test_transcoder_and_existing_output_are_refused(tiny_run, tmp_path):  # noqa: F811
    run, _ = tiny_run
    portable = portable_from_trained(load_trained(run, "relu"))
    with pytest.raises(ConfigError, match="no transcoder"):
        dictionary_learning_state(portable._replace(target_hook="blocks.0.hook_mlp_out"))
    out = tmp_path / "dl"
    export_run(run, "dictionary_learning", str(out), sae="relu")
    with pytest.raises(FileExistsError):
        export_run(run, "dictionary_learning", str(out), sae="relu")
    export_run(run, "dictionary_learning", str(out), sae="topk", overwrite=True)
    assert json.loads((out / "config.json").read_text())["trainer"]["dict_class"] == "AutoEncoderTopK"
