"""``massive_tokens``: shrinking massive-activation training tokens to the threshold norm, or leaving
them out, changes which rows the buffer yields (or their norms) and nothing else; evaluation still
sees them as they are; a resumed run stays bitwise exact."""

import json

import numpy as np
import pytest

from jaxinterp.buffer import ActivationBuffer
from jaxinterp.config import ConfigError
from jaxinterp.runs import load_trained
from jaxinterp.store import open_store
from jaxinterp.train import train
from jaxinterp.train.checkpoint import RunExistsError
from tests.test_massive_metrics import outlier_store  # noqa: F401  (the fixture)
from tests.test_train import HOOK, train_config


def buffer(store_url: str, massive_norms=None, **kwargs) -> ActivationBuffer:
    return ActivationBuffer(open_store(store_url), [HOOK], 256, seed=3, holdout_fraction=0.1, mixing_chunks=4,
                            exclude_bos=True, massive_norms=massive_norms, **kwargs)


def concatenated(batches, n: int) -> np.ndarray:
    return np.concatenate([next(batches)[HOOK] for _ in range(n)])


def test_thresholds_are_ratio_times_the_median_norm_of_the_estimate_rows(outlier_store):  # noqa: F811
    plain = buffer(outlier_store)
    rows = plain._rows_of(plain._epoch_order(0), 2048, scaled=False)[HOOK]
    thresholds = plain.estimate_massive_norms(2048, 10.0)
    assert thresholds[HOOK] == pytest.approx(10 * np.median(np.linalg.norm(rows, axis=1)), rel=1e-6)
    massive = np.linalg.norm(rows, axis=1) > thresholds[HOOK]
    assert 0 < massive.sum() < 0.05 * len(rows)
    # The normalisation estimate sees the rows as training does: without them, or shrunk to the threshold.
    kept = buffer(outlier_store, thresholds)
    assert kept.estimate_scales(2048)[HOOK] == pytest.approx(
        np.sqrt(rows.shape[1]) / np.mean(np.linalg.norm(rows[~massive], axis=1)), rel=1e-3)
    assert plain.estimate_scales(2048)[HOOK] < 0.8 * kept.estimate_scales(2048)[HOOK]
    shrunk_norms = np.minimum(np.linalg.norm(rows, axis=1), thresholds[HOOK])
    shrunk = buffer(outlier_store, thresholds, massive_mode="shrink")
    assert shrunk.estimate_scales(2048)[HOOK] == pytest.approx(np.sqrt(rows.shape[1]) / np.mean(shrunk_norms), rel=1e-3)


def test_shrinking_rescales_the_massive_rows_of_the_unfiltered_stream_to_the_threshold(outlier_store):  # noqa: F811
    thresholds = buffer(outlier_store).estimate_massive_norms(2048, 10.0)
    everything = concatenated(buffer(outlier_store)._numpy_batches(), 70)  # over two epochs
    norms = np.linalg.norm(everything, axis=1)
    massive = norms > thresholds[HOOK]
    assert massive.sum() > 50
    shrunk = buffer(outlier_store, thresholds, massive_mode="shrink")
    got = concatenated(shrunk._numpy_batches(), 70)
    np.testing.assert_array_equal(got[~massive], everything[~massive])  # same rows, same order
    np.testing.assert_allclose(np.linalg.norm(got[massive], axis=1), thresholds[HOOK], rtol=1e-5)
    np.testing.assert_allclose(got[massive], everything[massive] * (thresholds[HOOK] / norms[massive])[:, None],
                               rtol=1e-5)  # the direction kept
    assert shrunk.massive_rows >= massive.sum()
    # Row counts do not change, so a start step seeks; the same batches as the uninterrupted stream.
    np.testing.assert_array_equal(concatenated(shrunk._numpy_batches(start_step=37), 5), got[37 * 256: 42 * 256])
    np.testing.assert_array_equal(shrunk.holdout(4096)[HOOK], buffer(outlier_store).holdout(4096)[HOOK])


def test_the_stream_is_the_unfiltered_stream_without_its_massive_rows(outlier_store):  # noqa: F811
    thresholds = buffer(outlier_store).estimate_massive_norms(2048, 10.0)
    everything = concatenated(buffer(outlier_store)._numpy_batches(), 70)  # over two epochs
    massive = np.linalg.norm(everything, axis=1) > thresholds[HOOK]
    assert massive.sum() > 50
    expected = everything[~massive]
    kept = buffer(outlier_store, thresholds)
    got = concatenated(kept._numpy_batches(), len(expected) // 256)
    np.testing.assert_array_equal(got, expected[: len(got)])
    assert kept.massive_rows > 0
    # Starting at a step replays to it: the same batches as the uninterrupted stream.
    np.testing.assert_array_equal(concatenated(kept._numpy_batches(start_step=37), 5), got[37 * 256: 42 * 256])
    # Holdout rows are never filtered.
    np.testing.assert_array_equal(kept.holdout(4096)[HOOK], buffer(outlier_store).holdout(4096)[HOOK])


def test_each_stream_drops_only_its_own_massive_rows(outlier_store):  # noqa: F811
    thresholds = buffer(outlier_store).estimate_massive_norms(2048, 10.0)
    plain, kept = buffer(outlier_store, streams=2), buffer(outlier_store, thresholds, streams=2)
    for stream in (0, 1):
        everything = concatenated(plain._numpy_batches(streams=[stream]), 40)
        expected = everything[np.linalg.norm(everything, axis=1) <= thresholds[HOOK]]
        got = concatenated(kept._numpy_batches(streams=[stream]), len(expected) // 128)
        np.testing.assert_array_equal(got, expected[: len(got)])


@pytest.mark.parametrize("mode", ["drop", "shrink"])
def test_training_with_massive_tokens_handled_resumes_bitwise_and_still_evaluates_them(outlier_store, tmp_path,  # noqa: F811
                                                                                        monkeypatch, mode):
    fields = {"massive_tokens": mode, "normalize": True, "norm_tokens": 2048, "checkpoint_every": 10}
    counted = f"{'dropped' if mode == 'drop' else 'shrunk'}_massive_rows"
    straight = train(train_config(outlier_store, tmp_path / "straight", steps=30, **fields), progress=False)
    polls = iter(range(1, 100))
    with monkeypatch.context() as patch:  # a SIGTERM seen at step 13: checkpoint there and stop
        patch.setattr("jaxinterp.train.loop._Preemption.agreed", lambda self: next(polls) == 13)
        stopped = train(train_config(outlier_store, tmp_path / "resumed", steps=30, **fields), progress=False)
    assert stopped["preempted"] and stopped["steps"] == 13
    resumed = train(train_config(outlier_store, tmp_path / "resumed", steps=30, **fields), progress=False)
    a, b = load_trained(str(tmp_path / "straight")), load_trained(str(tmp_path / "resumed"))
    for name in a.state.params:
        np.testing.assert_array_equal(a.state.params[name], b.state.params[name], err_msg=name)
    assert straight["eval"]["sae"][counted] > 0
    assert straight["eval"]["sae"]["massive_fraction"] > 0  # the holdout keeps its massive rows
    assert resumed["eval"]["sae"]["fvu"] == straight["eval"]["sae"]["fvu"]
    lines = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    if mode == "drop":  # shrunk rows sit at the threshold, which a batch's own median may put above or below
        assert all(line["massive_fraction"] == 0 for line in lines if line["split"] == "train")
    assert all(counted in line for line in lines if line["split"] == "train")

    # Every step differs from a run that keeps them, and the two cannot be mixed in one directory.
    kept = train(train_config(outlier_store, tmp_path / "kept", steps=30, **{**fields, "massive_tokens": "keep"}),
                 progress=False)
    assert kept["eval"]["sae"]["fvu"] != straight["eval"]["sae"]["fvu"]
    assert counted not in kept["eval"]["sae"]
    with pytest.raises(RunExistsError, match="massive_tokens"):
        train(train_config(outlier_store, tmp_path / "straight", steps=40, **{**fields, "massive_tokens": "keep"}),
              progress=False)


def test_a_batch_larger_than_an_epoch_is_refused_as_without_the_filter(outlier_store):  # noqa: F811
    thresholds = buffer(outlier_store).estimate_massive_norms(2048, 10.0)
    store = open_store(outlier_store)
    for massive_norms, mode in ((None, "drop"), (thresholds, "drop"), (thresholds, "shrink")):
        too_big = ActivationBuffer(store, [HOOK], 2**16, seed=3, holdout_fraction=0.1, mixing_chunks=4,
                                   exclude_bos=True, massive_norms=massive_norms, massive_mode=mode)
        with pytest.raises(ConfigError, match="config field 'batch_size'"):
            next(too_big._numpy_batches())



def test_a_transcoder_run_drops_massive_pairs_instead_of_shrinking_them(tmp_path):
    # Shrinking rescales each hook by its own factor, so (input, target) would stop being one MLP's
    # input and output: with a transcoder member, the default (shrink) drops the massive rows.
    from jaxinterp.train.loop import massive_mode
    from jaxinterp.train.members import build_members
    from tests.stores import write_store
    from tests.test_massive_metrics import activations_with_outliers

    x, _ = activations_with_outliers(8192)
    M = np.random.default_rng(3).normal(size=(32, 32)).astype(np.float32)
    target = "blocks.0.hook_mlp_out"
    url = str(tmp_path / "pairs")
    write_store(url, {HOOK: x, target: np.tanh(x @ M)}, context_size=16, chunk_mib=2**-9, shard_mib=2**-6)
    cfg = train_config(url, tmp_path / "tc", target_hook=target, norm_tokens=2048, steps=12, checkpoint_every=100)
    assert cfg["massive_tokens"] == "shrink" and massive_mode("shrink", build_members(cfg)) == "drop"
    assert massive_mode("shrink", build_members(train_config(url, tmp_path / "sae"))) == "shrink"

    summary = train(cfg, progress=False)["eval"]["sae"]
    assert summary["dropped_massive_rows"] > 0 and "shrunk_massive_rows" not in summary
    # What such a run's buffer yields are the store's own pairs (the target still the MLP of the input).
    pairs = ActivationBuffer(open_store(url), [HOOK, target], 256, seed=3, holdout_fraction=0.1, mixing_chunks=4,
                             exclude_bos=True, massive_mode="drop")
    pairs.massive_norms = pairs.estimate_massive_norms(2048, 10.0)
    batch = next(pairs.batches())
    np.testing.assert_allclose(np.tanh(np.asarray(batch[HOOK]) @ M), np.asarray(batch[target]), rtol=1e-5, atol=1e-6)
    assert np.max(np.linalg.norm(np.asarray(batch[HOOK]), axis=1)) <= pairs.massive_norms[HOOK] * (1 + 1e-6)
