"""Damaged stores and bad corpora (issue 20): each is a one-line error naming the file, never zeros or a traceback."""

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.cli import main
from jaxinterp.config import ConfigError, load_config
from jaxinterp.extract import extract, load_documents, pack_documents
from jaxinterp.store import StoreError, StoreExistsError, StoreWriter, open_store
from tests.stores import write_store

HOOK = "blocks.1.hook_resid_post"


def small_store(path: Path, **overrides) -> Path:
    """A complete synthetic store of 8 shards (64 rows each, context 16) at hook ``h``."""
    x = np.random.default_rng(0).normal(size=(512, 4)).astype(np.float32)
    write_store(str(path), {"h": x}, chunk_mib=2**-14, shard_mib=2**-10, **overrides)
    return path


def extract_config(model: str, out: Path, **overrides):
    fields = {"model": model, "out": str(out), "hooks": HOOK, "max_tokens": 2048, "context_size": 64,
              "batch_size": 4, "chunk_mib": 1 / 64, "shard_mib": 1 / 16, **overrides}
    return load_config("configs/extract.py", fields, schemas.EXTRACT, "extract")


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def cli_error(capsys, argv: list[str]) -> str:
    """Runs the CLI, asserts exit 2, and returns its single stderr line."""
    capsys.readouterr()  # drop what earlier calls printed (model-loading progress bars)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def extract_argv(model: str, *overrides: str) -> list[str]:
    return ["extract", "--config", "configs/extract.py", f"--config.model={model}", f"--config.hooks={HOOK}",
            *overrides]


def train_argv(store: Path, out: Path) -> list[str]:
    return ["train", "--config", "configs/train.py", f"--config.store={store}", "--config.hook=h",
            f"--config.out={out}"]


# A. missing shard files


def test_missing_shard_files_and_markers_are_named_on_open(tmp_path, capsys):
    store = small_store(tmp_path / "s")
    (store / "h" / "c" / "2" / "0").unlink()
    (store / "pos" / "c" / "5").unlink()
    with pytest.raises(StoreError, match=r"2 shard file\(s\).*missing: .*/s/h/c/2/0, .*/s/pos/c/5; rerun the same "
                                         r"`jaxinterp extract` command"):
        open_store(str(store))
    err = cli_error(capsys, train_argv(store, tmp_path / "run"))
    assert err.startswith("jaxinterp train: error: ") and "h/c/2/0" in err and "pos/c/5" in err
    for shard in (0, 1, 3, 4):
        (store / "tokens" / "c" / str(shard)).unlink()
    (store / "_progress" / "shard_000007").unlink()
    with pytest.raises(StoreError, match=r"7 shard file\(s\).* and 4 more; rerun"):
        open_store(str(store))


def test_marker_without_its_file_is_named(tmp_path):
    store = small_store(tmp_path / "s")
    (store / "_progress" / "shard_000003").unlink()
    with pytest.raises(StoreError, match=r"missing: .*/s/_progress/shard_000003; rerun"):
        open_store(str(store))


def test_all_zero_shard_is_still_written(tmp_path):
    # zarr3 skips chunks equal to the fill value by default, which would look like a lost shard
    write_store(str(tmp_path / "s"), {"h": np.zeros((512, 4), np.float32)}, chunk_mib=2**-14, shard_mib=2**-14)
    assert (tmp_path / "s" / "h" / "c" / "0" / "0").exists() and (tmp_path / "s" / "doc" / "c" / "0").exists()
    assert (open_store(str(tmp_path / "s")).read("h", 0, 512) == 0).all()


def test_rerun_extract_rewrites_lost_shards_byte_identical(tiny_llama, tmp_path):
    cfg = extract_config(tiny_llama, tmp_path / "s")
    extract(cfg, progress=False)
    original = files_of(tmp_path / "s")
    rows_per_shard = open_store(str(tmp_path / "s")).layout.rows_per_shard
    (tmp_path / "s" / HOOK / "c" / "2" / "0").unlink()
    (tmp_path / "s" / "pos" / "c" / "5").unlink()
    with pytest.raises(StoreError, match="2 shard file"):
        open_store(str(tmp_path / "s"))
    assert extract(cfg, progress=False).tokens_written == 2 * rows_per_shard
    assert files_of(tmp_path / "s") == original
    open_store(str(tmp_path / "s"))


def test_lost_shard_of_another_process_keeps_the_store_incomplete(tmp_path):
    store = small_store(tmp_path / "s")
    manifest = json.loads((store / "manifest.json").read_text())
    kept = (store / "h" / "c" / "3" / "0").read_bytes()
    (store / "h" / "c" / "3" / "0").unlink()  # shard 3 belongs to process 1 of 2
    first = StoreWriter(str(store), manifest, process_index=0, process_count=2, timeout=0.5)
    assert first.pending_shards() == [] and not json.loads((store / "manifest.json").read_text())["complete"]
    with pytest.raises(TimeoutError, match=r"shards \[3\]"):
        first.finish()  # never marks a store complete while a shard file is missing
    second = StoreWriter(str(store), manifest, process_index=1, process_count=2, timeout=5)
    assert second.pending_shards() == [3]
    start, stop = second.shard_rows(3)
    rows = np.arange(start, stop)
    x = np.random.default_rng(0).normal(size=(512, 4)).astype(np.float32)
    second.write_shard(3, {"h": x[start:stop], "tokens": (rows % 500).astype(np.int32), "doc": rows // 64,
                           "pos": (rows % 16).astype(np.int32)})
    with ThreadPoolExecutor(1) as pool:
        waiter = pool.submit(second.finish)  # waits for process 0 to mark the store complete
        StoreWriter(str(store), manifest, process_index=0, process_count=2, timeout=5).finish()
        assert waiter.result()["complete"]
    assert (store / "h" / "c" / "3" / "0").read_bytes() == kept
    open_store(str(store))


# B. a manifest that does not parse


@pytest.mark.parametrize("damage, problem", [
    (lambda raw: raw[: len(raw) // 2], "not valid JSON"),  # truncated
    (lambda raw: b"\xff\xfe" + raw, "not valid JSON: 'utf-8' codec"),  # garbled bytes
    (lambda raw: json.dumps({k: v for k, v in json.loads(raw).items() if k != "n_tokens"}).encode(),
     "key 'n_tokens' is missing"),
    (lambda raw: json.dumps({**json.loads(raw), "hook_names": "h"}).encode(), "key 'hook_names' is 'h'"),
    (lambda raw: b"[]", "a JSON list, not an object"),
], ids=["truncated", "garbled", "no_n_tokens", "hooks_not_a_list", "not_an_object"])
def test_corrupt_manifest_is_a_store_error(tmp_path, damage, problem):
    store = small_store(tmp_path / "s")
    path = store / "manifest.json"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(StoreError, match=rf"s/manifest.json is corrupt \({problem}.*--config.overwrite=true to "
                                         "rebuild"):
        open_store(str(store))


def test_corrupt_manifest_through_the_cli_and_rebuilt_by_overwrite(tiny_llama, tmp_path, capsys):
    cfg = extract_config(tiny_llama, tmp_path / "s", max_tokens=512)
    extract(cfg, progress=False)
    path = tmp_path / "s" / "manifest.json"
    path.write_text(path.read_text()[:40])
    err = cli_error(capsys, train_argv(tmp_path / "s", tmp_path / "run"))
    assert "manifest.json is corrupt (not valid JSON" in err
    args = extract_argv(tiny_llama, f"--config.out={tmp_path / 's'}", "--config.max_tokens=512",
                        "--config.context_size=64", "--config.chunk_mib=0.015625", "--config.shard_mib=0.0625")
    assert "manifest.json is corrupt" in cli_error(capsys, args)
    assert extract(extract_config(tiny_llama, tmp_path / "s", max_tokens=512, overwrite=True),
                   progress=False).tokens_written == 512
    assert open_store(str(tmp_path / "s")).n_tokens == 512


def test_overwrite_leaves_a_foreign_directory_with_a_garbled_manifest(tmp_path):
    manifest = json.loads((small_store(tmp_path / "s") / "manifest.json").read_text())
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "manifest.json").write_text("{not json")
    with pytest.raises(StoreExistsError, match="not a jaxinterp store"):
        StoreWriter(str(tmp_path / "app"), manifest, overwrite=True)
    assert [p.name for p in (tmp_path / "app").iterdir()] == ["manifest.json"]


# C. an edited context_size


@pytest.mark.parametrize("context_size", [8, 32, 24, 512])
def test_edited_context_size_is_caught(tmp_path, capsys, context_size):
    store = small_store(tmp_path / "s")
    path = store / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "context_size": context_size}))
    with pytest.raises(StoreError, match=rf"manifest.json: field 'context_size' \({context_size}\) does not .*'pos'"):
        open_store(str(store))
    if context_size == 32:
        assert "field 'context_size' (32)" in cli_error(capsys, train_argv(store, tmp_path / "run"))


# D. corpus errors


def corpus_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """``{case: (corpus path, message pattern)}``."""
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("")
    (tmp_path / "blank" / "b.txt").write_text("  \n")
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (tmp_path / "latin1.jsonl").write_bytes('{"text": "ok"}\n{"text": "caf\xe9"}\n'.encode("latin-1"))
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{"text": cut}\n')
    (tmp_path / "list.jsonl").write_text('["text"]\n')
    return {
        "empty_txt": (tmp_path / "empty.txt", r"empty.txt holds no text"),
        "empty_jsonl": (tmp_path / "empty.jsonl", r"empty.jsonl holds no text"),
        "empty_dir": (tmp_path / "blank", r"directory .*blank \(2 files\) holds no text"),
        "binary_txt": (tmp_path / "image.txt", r"image.txt is binary, not UTF-8 text \(NUL byte at offset 8\)"),
        "latin1_txt": (tmp_path / "latin1.txt",
                       r"latin1.txt is not UTF-8 text \(byte 0xe9 at offset 3\); re-save it as UTF-8"),
        "latin1_jsonl": (tmp_path / "latin1.jsonl", r"latin1.jsonl:2 is not UTF-8 text \(byte 0xe9 at offset 28\)"),
        "not_json": (tmp_path / "broken.jsonl", r"broken.jsonl:2 is not JSON \(column 10: Expecting value\)"),
        "not_object": (tmp_path / "list.jsonl", r"list.jsonl:1 is a JSON list, not an object"),
    }


@pytest.mark.parametrize("case", ["empty_txt", "empty_jsonl", "empty_dir", "binary_txt", "latin1_txt",
                                  "latin1_jsonl", "not_json", "not_object"])
def test_bad_corpus_is_a_config_error_naming_the_file(tmp_path, case):
    path, pattern = corpus_cases(tmp_path)[case]
    with pytest.raises(ConfigError, match=r"^config field 'data': .*" + pattern):
        load_documents(str(path))


def test_bad_corpus_through_the_cli(tiny_llama, tmp_path, capsys):
    for case, (path, pattern) in corpus_cases(tmp_path).items():
        err = cli_error(capsys, extract_argv(tiny_llama, f"--config.data={path}", f"--config.out={tmp_path / case}"))
        assert err.startswith("jaxinterp extract: error: config field 'data': ") and str(path) in err, case


# E. max_tokens below one context; a corpus below one context


def test_max_tokens_below_one_context_names_max_tokens(tiny_llama, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"'max_tokens': 100 is below one context of context_size=128"):
        pack_documents([list(range(1000))], 128, bos_id=0, separator_id=None, max_tokens=100)
    err = cli_error(capsys, extract_argv(tiny_llama, "--config.max_tokens=100", "--config.context_size=128",
                                         f"--config.out={tmp_path / 's'}"))
    assert err == ("jaxinterp extract: error: config field 'max_tokens': 100 is below one context of "
                   "context_size=128; raise it to at least 128, or 0 for the whole corpus")


def test_corpus_below_one_context_names_the_corpus(tiny_llama, tmp_path, capsys):
    (tmp_path / "tiny.txt").write_text("def f(): pass")
    with pytest.raises(ConfigError, match=r"'data': corpus too small: x.txt has 4 tokens .* needs 7"):
        pack_documents([[5, 6, 7]], 8, bos_id=0, separator_id=1, corpus="x.txt")
    err = cli_error(capsys, extract_argv(tiny_llama, f"--config.data={tmp_path / 'tiny.txt'}",
                                         "--config.context_size=128", f"--config.out={tmp_path / 's'}"))
    assert f"config field 'data': corpus too small: {tmp_path / 'tiny.txt'} has" in err
