"""Test setup: 8 forced CPU devices (set before jax is imported), offline hub, tiny real models."""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tests.tiny_models import build_tiny_model  # noqa: E402


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
