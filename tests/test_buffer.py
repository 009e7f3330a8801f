from pathlib import Path

import jax
import numpy as np
import pytest

from jaxinterp.buffer import ActivationBuffer, NonFiniteRowsError
from jaxinterp.mesh import batch_sharding, make_mesh
from jaxinterp.store import StoreError, open_store
from tests.stores import write_store

N, CONTEXT = 4096, 16


@pytest.fixture(scope="module")
def id_store(tmp_path_factory):
    """Two aligned hooks whose rows identify themselves: ``row = (id, 1)`` and ``twice = (2 id, id)``."""
    url = str(tmp_path_factory.mktemp("ids") / "s")
    ids = np.arange(N, dtype=np.float32)[:, None]
    write_store(url, {"row": np.concatenate([ids, np.ones_like(ids)], axis=1),
                      "twice": np.concatenate([2 * ids, ids], axis=1)}, context_size=CONTEXT,
                chunk_mib=2**-11, shard_mib=2**-8)
    return open_store(url)


def make_buffer(store, **overrides):
    args = dict(hooks=["row", "twice"], batch_size=64, seed=3, holdout_fraction=0.1, mixing_chunks=3, exclude_bos=True)
    return ActivationBuffer(store, **(args | overrides))


def train_ids(buffer):
    per_chunk = buffer.rows_per_chunk
    return {r for c in buffer.split.train for r in range(c * per_chunk, (c + 1) * per_chunk) if r % CONTEXT != 0}


@pytest.mark.parametrize("devices", [1, 8])
def test_one_epoch_gives_every_kept_token_exactly_once(id_store, devices):
    buffer = make_buffer(id_store, sharding=batch_sharding(make_mesh(data=devices, model=1)))
    expected = train_ids(buffer)
    holdout = {int(r) for r in buffer.holdout(10**6)["row"][:, 0]}
    assert expected.isdisjoint(holdout) and len(expected) + len(holdout) == N - N // CONTEXT
    batches = buffer.batches()
    drawn = [next(batches) for _ in range(-(-len(expected) // 64))]
    assert isinstance(drawn[0]["row"], jax.Array) and len(drawn[0]["row"].sharding.device_set) == devices
    ids = np.concatenate([np.asarray(b["row"])[:, 0] for b in drawn]).astype(int)
    first_epoch = ids[: len(expected)]
    assert sorted(first_epoch) == sorted(expected)  # each exactly once, no BOS (multiples of CONTEXT)
    twice = np.concatenate([np.asarray(b["twice"]) for b in drawn])
    np.testing.assert_array_equal(twice[:, 0], 2 * ids)  # hooks are row-aligned
    np.testing.assert_array_equal(twice[:, 1], ids)


def test_resume_at_any_step_continues_the_same_sequence(id_store):
    buffer = make_buffer(id_store)
    stream = buffer.batches()
    straight = [next(stream)["row"] for _ in range(150)]  # past two epoch boundaries
    for step in (1, 7, 53, 54, 55, 101, 149):
        resumed = next(make_buffer(id_store).batches(start_step=step))
        np.testing.assert_array_equal(resumed["row"], straight[step])


def test_streams_give_each_token_once_and_the_same_batches_on_any_process_count(id_store, monkeypatch):
    def process_batches(index, count, steps, start_step=0):
        monkeypatch.setattr(jax, "process_index", lambda: index)
        monkeypatch.setattr(jax, "process_count", lambda: count)
        stream = make_buffer(id_store, streams=4).batches(start_step=start_step)
        return [next(stream)["row"][:, 0].astype(int) for _ in range(steps)]

    one = process_batches(0, 1, 120)
    buffer = make_buffer(id_store, streams=4)
    # Stream s fills rows [16 s, 16 s + 16) of every batch; over its own epoch each of its tokens
    # comes once, and the streams' tokens together are the training split's.
    epochs = [np.concatenate([batch[16 * s: 16 * s + 16] for batch in one])[: buffer.epoch_rows(s)] for s in range(4)]
    assert sorted(np.concatenate(epochs)) == sorted(train_ids(buffer))
    for count in (2, 4):  # each process reads its streams' parts: together they are the 1-process batches
        parts = [process_batches(index, count, 120) for index in range(count)]
        for step in range(120):
            np.testing.assert_array_equal(np.concatenate([p[step] for p in parts]), one[step])
    np.testing.assert_array_equal(process_batches(1, 2, 1, start_step=77)[0], one[77][32:])  # resume onto 2
    with pytest.raises(ValueError, match="'streams' \\(4\\) must be a multiple of the process count \\(3\\)"):
        process_batches(0, 3, 1)


def test_no_holdout_split_is_refused(id_store):
    with pytest.raises(ValueError, match="holdout_fraction"):
        make_buffer(id_store, holdout_fraction=0.0).holdout(10)


def test_normalisation_gives_mean_norm_sqrt_d(id_store):
    buffer = make_buffer(id_store, hooks=["twice"])
    scales = buffer.estimate_scales(2048)
    buffer.scales = scales
    rows = next(buffer.batches())["twice"]
    assert np.mean(np.linalg.norm(buffer.first_rows(4096)["twice"], axis=1)) == pytest.approx(np.sqrt(2), rel=0.1)
    assert rows.dtype == np.float32


def test_nonfinite_rows_error_names_rows_and_shard_or_are_skipped(tmp_path):
    values = np.random.default_rng(0).normal(size=(1024, 4)).astype(np.float32)
    values[300:303, 1] = np.nan
    values[700, 0] = np.inf
    url = str(tmp_path / "s")
    write_store(url, {"h": values}, context_size=CONTEXT, chunk_mib=2**-10, shard_mib=2**-8)
    store = open_store(url)
    batches = make_buffer(store, hooks=["h"], holdout_fraction=0.0).batches()
    with pytest.raises(NonFiniteRowsError, match=r"'h' at rows (300\.\.302 \(3 rows\)|700\.\.700 \(1 rows\)) of .*h/c/\d+/0"):
        for _ in range(20):
            next(batches)
    buffer = make_buffer(store, hooks=["h"], holdout_fraction=0.0, on_nonfinite="skip")
    batches = buffer.batches()
    drawn = np.concatenate([next(batches)["h"] for _ in range(14)])
    # 4 in this epoch; the background reader may already be into the next one, dropping its rows again.
    assert np.isfinite(drawn).all() and 4 <= buffer.skipped_rows <= 8
    resumed = next(make_buffer(store, hooks=["h"], holdout_fraction=0.0, on_nonfinite="skip").batches(start_step=13))
    np.testing.assert_array_equal(resumed["h"], drawn[13 * 64:])


def test_corrupted_shard_names_its_file(tmp_path):
    values = np.random.default_rng(1).normal(size=(1024, 8)).astype(np.float32)
    url = str(tmp_path / "s")
    write_store(url, {"h": values}, context_size=CONTEXT, chunk_mib=2**-10, shard_mib=2**-8)
    for shard in sorted((tmp_path / "s" / "h" / "c").iterdir()):
        path = Path(shard) / "0"
        data = bytearray(path.read_bytes())
        data[40] ^= 0x55
        path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"h/c/\d+/0"):
        next(make_buffer(open_store(url), hooks=["h"]).batches())
