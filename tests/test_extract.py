import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from jaxinterp import schemas
from jaxinterp.config import load_config
from jaxinterp.extract import extract
from jaxinterp.models import HookError
from jaxinterp.store import StoreExistsError, open_store

ALL_HOOKS = "hook_embed,blocks.0.hook_resid_pre,blocks.1.hook_attn_out,blocks.1.hook_mlp_out,blocks.1.hook_resid_post"


def extract_config(model: str, out: Path, **overrides):
    fields = {"model": model, "out": str(out), "max_tokens": 2048, "context_size": 64, "batch_size": 4,
              "chunk_mib": 1 / 64, "shard_mib": 1 / 16, **overrides}
    return load_config("configs/extract.py", fields, schemas.EXTRACT, "extract")


@pytest.mark.parametrize("kind", ["tiny_llama", "tiny_gpt2"])
def test_hooks_match_transformers_forward(kind, request, tmp_path):
    model_dir = request.getfixturevalue(kind)
    result = extract(extract_config(model_dir, tmp_path / "s", hooks=ALL_HOOKS), progress=False)
    store = open_store(str(tmp_path / "s"))
    assert result.tokens_written == store.n_tokens == 2048
    tokens = store.read("tokens", 0, 2048).reshape(-1, 64)
    assert (tokens[:, 0] == 1).all() and (store.read("pos", 0, 64) == np.arange(64)).all()
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        hidden = model(torch.as_tensor(tokens[:4], dtype=torch.long), output_hidden_states=True).hidden_states
    read = lambda name: store.read(name, 0, 256).reshape(4, 64, -1)
    np.testing.assert_allclose(read("blocks.0.hook_resid_pre"), hidden[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(read("blocks.1.hook_resid_post"), hidden[2].numpy(), rtol=1e-5, atol=1e-5)
    # resid_post = resid_pre + attn_out + mlp_out (both families are pre-norm residual blocks)
    np.testing.assert_allclose(hidden[1].numpy() + read("blocks.1.hook_attn_out") + read("blocks.1.hook_mlp_out"),
                               hidden[2].numpy(), rtol=1e-4, atol=1e-5)
    embed = model.get_input_embeddings()(torch.as_tensor(tokens[:4], dtype=torch.long)).detach().numpy()
    np.testing.assert_allclose(read("hook_embed"), embed, rtol=1e-6)


def test_unknown_hook_lists_valid_ones_before_loading(tiny_llama, tmp_path):
    with pytest.raises(HookError, match=r"valid hooks: hook_embed, blocks\.\{0\.\.2\}"):
        extract(extract_config(tiny_llama, tmp_path / "s", hooks="blocks.7.hook_resid_post"), progress=False)
    assert not (tmp_path / "s").exists()


def test_rerun_is_a_noop_and_other_config_is_refused(tiny_llama, tmp_path):
    cfg = extract_config(tiny_llama, tmp_path / "s", hooks="blocks.0.hook_resid_post")
    extract(cfg, progress=False)
    assert extract(cfg, progress=False).tokens_written == 0
    with pytest.raises(StoreExistsError, match="differs in: hook_names"):
        extract(extract_config(tiny_llama, tmp_path / "s", hooks="blocks.1.hook_resid_post"), progress=False)


def test_bfloat16_store(tiny_llama, tmp_path):
    extract(extract_config(tiny_llama, tmp_path / "s", hooks="blocks.0.hook_resid_post", dtype="bfloat16",
                           max_tokens=512), progress=False)
    store = open_store(str(tmp_path / "s"))
    assert store.array("blocks.0.hook_resid_post").dtype.name == "bfloat16"
    assert np.isfinite(store.read("blocks.0.hook_resid_post", 0, 512).astype(np.float32)).all()


def test_kill_9_then_rerun_gives_identical_store(tiny_llama, tmp_path):
    args = [sys.executable, "-m", "jaxinterp.cli", "extract", "--config", "configs/extract.py",
            f"--config.model={tiny_llama}", "--config.hooks=blocks.1.hook_resid_post", "--config.max_tokens=16384",
            "--config.context_size=64", "--config.batch_size=2", "--config.chunk_mib=0.015625",
            "--config.shard_mib=0.0625"]
    subprocess.run(args + [f"--config.out={tmp_path / 'clean'}"], check=True, capture_output=True)
    victim = subprocess.Popen(args + [f"--config.out={tmp_path / 'killed'}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    marker = tmp_path / "killed" / "_progress" / "shard_000001"
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert marker.exists()
    with pytest.raises(Exception, match="incomplete"):
        open_store(str(tmp_path / "killed"))
    subprocess.run(args + [f"--config.out={tmp_path / 'killed'}"], check=True, capture_output=True)
    clean, resumed = open_store(str(tmp_path / "clean")), open_store(str(tmp_path / "killed"))
    for name in ("blocks.1.hook_resid_post", "tokens", "doc", "pos"):
        a, b = clean.read(name, 0, clean.n_tokens), resumed.read(name, 0, resumed.n_tokens)
        assert a.tobytes() == b.tobytes(), name


def test_two_processes_write_the_same_store_as_one(tiny_llama, tmp_path):
    common = ["--config", "configs/extract.py", f"--config.model={tiny_llama}", "--config.max_tokens=8192",
              "--config.hooks=blocks.0.hook_resid_post,blocks.2.hook_mlp_out", "--config.context_size=64",
              "--config.chunk_mib=0.015625", "--config.shard_mib=0.0625"]
    run = lambda *extra: subprocess.Popen([sys.executable, "-m", "jaxinterp.cli", "extract", *common, *extra],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    single = run(f"--config.out={tmp_path / 'one'}", "--config.process_count=1")
    assert single.wait() == 0, single.stderr.read()
    workers = [run(f"--config.out={tmp_path / 'two'}", "--config.process_count=2", f"--config.process_index={i}")
               for i in (1, 0)]  # the non-creating process starts first and waits for process 0
    for worker in workers:
        assert worker.wait() == 0, worker.stderr.read()
    one, two = open_store(str(tmp_path / "one")), open_store(str(tmp_path / "two"))
    assert one.manifest == two.manifest and -(-one.n_tokens // one.layout.rows_per_shard) >= 4
    for name in [*one.hook_names, "tokens", "doc", "pos"]:
        assert one.read(name, 0, one.n_tokens).tobytes() == two.read(name, 0, two.n_tokens).tobytes(), name


def test_overwrite_replaces_a_different_store(tiny_llama, tmp_path):
    extract(extract_config(tiny_llama, tmp_path / "s", hooks="blocks.0.hook_resid_post", max_tokens=512), progress=False)
    result = extract(extract_config(tiny_llama, tmp_path / "s", hooks="blocks.1.hook_resid_post", max_tokens=512,
                                    overwrite=True), progress=False)
    assert result.tokens_written == 512
    store = open_store(str(tmp_path / "s"))
    assert store.hook_names == ["blocks.1.hook_resid_post"] and not (tmp_path / "s" / "blocks.0.hook_resid_post").exists()


def test_corpus_formats(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jaxinterp.extract import load_documents

    texts = ["first document", "second one", "third"]
    pq.write_table(pa.table({"body": texts}), tmp_path / "c.parquet")
    assert load_documents(str(tmp_path / "c.parquet"), text_field="body") == texts
    with pytest.raises(ValueError, match="no column 'text'.*columns: body"):
        load_documents(str(tmp_path / "c.parquet"))
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "ds"))
    assert load_documents(str(tmp_path / "ds")) == texts
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts[:2]}),
                          "test": datasets.Dataset.from_dict({"text": texts[2:]})}).save_to_disk(str(tmp_path / "dd"))
    assert load_documents(str(tmp_path / "dd")) == texts[:2]
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha")
    (folder / "b.jsonl").write_text('{"text": "beta"}\n{"text": "gamma"}\n')
    assert load_documents(str(folder)) == ["alpha", "beta", "gamma"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_documents(str(tmp_path / "missing.txt"))
