"""Exports of SAEs trained on real SmolLM2 activations, loaded by the real peers (SAELens, sparsify)
and by jaxinterp's importer, encode and decode real activations as jaxinterp does.

Tolerances: SmolLM2's layer-6 residual stream has entries near 850 (float32 steps of 6e-5 there),
so values are compared relative to the largest one (2e-6 · max |value|, ~16 float32 steps), after
summation-order rounding in torch vs XLA. That rounding can also flip a latent whose pre-activation
lies within it of its firing boundary (its threshold, or the token's k-th largest pre-activation);
such a flip is accepted only where the float64 distance to the boundary is below 1e-4.
"""

import logging
import warnings

import numpy as np
import pytest

from jaxinterp.export import export_run, load_sae, portable_from_trained, to_jaxinterp
from jaxinterp.runs import load_trained
from jaxinterp.sae import dense_latents
from jaxinterp.store import open_store
from tests.conftest import SMOLLM2_HOOK

pytestmark = pytest.mark.real_model

N_TOKENS = 512
D_SAE = 2048


@pytest.fixture(scope="module")
def activations(smollm2_store) -> np.ndarray:
    """Raw (unnormalised) SmolLM2 activations; the exports fold the run's input scale in."""
    return open_store(smollm2_store).read(SMOLLM2_HOOK, 0, N_TOKENS)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def dense(latents) -> np.ndarray:
    return np.asarray(dense_latents(latents, D_SAE))


def jaxinterp_reference(run: str, name: str, x: np.ndarray):
    """(portable SAE, latents, reconstruction, boundary margins) from jaxinterp's own encoder."""
    portable = portable_from_trained(load_trained(run, name))
    arch, params, arch_state = to_jaxinterp(portable)
    latents = arch.encode(params, arch_state, x)
    p = {key: value.astype(np.float64) for key, value in portable.params.items()}
    pre = (x.astype(np.float64) - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    if portable.architecture == "topk":
        margin = pre - np.sort(pre, axis=-1)[:, -portable.k][:, None]
    else:
        margin = pre - np.maximum(p.get("threshold", 0.0), 0.0)
    return portable, dense(latents), np.asarray(arch.decode(params, latents)), margin


def saelens_coding(torch, sae, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(latents, reconstruction) of a SAELens SAE on ``x``, as numpy."""
    with torch.no_grad():
        latents = sae.encode(torch.from_numpy(x))
        return latents.numpy(), sae.decode(latents).numpy()


def assert_same_coding(theirs, theirs_decoded, ours, ours_decoded, margin):
    """Latent values agree to float32 rounding; a latent fires in one and not the other only at its
    firing boundary; reconstructions agree on every token where the same latents fired."""
    flipped = (theirs > 0) != (ours > 0)
    assert np.all(np.abs(margin[flipped]) < 1e-4), np.abs(margin[flipped]).max()
    assert flipped.sum() <= theirs.shape[0] // 100
    assert np.abs(theirs - ours)[~flipped].max() <= 2e-6 * np.abs(ours).max()
    same = ~flipped.any(axis=-1)
    assert np.abs(theirs_decoded - ours_decoded)[same].max() <= 2e-6 * np.abs(ours_decoded).max()
    assert (ours > 0).sum(axis=-1).mean() > 1  # the SAE is not trivially silent


def assert_import_round_trips(out, fmt: str, portable, ours, x):
    loaded = load_sae(out)
    assert loaded.format == fmt and loaded.sae.hook_name == SMOLLM2_HOOK
    for key in ("W_enc", "W_dec", "b_dec") + (() if fmt == "npz" else ("b_enc",)):
        np.testing.assert_array_equal(loaded.sae.params[key], portable.params[key], err_msg=key)
    if "threshold" in portable.params:
        np.testing.assert_allclose(np.exp(loaded.params["log_threshold"]), portable.params["threshold"], rtol=1e-6)
    latents = dense(loaded.encode(x))
    if fmt == "npz":  # b_dec is folded into Gemma Scope's b_enc: equal up to float32 rounding
        np.testing.assert_allclose(latents, ours, rtol=0, atol=2e-6 * np.abs(ours).max())
    else:
        np.testing.assert_array_equal(latents, ours)


@pytest.mark.parametrize("name,architecture", [("topk", "TopKSAE"), ("jumprelu", "JumpReLUSAE"),
                                               ("relu", "StandardSAE"), ("batch_topk", "JumpReLUSAE")])
def test_saelens_loads_our_export_and_codes_alike(smollm2_sweep, activations, tmp_path, caplog, torch, name,
                                                   architecture):
    sae_lens = pytest.importorskip("sae_lens")
    run, _ = smollm2_sweep
    out = export_run(run, "saelens", str(tmp_path / name), sae=name)
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        sae = sae_lens.SAE.load_from_disk(str(out))
    assert [str(w.message) for w in caught] == [] and caplog.records == []
    assert type(sae).__name__ == architecture and sae.cfg.metadata.hook_name == SMOLLM2_HOOK
    assert sae.cfg.metadata.model_name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    portable, ours, ours_decoded, margin = jaxinterp_reference(run, name, activations)
    assert_same_coding(*saelens_coding(torch, sae, activations), ours, ours_decoded, margin)
    assert_import_round_trips(out, "saelens", portable, ours, activations)


def test_sparsify_loads_our_topk_export_and_codes_alike(smollm2_sweep, activations, tmp_path, torch):
    sparsify = pytest.importorskip("sparsify")
    run, _ = smollm2_sweep
    out = export_run(run, "sparsify", str(tmp_path / "root"), sae="topk")
    assert out.name == "layers.6"  # blocks.6.hook_resid_post of a Llama-family model
    coder = sparsify.SparseCoder.load_from_disk(out)  # strict: a missing or unexpected key raises
    assert list(sparsify.SparseCoder.load_many(str(tmp_path / "root"), local=True)) == ["layers.6"]
    assert (coder.d_in, coder.num_latents, coder.cfg.k) == (576, D_SAE, 32)
    portable, ours, ours_decoded, margin = jaxinterp_reference(run, "topk", activations)
    with torch.no_grad():
        top_acts, top_indices, _ = coder.encode(torch.from_numpy(activations))
        theirs_decoded = coder.decode(top_acts, top_indices).numpy()
    theirs = np.zeros((N_TOKENS, D_SAE), np.float32)
    np.put_along_axis(theirs, top_indices.numpy(), top_acts.numpy(), axis=-1)
    assert_same_coding(theirs, theirs_decoded, ours, ours_decoded, margin)
    assert_import_round_trips(out, "sparsify", portable, ours, activations)
    assert_import_round_trips(tmp_path / "root", "sparsify", portable, ours, activations)


@pytest.mark.parametrize("name", ["jumprelu", "matryoshka"])
def test_npz_export_codes_alike_under_gemma_scopes_convention(smollm2_sweep, activations, tmp_path, torch, name):
    """SAELens' JumpReLU configured as its Gemma Scope loader configures it (``b_dec`` not
    subtracted from the input) runs our params.npz as jaxinterp runs the SAE."""
    sae_lens = pytest.importorskip("sae_lens")
    run, _ = smollm2_sweep
    out = export_run(run, "npz", str(tmp_path / name), sae=name)
    with np.load(out / "params.npz") as data:
        state = {key: torch.from_numpy(data[key]) for key in data.files}
    sae = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=576, d_sae=D_SAE, apply_b_dec_to_input=False))
    sae.load_state_dict(state)  # strict
    portable, ours, ours_decoded, margin = jaxinterp_reference(run, name, activations)
    assert_same_coding(*saelens_coding(torch, sae, activations), ours, ours_decoded, margin)
    assert_import_round_trips(out, "npz", portable, ours, activations)
