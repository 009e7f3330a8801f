"""Feature dashboards and Neuronpedia JSON: logit effects equal a dense W_dec @ W_U top-k, pages link, escape and
shade correctly, and the JSON carries Neuronpedia's field names with the cache's values."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxinterp.atomic import ForeignDirectoryError
from jaxinterp.config import ConfigError
from jaxinterp.interpret import LatentCacheEntries
from jaxinterp.interpret.dashboard import shade, write_dashboard
from jaxinterp.interpret.latent_summary import summarize_latents
from jaxinterp.interpret.logit_effects import logit_effects, read_unembedding
from jaxinterp.interpret.neuronpedia import write_neuronpedia

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ["<script>", "&", "a", " b", "\n", "c", "</td>", "d"]
CONTEXT_SIZE = 6

# Neuronpedia's schema.prisma (hijohnnylin/neuronpedia @ 008d5040): Neuron, Activation, Explanation, ExplanationScore.
NEURON_FIELDS = {"modelId", "layer", "index", "maxActApprox", "hookName", "pos_str", "pos_values", "neg_str",
                 "neg_values", "frac_nonzero", "freq_hist_data_bar_heights", "freq_hist_data_bar_values",
                 "activations", "explanations"}
ACTIVATION_FIELDS = {"modelId", "layer", "index", "tokens", "values", "maxValue", "maxValueTokenIndex", "minValue",
                     "dataIndex"}
EXPLANATION_FIELDS = {"modelId", "layer", "index", "description", "typeName", "explanationModelName", "scores"}
SCORE_FIELDS = {"value", "explanationScoreTypeName", "explanationScoreModelName", "jsonDetails"}


def token_text(token: int) -> str:
    return VOCAB[token]


def synthetic_cache(d_sae: int = 5) -> tuple[LatentCacheEntries, np.ndarray]:
    """Four contexts; latent 1 fires three times in context 2 (max 3.0 at position 4) and once in context 0;
    latent 3 fires once; the rest never. Entries in the cache's (context, position, latent) order."""
    entries = [(0, 1, 1, 0.5), (0, 2, 3, 2.0), (2, 0, 1, 1.0), (2, 3, 1, 1.5), (2, 4, 1, 3.0), (3, 5, 1, 0.25)]
    locations = np.array([e[:3] for e in entries], np.int64)
    activations = np.array([e[3] for e in entries], np.float32)
    tokens = np.arange(4 * CONTEXT_SIZE).reshape(4, CONTEXT_SIZE) % len(VOCAB)
    fired = np.bincount(locations[:, 2], minlength=d_sae)
    return LatentCacheEntries(locations, activations, tokens, {}), fired


def test_logit_effects_equal_a_dense_top_k():
    rng = np.random.default_rng(0)
    W_dec, W_U = rng.normal(size=(50, 16)).astype(np.float32), rng.normal(size=(16, 300)).astype(np.float32)
    latents = [3, 0, 49, 17, 8, 22, 31, 40, 11]
    got = logit_effects(W_dec, W_U, latents, k=7, block_latents=4)  # blocks of 4: a partial last block too
    dense = W_dec[latents] @ W_U
    want_top = np.argsort(-dense, axis=1)[:, :7]
    want_bottom = np.argsort(dense, axis=1)[:, :7]
    np.testing.assert_array_equal(got.latents, latents)
    np.testing.assert_array_equal(got.top_ids, want_top)
    np.testing.assert_array_equal(got.bottom_ids, want_bottom)
    np.testing.assert_allclose(got.top_values, np.take_along_axis(dense, want_top, 1), rtol=1e-5)
    np.testing.assert_allclose(got.bottom_values, np.take_along_axis(dense, want_bottom, 1), rtol=1e-5)
    assert got.row(49) == 2
    with pytest.raises(ConfigError, match=r"^config field 'sae': its decoder writes 64-wide vectors "
                                          r"\(blocks.0.hook_mlp_post\), not the model's d_model 16"):
        logit_effects(np.zeros((4, 64)), W_U, hook_name="blocks.0.hook_mlp_post")


def test_logit_effects_memory_is_bounded_by_the_block_not_d_sae():
    import tracemalloc

    rng = np.random.default_rng(0)
    W_U = rng.normal(size=(16, 20_000)).astype(np.float32)
    peaks = []
    for d_sae in (128, 1024):  # 8x the latents
        W_dec = rng.normal(size=(d_sae, 16)).astype(np.float32)
        tracemalloc.start()
        logit_effects(W_dec, W_U, k=10, block_latents=32)
        peaks.append(tracemalloc.get_traced_memory()[1] - W_dec.nbytes)
        tracemalloc.stop()
    print(f"logit effects peak: {peaks[0]:,} B for 128 latents, {peaks[1]:,} B for 1024")
    assert peaks[1] < 1.3 * peaks[0] and peaks[1] < 1024 * 20_000 * 4 / 4, peaks  # never the dense product


def test_the_unembedding_is_the_head_or_the_tied_embedding(tiny_llama, tiny_gpt2):
    from jaxinterp.models import resolve_model
    from jaxinterp.models.weights import load_hf_weights

    _, llama = load_hf_weights(resolve_model(tiny_llama))
    np.testing.assert_array_equal(read_unembedding(resolve_model(tiny_llama)), llama["lm_head.weight"].T)  # untied
    _, gpt2 = load_hf_weights(resolve_model(tiny_gpt2))
    assert "lm_head.weight" not in gpt2  # tied: only the embedding is stored
    np.testing.assert_array_equal(read_unembedding(resolve_model(tiny_gpt2)), gpt2["transformer.wte.weight"].T)


def test_summaries_take_one_example_per_context_strongest_first():
    entries, fired = synthetic_cache()
    by_latent = {s.latent: s for s in summarize_latents(entries, fired, n_bins=4)}
    assert sorted(by_latent) == [1, 3]  # the latents that fired
    one = by_latent[1]
    assert [(e.context, e.position) for e in one.examples] == [(2, 4), (0, 1), (3, 5)]
    np.testing.assert_array_equal(one.examples[0].values, [1.0, 0, 0, 1.5, 3.0, 0])
    np.testing.assert_array_equal(one.examples[0].tokens, entries.tokens[2])
    assert one.max_activation == 3.0 and one.fired == 5 and one.n_tokens == 24
    assert one.frequency == pytest.approx(5 / 24)
    assert one.histogram_heights.sum() == 5 and one.histogram_edges[0] == 0.25 and one.histogram_edges[-1] == 3.0
    assert len(summarize_latents(entries, fired, [1], n_examples=2)[0].examples) == 2
    with pytest.raises(ValueError, match="'latents': ids \\[7\\] are outside 0..4"):
        summarize_latents(entries, fired, [7])


def test_pages_link_escape_and_shade(tmp_path):
    entries, fired = synthetic_cache()
    summaries = summarize_latents(entries, fired, [0, 1, 3])
    W_dec = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    W_U = np.random.default_rng(2).normal(size=(4, len(VOCAB))).astype(np.float32)
    effects = logit_effects(W_dec, W_U, [0, 1, 3], k=3)
    explanations = {1: "fires on <b>bold</b> & co", 3: "the letter a"}
    scores = {1: {"detection": {"accuracy": 0.6, "f1": 0.5}, "fuzzing": {"accuracy": 0.7}},
              3: {"detection": {"accuracy": 0.9}}}
    out = write_dashboard(str(tmp_path / "dash"), summaries, token_text, effects, explanations, scores,
                          title="tiny & <co>", sort_by="detection.accuracy")
    index = (out / "index.html").read_text()
    links = re.findall(r"href='latents/(\d+)\.html'", index)
    assert links == ["3", "1", "0"]  # by detection accuracy, the unscored latent last
    assert all((out / "latents" / f"{latent}.html").exists() for latent in links)
    assert "fires on &lt;b&gt;bold&lt;/b&gt; &amp; co" in index and "tiny &amp; &lt;co&gt;" in index

    page = (out / "latents" / "1.html").read_text()
    assert "<script" not in page.lower() and "&lt;script&gt;" in page and "&amp;</span>" in page
    assert "&lt;/td&gt;" in page  # token text cannot close the logit tables' cells either
    assert "href='../index.html'" in page and "href='0.html'" in page and "href='3.html'" in page
    assert "fires on &lt;b&gt;bold&lt;/b&gt; &amp; co" in page
    assert "detection</td><td>accuracy</td><td class='num'>0.6<" in page and "fuzzing" in page
    assert "<svg" in page and page.count("<rect") == 30 and "http" not in page.replace(
        "http://www.w3.org/2000/svg", "")  # inline histogram; no network reference
    # Every token of the top example: its shade is its activation over the latent's max; the max token is opaque.
    first = page.split("<div class='example'>")[1].split("</div>")[0]
    spans = re.findall(r"<span class='t( max)?' style='background: rgba\(255, 140, 0, ([0-9.]+)\)' "
                       r"title='([^']+)'>", first)
    alphas = [float(alpha) for _, alpha, _ in spans]
    assert [marked for marked, _, _ in spans].index(" max") == alphas.index(max(alphas))
    assert max(alphas) == 1.0 and alphas == pytest.approx([shade(v, 3.0) for v in [1.0, 0, 0, 1.5, 3.0, 0]], abs=1e-3)
    assert [float(t) for _, _, t in spans] == [1.0, 0, 0, 1.5, 3.0, 0]
    for token in effects.top_ids[effects.row(1)]:
        escaped = VOCAB[token].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", "↵")
        assert f"<td class='tok'>{escaped}</td>" in page
    assert "latent 0" in (out / "latents" / "0.html").read_text() and "never fired" in (
        out / "latents" / "0.html").read_text()

    with pytest.raises(FileExistsError):  # never silently replaced
        write_dashboard(str(out), summaries, token_text)
    write_dashboard(str(out), summaries[:1], token_text, overwrite=True)  # an earlier dashboard may be
    assert not (out / "latents" / "1.html").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ForeignDirectoryError):
        write_dashboard(str(tmp_path / "mine"), summaries, token_text, overwrite=True)
    with pytest.raises(ConfigError, match="config field 'sort_by'"):
        write_dashboard(str(tmp_path / "d2"), summaries, token_text, sort_by="accuracy")
    assert not (tmp_path / "d2").exists()


def test_neuronpedia_json_has_its_fields_and_the_caches_values(tmp_path):
    entries, fired = synthetic_cache()
    summaries = summarize_latents(entries, fired, n_bins=4)
    W_dec = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    W_U = np.random.default_rng(2).normal(size=(4, len(VOCAB))).astype(np.float32)
    effects = logit_effects(W_dec, W_U, k=3)
    path = write_neuronpedia(str(tmp_path / "np"), summaries, token_text, "tiny-llama", "1-res-jaxinterp",
                             hook_name="blocks.1.hook_resid_post", effects=effects,
                             explanations={1: "letters"}, scores={1: {"detection": {"accuracy": 0.75, "f1": 0.5}}},
                             explainer_model="explainer-x", scorer_model="scorer-y")
    features = json.loads(path.read_text())
    assert [f["index"] for f in features] == ["1", "3"]
    one = features[0]
    assert set(one) == NEURON_FIELDS
    assert one["modelId"] == "tiny-llama" and one["layer"] == "1-res-jaxinterp"
    assert one["hookName"] == "blocks.1.hook_resid_post"
    assert one["maxActApprox"] == 3.0 and one["frac_nonzero"] == pytest.approx(5 / 24)
    assert len(one["freq_hist_data_bar_heights"]) == len(one["freq_hist_data_bar_values"]) == 4  # parallel arrays
    assert sum(one["freq_hist_data_bar_heights"]) == 5
    row = effects.row(1)
    assert one["pos_str"] == [VOCAB[t] for t in effects.top_ids[row]]
    assert one["neg_str"] == [VOCAB[t] for t in effects.bottom_ids[row]]
    np.testing.assert_allclose(one["pos_values"], (W_dec[1] @ W_U)[effects.top_ids[row]], rtol=1e-5)
    assert one["pos_values"] == sorted(one["pos_values"], reverse=True)
    assert one["neg_values"] == sorted(one["neg_values"])

    top = one["activations"][0]
    assert set(top) == ACTIVATION_FIELDS
    assert top["tokens"] == [VOCAB[t] for t in entries.tokens[2]] and top["dataIndex"] == "2"
    assert top["values"] == [1.0, 0.0, 0.0, 1.5, 3.0, 0.0]  # the cache's activations of latent 1 in context 2
    assert top["maxValue"] == 3.0 and top["maxValueTokenIndex"] == 4 and top["minValue"] == 0.0
    assert [a["dataIndex"] for a in one["activations"]] == ["2", "0", "3"]
    (explanation,) = one["explanations"]
    assert set(explanation) == EXPLANATION_FIELDS and explanation["description"] == "letters"
    assert explanation["explanationModelName"] == "explainer-x"
    (score,) = explanation["scores"]
    assert set(score) == SCORE_FIELDS and score["value"] == 0.75 and score["explanationScoreTypeName"] == "detection"
    assert json.loads(score["jsonDetails"]) == {"accuracy": 0.75, "f1": 0.5}
    assert features[1]["explanations"] == []

    with pytest.raises(ValueError, match="config field 'score_metric'.*no 'auroc'"):
        write_neuronpedia(str(tmp_path / "np2"), summaries, token_text, "m", "l", explanations={1: "x"},
                          scores={1: {"detection": {"accuracy": 0.1}}}, score_metric="auroc")
    assert not (tmp_path / "np2").exists()
    with pytest.raises(FileExistsError):
        write_neuronpedia(str(tmp_path / "np"), summaries, token_text, "m", "l")


def test_a_trained_sae_cache_end_to_end(tiny_llama, tiny_llama_run, tmp_path):
    from jaxinterp.export import load_sae
    from jaxinterp.interpret import latent_cache, read_latent_cache
    from jaxinterp.interpret.latent_summary import firing_counts
    from jaxinterp.interpret.logit_effects import token_texts
    from jaxinterp.models import load_tokenizer, resolve_model
    from jaxinterp.store import open_store

    sae = load_sae(str(tiny_llama_run / "run"))
    store = open_store(str(tiny_llama_run / "store"))
    hook = "blocks.1.hook_resid_post"
    module = latent_cache(sae.encode, sae.sae.d_sae, store, hook, str(tmp_path / "cache"), "layers.1",
                          n_tokens=64 * 16) / "layers.1"
    entries = read_latent_cache(str(module))
    fired = firing_counts(str(module), entries)
    summaries = summarize_latents(entries, fired, n_examples=5)
    files = resolve_model(tiny_llama)
    W_dec, W_U = np.asarray(sae.params["W_dec"]), read_unembedding(files)
    effects = logit_effects(W_dec, W_U, [s.latent for s in summaries], k=5, block_latents=16)
    dense = W_dec[effects.latents] @ W_U
    np.testing.assert_array_equal(effects.top_ids, np.argsort(-dense, axis=1)[:, :5])
    text = token_texts(load_tokenizer(files))
    out = write_dashboard(str(tmp_path / "dash"), summaries, text, effects)
    assert len(list((out / "latents").glob("*.html"))) == len(summaries) == int((fired > 0).sum())
    path = write_neuronpedia(str(tmp_path / "np"), summaries, text, "tiny", "1-res", effects=effects)
    feature = json.loads(path.read_text())[0]
    latent = int(feature["index"])
    mine = entries.locations[:, 2] == latent
    assert feature["maxActApprox"] == float(entries.activations[mine].max())
    assert feature["frac_nonzero"] == fired[latent] / entries.tokens.size
    top = feature["activations"][0]
    context = int(top["dataIndex"])
    in_context = mine & (entries.locations[:, 0] == context)
    want = np.zeros(64, np.float32)
    want[entries.locations[in_context, 1]] = entries.activations[in_context]
    assert top["values"] == want.tolist()
    assert top["tokens"] == [text(t) for t in entries.tokens[context]]


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="/usr/bin/chromium is absent "
                    "(apt-get install -y chromium)")
def test_a_page_screenshots_to_a_non_blank_png(tmp_path):
    entries, fired = synthetic_cache()
    out = write_dashboard(str(tmp_path / "dash"), summarize_latents(entries, fired), token_text,
                          explanations={1: "letters"})
    png = tmp_path / "page.png"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "dashboard_screenshot.py"),
                           str(out / "latents" / "1.html"), str(png), "--window-size", "800,600"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert pixels.shape == (600, 800, 3)
    assert (pixels != 255).any(axis=2).mean() > 0.01  # text and shading, not a blank page
    shaded = (np.abs(pixels.astype(int) - [255, 140, 0]).sum(axis=2) < 30).sum()
    assert shaded > 50, shaded  # the fully shaded max-activation token is drawn

