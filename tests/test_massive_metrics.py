"""FVU over all tokens and over tokens without massive activations (Sun et al. 2024): the pure
definition, holdout evaluation, training logs, the progress bar, `jaxinterp eval` and the demo summary."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

from jaxinterp.demo import format_summary
from jaxinterp.eval.holdout import evaluate_reconstruction
from jaxinterp.eval.metrics import fraction_variance_unexplained, massive_token_mask, reconstruction_metrics, token_norms
from jaxinterp.eval.run import evaluate_run
from jaxinterp.sae import make_architecture
from jaxinterp.store import open_store
from jaxinterp.train import train
from jaxinterp.train.metrics_log import MetricsLog, progress_postfix
from tests.stores import sparse_activations, write_store
from tests.test_eval import eval_config
from tests.test_train import HOOK, train_config

FVU_KEYS = {"fvu", "explained_variance", "fvu_nonmassive", "explained_variance_nonmassive", "massive_fraction"}
OUTLIER_EVERY, OUTLIER_SCALE = 97, 40.0  # sparse rows have norms ~1.5-4: x40 is far past 10x the median


def activations_with_outliers(n_tokens: int, d: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sparse rows, every ``OUTLIER_EVERY``-th scaled by ``OUTLIER_SCALE``; and the outliers' [tokens] mask."""
    x = sparse_activations(n_tokens, d, n_features=96, active=4, seed=seed)
    outliers = np.arange(n_tokens) % OUTLIER_EVERY == OUTLIER_EVERY // 2
    x[outliers] *= OUTLIER_SCALE
    return x, outliers


def numpy_fvu(x: np.ndarray, x_hat: np.ndarray) -> float:
    x, x_hat = x.astype(np.float64), x_hat.astype(np.float64)
    return float(np.sum((x - x_hat) ** 2) / np.sum((x - x.mean(axis=0)) ** 2))


def by_hand(x: np.ndarray, x_hat: np.ndarray, ratio: float = 10.0) -> dict[str, float]:
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    massive = norms > ratio * np.median(norms)
    kept = ~massive
    return {"fvu": numpy_fvu(x, x_hat), "fvu_nonmassive": numpy_fvu(x[kept], x_hat[kept]),
            "massive_fraction": massive.mean(), "mask": massive}


@pytest.fixture(scope="module")
def outlier_store(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("outliers") / "s")
    x, _ = activations_with_outliers(8192)
    write_store(url, {HOOK: x}, context_size=16, chunk_mib=2**-9, shard_mib=2**-6)
    return url


def test_both_fvus_of_a_batch_match_numpy():
    x, outliers = activations_with_outliers(1000)
    rng = np.random.default_rng(1)
    x_hat = x + rng.normal(scale=0.3, size=x.shape).astype(np.float32)
    x_hat[outliers] += rng.normal(scale=10.0, size=(outliers.sum(), x.shape[1])).astype(np.float32)
    expected = by_hand(x, x_hat)
    np.testing.assert_array_equal(expected["mask"], outliers)
    mask = np.asarray(massive_token_mask(token_norms(jnp.asarray(x)), 10.0))
    np.testing.assert_array_equal(mask, outliers)

    metrics = jax.jit(reconstruction_metrics, static_argnums=2)(jnp.asarray(x), jnp.asarray(x_hat), 10.0)
    assert float(metrics["fvu"]) == pytest.approx(expected["fvu"], rel=1e-5)
    assert float(metrics["fvu_nonmassive"]) == pytest.approx(expected["fvu_nonmassive"], rel=1e-5)
    assert float(metrics["explained_variance_nonmassive"]) == pytest.approx(1 - expected["fvu_nonmassive"], rel=1e-5)
    assert float(metrics["massive_fraction"]) == pytest.approx(outliers.mean())
    assert expected["fvu_nonmassive"] != pytest.approx(expected["fvu"], rel=0.1)  # the outliers weigh on the FVU
    assert float(fraction_variance_unexplained(jnp.asarray(x), jnp.asarray(x_hat), jnp.asarray(~mask))) == \
        pytest.approx(expected["fvu_nonmassive"], rel=1e-5)
    # A higher threshold flags none of them: both FVUs agree.
    none_flagged = reconstruction_metrics(jnp.asarray(x), jnp.asarray(x_hat), 100.0)
    assert float(none_flagged["massive_fraction"]) == 0
    assert float(none_flagged["fvu_nonmassive"]) == pytest.approx(float(none_flagged["fvu"]), rel=1e-6)


def test_evaluate_reconstruction_on_a_store_matches_numpy(outlier_store):
    x = open_store(outlier_store).read(HOOK, 0, 2500)
    architecture = make_architecture({"architecture": "topk", "k": 4})
    params, arch_state = architecture.init(jax.random.key(0), x.shape[1], 64, x[:512])
    x_hat = np.asarray(architecture.decode(params, architecture.encode(params, arch_state, jnp.asarray(x))))
    expected = by_hand(x, x_hat)
    # Batches of 700: the mask comes from the median of all 2,500 rows, the sums add up across batches.
    metrics, _ = evaluate_reconstruction(architecture, params, arch_state, x, batch_size=700, massive_ratio=10.0)
    assert metrics["fvu"] == pytest.approx(expected["fvu"], rel=1e-4)
    assert metrics["fvu_nonmassive"] == pytest.approx(expected["fvu_nonmassive"], rel=1e-4)
    assert metrics["explained_variance"] == pytest.approx(1 - expected["fvu"], rel=1e-4)
    assert metrics["explained_variance_nonmassive"] == pytest.approx(1 - expected["fvu_nonmassive"], rel=1e-4)
    assert metrics["massive_fraction"] == pytest.approx(expected["massive_fraction"]) and metrics["massive_fraction"] > 0
    assert metrics["fvu_nonmassive"] != pytest.approx(metrics["fvu"], rel=1e-2)


def test_train_logs_both_fvus_per_sae_and_resumes_with_another_ratio(outlier_store, tmp_path):
    run = tmp_path / "run"
    summary = train(train_config(outlier_store, run, steps=20, log_every=10, checkpoint_every=10,
                                 sweep="sae: ; small: k=4", massive_tokens="keep"), progress=False)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_lines = [line for line in lines if line["split"] == "train"]
    assert {line["sae"] for line in train_lines} == {"sae", "small"}
    for line in lines:
        assert FVU_KEYS <= set(line), line
    for line in train_lines:
        assert 0 < line["massive_fraction"] < 0.05 and line["fvu_nonmassive"] != line["fvu"]
    by_step = {}
    for line in train_lines:  # the same hook's batches: the same massive rows for every SAE
        by_step.setdefault(line["step"], set()).add(line["massive_fraction"])
    assert all(len(fractions) == 1 for fractions in by_step.values())
    assert any(line["split"] == "holdout" for line in lines)
    evaluation = json.loads((run / "eval.json").read_text())
    for name in ("sae", "small"):
        assert FVU_KEYS <= set(evaluation[name]) and evaluation[name]["massive_fraction"] > 0
        assert summary["eval"][name]["fvu_nonmassive"] == evaluation[name]["fvu_nonmassive"]
    events = b"".join(path.read_bytes() for path in (run / "tensorboard").rglob("events.out.tfevents.*"))
    assert b"sae/train/fvu_nonmassive" in events and b"small/holdout/explained_variance_nonmassive" in events

    # massive_ratio only changes metrics: a rerun with another one resumes the run.
    resumed = train(train_config(outlier_store, run, steps=30, log_every=10, checkpoint_every=10,
                                 sweep="sae: ; small: k=4", massive_ratio=1e6, massive_tokens="keep"), progress=False)
    assert resumed["steps"] == 30 and resumed["eval"]["sae"]["massive_fraction"] == 0
    assert resumed["eval"]["sae"]["fvu_nonmassive"] == pytest.approx(resumed["eval"]["sae"]["fvu"], rel=1e-5)


def test_progress_bar_shows_window_means(tmp_path):
    assert progress_postfix({"fvu": 0.25, "fvu_nonmassive": 0.125, "l0": 31.96, "dead_fraction": 0.0104}) == \
        {"fvu": "0.250", "fvu_nonmassive": "0.125", "l0": "32.0", "dead": "0.010"}
    log = MetricsLog(epath.Path(tmp_path), start=0, total=10, batch_size=4, progress=True)
    try:
        for fvu, fvu_nonmassive in ((0.9, 0.1), (0.1, 0.3)):  # one batch with a massive token, one without
            log.add({"sae": {"fvu": jnp.float32(fvu), "fvu_nonmassive": jnp.float32(fvu_nonmassive),
                             "l0": jnp.float32(8.0), "dead_fraction": jnp.float32(0.5)}})
        log.write(2)
        assert log.bar.postfix == "fvu=0.500, fvu_nonmassive=0.200, l0=8.0, dead=0.500"
    finally:
        log.close()


def test_jaxinterp_eval_writes_both_fvus(tiny_llama_run, tmp_path):
    assert FVU_KEYS <= set(json.loads((tiny_llama_run / "run" / "eval.json").read_text())["sae"])
    result = evaluate_run(eval_config(tiny_llama_run / "run", ce_contexts=0, out=str(tmp_path / "eval"),
                                      massive_ratio=2.0))
    written = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert FVU_KEYS <= set(written) and written["fvu_nonmassive"] == result["fvu_nonmassive"]
    assert written["explained_variance_nonmassive"] == pytest.approx(1 - written["fvu_nonmassive"])


def test_demo_summary_shows_both_fvus():
    summary = {
        "model": "SmolLM2-135M", "hook": "blocks.15.hook_resid_post", "tokens_extracted": 43180,
        "extract_tokens_per_s": 1000.0, "train_tokens_per_s": None, "train_tokens": 819200, "mesh": {"data": 2},
        "holdout": {"fvu": 0.796, "explained_variance": 0.204, "fvu_nonmassive": 0.122,
                    "explained_variance_nonmassive": 0.878, "massive_fraction": 64 / 43180, "l0": 32.0, "tokens": 43180},
        "dead_fraction": 0.01,
        "eval": {"ce_tokens_predicted": 1008, "backend": "jax", "ce_loss_recovered": 0.9, "ce_loss_clean": 3.0,
                 "ce_loss_spliced": 3.2, "ce_loss_zero_ablated": 5.0, "kl_spliced": 0.2},
        "outputs": {"store": "s", "run": "r", "eval": "e", "saelens": "l"}, "wall_seconds": 60.0,
    }
    text = format_summary(summary)
    assert "FVU 0.796  explained variance 0.204" in text and "left out of training" not in text
    assert "; 12 massive-activation tokens left out of training" in format_summary({**summary, "dropped_massive_rows": 12})
    assert "; 7 massive-activation tokens shrunk to the threshold norm" in format_summary(
        {**summary, "shrunk_massive_rows": 7})
    assert "without massive activations (0.15% of tokens left out)  FVU 0.122  explained variance 0.878" in text
