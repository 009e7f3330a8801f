import json
from pathlib import Path

import numpy as np
import pytest

from jaxinterp.store import StoreError, StoreExistsError, StoreWriter, open_store, plan_layout
from tests.stores import write_store


def test_layout_is_shard_and_context_aligned():
    layout = plan_layout(576, 4, 256, 2.0, 64.0)
    assert layout.rows_per_chunk == 512 and layout.rows_per_shard % 512 == 0 and layout.rows_per_shard % 256 == 0
    assert 32 * 2**20 <= layout.rows_per_shard * 576 * 4 <= 128 * 2**20


def test_roundtrip_manifest_and_arrays(tmp_path):
    x = np.random.default_rng(0).normal(size=(1008, 8)).astype(np.float32)  # whole contexts of 16, as extract writes
    manifest = write_store(str(tmp_path / "s"), {"blocks.0.hook_resid_post": x})
    store = open_store(str(tmp_path / "s"))
    assert store.manifest == manifest and manifest["complete"] and store.n_tokens == 1008
    np.testing.assert_array_equal(store.read("blocks.0.hook_resid_post", 0, 1008), x)
    assert store.read("pos", 0, 20).tolist() == list(range(16)) + [0, 1, 2, 3]
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["d_in"] == 8
    with pytest.raises(StoreError, match="no array 'blocks.1.hook_resid_post'.*blocks.0.hook_resid_post"):
        store.array("blocks.1.hook_resid_post")


def test_existing_store_with_other_config_is_never_overwritten(tmp_path):
    x = np.ones((112, 4), np.float32)
    write_store(str(tmp_path / "s"), {"h": x})
    before = (tmp_path / "s" / "h" / "c" / "0" / "0").read_bytes()
    with pytest.raises(StoreExistsError, match="differs in: context_size"):
        write_store(str(tmp_path / "s"), {"h": x}, context_size=32)
    assert (tmp_path / "s" / "h" / "c" / "0" / "0").read_bytes() == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StoreExistsError, match="not an empty directory"):
        write_store(str(tmp_path / "other"), {"h": x})


def test_resume_rewrites_only_unmarked_shards(tmp_path):
    x = np.random.default_rng(1).normal(size=(608, 4)).astype(np.float32)
    manifest = write_store(str(tmp_path / "s"), {"h": x}, chunk_mib=2**-14, shard_mib=2**-10)
    writer = StoreWriter(str(tmp_path / "s"), manifest)
    assert writer.pending_shards() == [] and writer.n_shards > 2
    (tmp_path / "s" / "_progress" / "shard_000001").unlink()  # as if killed before the marker
    assert writer.pending_shards() == [1]


def test_incomplete_and_missing_stores_are_reported(tmp_path):
    with pytest.raises(StoreError, match="no activation store"):
        open_store(str(tmp_path / "nothing"))
    x = np.ones((112, 4), np.float32)
    write_store(str(tmp_path / "s"), {"h": x})
    manifest_path = tmp_path / "s" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(StoreError, match="incomplete"):
        open_store(str(tmp_path / "s"))
    manifest_path.write_text(json.dumps({**manifest, "d_in": 5}))
    with pytest.raises(StoreError, match="array 'h' is \\(112, 4\\)"):
        open_store(str(tmp_path / "s"))


def test_flipped_byte_names_the_shard_file(tmp_path):
    x = np.random.default_rng(2).normal(size=(512, 8)).astype(np.float32)
    write_store(str(tmp_path / "s"), {"h": x})
    shard = Path(tmp_path / "s" / "h" / "c" / "0" / "0")
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF  # inside the first inner chunk's data, not its index
    shard.write_bytes(bytes(data))
    store = open_store(str(tmp_path / "s"))
    with pytest.raises(StoreError, match=r"h/c/0/0"):
        store.read("h", 0, 10)
