"""Test setup: 8 forced CPU devices (set before jax is imported), offline hub, tiny real models."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tests.tiny_models import build_tiny_model  # noqa: E402

SMOLLM2_HOOK = "blocks.6.hook_resid_post"

# The SmolLM2 sweep every real-model SAE test shares: (overrides, FVU bound, L0 bound, dead-fraction
# bound) after 200 steps × 512 tokens, 2048 latents (3.6× d_in), k = 32, inputs normalised to mean
# norm √576, default learning rates. The TopK family's higher default lr leaves a few percent of
# latents unfired over the last 50k tokens this early; ReLU pays for L1 shrinkage in FVU and L0;
# JumpReLU's learned thresholds leave more latents dead this early.
SMOLLM2_SWEEP = {  # measured 2026-11-30: FVU 0.069, 0.066, 0.068, 0.075, 0.136, 0.205; dead ≤ 0.056 (TopK family)
    "topk": ("", 0.10, 32, 0.08),
    "topk_multi": ("multi_topk=true", 0.10, 32, 0.08),
    "batch_topk": ("architecture=batch_topk", 0.10, 48, 0.08),
    "matryoshka": ("architecture=matryoshka", 0.11, 48, 0.08),
    "jumprelu": ("architecture=jumprelu, l0_coefficient=0.01", 0.18, 40, 0.35),
    "relu": ("architecture=relu, l1_coefficient=2", 0.26, 200, 0.05),
}


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """A random-weight 3-layer Llama (GQA) with a BPE tokenizer trained on pydoc, saved as safetensors."""
    return build_tiny_model("llama", tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> str:
    """A random-weight 3-layer GPT-2 with the same tokenizer."""
    return build_tiny_model("gpt2", tmp_path_factory.mktemp("tiny_gpt2"))


def pytest_collection_modifyitems(config, items):
    if os.environ.get("JAXINTERP_SKIP_REAL_MODEL"):
        skip = pytest.mark.skip(reason="JAXINTERP_SKIP_REAL_MODEL is set")
        for item in items:
            if "real_model" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_llama_run(tiny_llama, tmp_path_factory) -> Path:
    """A directory with ``store`` (16k tiny-Llama tokens at blocks.1.hook_resid_post, a quarter of the
    chunks held out) and ``run`` (a 40-step TopK SAE, 128 latents, k 8, trained on it)."""
    from jaxinterp import schemas
    from jaxinterp.config import load_config
    from jaxinterp.extract import extract
    from jaxinterp.train import train

    root, hook = tmp_path_factory.mktemp("tiny_run"), "blocks.1.hook_resid_post"
    extract(load_config("configs/extract.py", {"model": tiny_llama, "hooks": hook, "data": "pydoc",
                                                "out": str(root / "store"), "context_size": 64, "max_tokens": 16384,
                                                "chunk_mib": 0.05, "shard_mib": 0.5},
                        schemas.EXTRACT, "extract"), progress=False)
    train(load_config("configs/train.py", {
        "store": str(root / "store"), "hook": hook, "out": str(root / "run"), "steps": 40, "batch_size": 256,
        "sae.n_latents": 128, "sae.k": 8, "warmup_steps": 3, "checkpoint_every": 40, "eval_tokens": 512,
        "holdout_fraction": 0.25, "mesh.data": 1}, schemas.TRAIN, "train"), progress=False)
    return root


@pytest.fixture(scope="session")
def smollm2_store(tmp_path_factory) -> str:
    """32k tokens of real SmolLM2-135M activations at ``SMOLLM2_HOOK`` (pydoc corpus, context 128)."""
    from jaxinterp import schemas
    from jaxinterp.config import load_config
    from jaxinterp.extract import extract

    out = str(tmp_path_factory.mktemp("smollm2") / "store")
    fields = {"model": "smollm2", "hooks": SMOLLM2_HOOK, "data": "pydoc", "out": out, "context_size": 128,
              "max_tokens": 32768, "batch_size": 8}
    extract(load_config("configs/extract.py", fields, schemas.EXTRACT, "extract"), progress=False)
    return out


@pytest.fixture(scope="session")
def smollm2_sweep(smollm2_store, tmp_path_factory) -> tuple[str, dict]:
    """(run dir, train summary) of one run training every architecture of ``SMOLLM2_SWEEP`` together."""
    from jaxinterp import schemas
    from jaxinterp.config import load_config
    from jaxinterp.train import train

    sweep = "; ".join(f"{name}: {overrides}" for name, (overrides, *_) in SMOLLM2_SWEEP.items())
    run = str(tmp_path_factory.mktemp("smollm2_sweep") / "run")
    fields = {"store": smollm2_store, "hook": SMOLLM2_HOOK, "out": run, "steps": 200, "batch_size": 512,
              "mesh.data": 1,  # one device: 8 virtual CPU devices only add collectives on 2 cores
              "warmup_steps": 20, "sae.n_latents": 2048, "sae.k": 32, "normalize": True, "norm_tokens": 8192,
              "holdout_fraction": 0.1, "eval_tokens": 4096, "dead_tokens": 50_000, "checkpoint_every": 200,
              "sweep": sweep}
    return run, train(load_config("configs/train.py", fields, schemas.TRAIN, "train"), progress=False)


@pytest.fixture(scope="session")
def s3_server():
    """A local S3-compatible server (moto) with one bucket, ``jaxinterp-test``; yields the env that points at it.

    One per session: s3fs (through etils.epath) keeps its client, so the endpoint must not change.
    """
    pytest.importorskip("moto", reason="the test extra installs moto[server]")
    import boto3

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1",
               AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    try:
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        deadline = time.time() + 60
        while True:
            try:
                client.create_bucket(Bucket="jaxinterp-test")
                break
            except Exception:  # the server is still starting
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> dict[str, str]:
    """``s3_server``'s variables in this process's environment too (s3fs and TensorStore read them there)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.setenv(name, s3_server[name])
    return s3_server
