"""Generation with a KV cache (jaxinterp.models.generate) against full forwards, on both backends.

Greedy generation with the cache must equal, token for token, greedy decoding by one full forward of
the whole sequence per step, for tiny random models of every cached JAX family (the Llama family with
and without sliding windows, Qwen3's q/k norms, Gemma-2's soft-caps and Gemma-3's per-layer-type RoPE,
windows shorter than the prompts) and on the real SmolLM2; a batch of prompts of different lengths
must equal each prompt alone; the cached logits must stay within 1e-5 relative error of the full
forward's. Stop tokens end a row, sampling is seeded, and GPT-2 on the JAX backend is refused in one line.
"""

import jax
import numpy as np
import pytest
from flax import nnx
from transformers import Gemma2Config, Gemma3TextConfig, MistralConfig, Qwen3Config

from jaxinterp.mesh import make_mesh
from jaxinterp.models import generate, generate_uncached, load_tokenizer, resolve_model
from jaxinterp.models.jax_backend import JaxSourceModel
from jaxinterp.models.kv_cache import cached_forward, empty_cache
from jaxinterp.models.support import UnsupportedModelError
from jaxinterp.models.torch_backend import TorchSourceModel
from tests.test_jax_models import relative_error
from tests.tiny_models import saved_on_demand

SMALL = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
SLIDING, FULL = "sliding_attention", "full_attention"
VARIANTS = {  # windows of 5 keys, shorter than most prompts plus their new tokens
    "mistral_window": MistralConfig(sliding_window=5, **SMALL),
    "qwen3": Qwen3Config(head_dim=24, use_sliding_window=True, sliding_window=5, max_window_layers=1, **SMALL),
    "gemma2": Gemma2Config(head_dim=16, query_pre_attn_scalar=8, sliding_window=5, attn_logit_softcapping=1.0,
                           final_logit_softcapping=2.0, **SMALL),
    "gemma3_text": Gemma3TextConfig(head_dim=24, query_pre_attn_scalar=24, sliding_window=5, rope_theta=1e6,
                                    rope_local_base_freq=100.0, layer_types=[SLIDING, FULL, SLIDING], **SMALL),
}
NEW = 8
LOGIT_TOLERANCE = 1e-5  # relative to the largest logit; measured ≤ 7e-7 (tiny Llama 3e-7, Gemma-2 6.5e-7)


def prompts(lengths=(5, 11, 3, 8)) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [rng.integers(3, 500, size=n).tolist() for n in lengths]


def jax_model(directory: str) -> JaxSourceModel:
    return JaxSourceModel(resolve_model(directory), mesh=make_mesh(data=1, model=1))  # 8 CPU devices add nothing


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return saved_on_demand(VARIANTS, tmp_path_factory)


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return jax_model(tiny_llama), TorchSourceModel(resolve_model(tiny_llama))


def test_uncached_reference_is_a_full_forward_per_token(llama):
    """The reference itself: right padding to one width changes nothing against the bare growing sequence."""
    model, (prompt, *_) = llama[0], prompts()
    sequence = list(prompt)
    for _ in range(3):
        sequence.append(int(np.asarray(model.logits(np.asarray([sequence])))[0, -1].argmax()))
    assert generate_uncached(model, [prompt], 3) == [sequence[len(prompt):]]


@pytest.mark.parametrize("backend", [0, 1], ids=["jax", "torch"])
def test_tiny_llama_cached_greedy_equals_full_forward(llama, backend):
    model = llama[backend]
    expected = generate_uncached(model, prompts(), NEW)
    assert generate(model, prompts(), NEW) == expected
    assert [generate(model, [prompt], NEW, batch_size=1)[0] for prompt in prompts()] == expected  # alone = batched


def test_host_decode_loop_equals_device_loop(llama):
    assert generate(llama[0], prompts(), NEW, decode_loop="device") == generate(llama[0], prompts(), NEW)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_family_cached_greedy_equals_full_forward(saved, variant):
    model = jax_model(saved(variant))
    assert generate(model, prompts(), NEW) == generate_uncached(model, prompts(), NEW)


def test_gemma2_torch_cache_equals_full_forward(saved):
    """transformers' cache with left padding, sliding windows and soft-caps, through the torch backend."""
    model = TorchSourceModel(resolve_model(saved("gemma2")))
    assert generate(model, prompts(), NEW) == generate_uncached(model, prompts(), NEW)


@pytest.mark.parametrize("variant", ["llama", "gemma2"])
def test_cached_logits_match_full_forward(llama, saved, variant):
    """Prefill of left-padded prompts, then three cached steps: each row's logits against its full forward."""
    model = llama[0] if variant == "llama" else jax_model(saved(variant))
    step = jax.jit(lambda state, tokens, cache: cached_forward(nnx.merge(model.graphdef, state), tokens, cache))
    rows, width, steps = prompts((9, 4)), 9, 3
    sequences = [row + np.random.default_rng(i).integers(3, 500, size=steps).tolist() for i, row in enumerate(rows)]
    full = np.zeros((2, width + steps), np.int32)  # right-padded: causal, so each row's logits are its own
    for i, sequence in enumerate(sequences):
        full[i, :len(sequence)] = sequence
    full_logits = np.asarray(model.logits(full))
    tokens = np.zeros((2, width), np.int32)
    for i, row in enumerate(rows):
        tokens[i, width - len(row):] = row
    cache = empty_cache(nnx.merge(model.graphdef, model.state), 2, width + steps,
                        np.asarray([width - len(row) for row in rows]))
    logits, cache = step(model.state, tokens, cache)
    for t in range(steps + 1):
        for i, row in enumerate(rows):
            assert relative_error(logits[i], full_logits[i, len(row) - 1 + t]) < LOGIT_TOLERANCE, (variant, t, i)
        if t < steps:
            logits, cache = step(model.state, np.asarray([[sequences[i][len(row) + t]] for i, row in enumerate(rows)],
                                                         np.int32), cache)


@pytest.mark.parametrize("backend", [0, 1], ids=["jax", "torch"])
def test_stop_token_ends_its_row(llama, backend):
    model = llama[backend]
    full = generate(model, prompts(), NEW)
    stop = full[1][2]
    stopped = generate(model, prompts(), NEW, stop_token_ids=[stop])
    for row, whole in zip(stopped, full):
        cut = whole.index(stop) + 1 if stop in whole else len(whole)
        assert row == whole[:cut]
    assert len(stopped[1]) == 3


def test_seeded_sampling_is_reproducible_and_backend_independent(llama):
    jax_model_, torch_model = llama
    first = generate(jax_model_, prompts(), NEW, temperature=1.0, seed=7)
    assert first == generate(jax_model_, prompts(), NEW, temperature=1.0, seed=7)
    assert first != generate(jax_model_, prompts(), NEW, temperature=1.0, seed=8)
    assert first != generate(jax_model_, prompts(), NEW)  # not greedy
    # a prompt's draws follow its index, not its batch; the torch backend draws the same way
    assert [generate(jax_model_, prompts(), NEW, temperature=1.0, seed=7, batch_size=2)] == [first]
    assert generate(torch_model, prompts(), NEW, temperature=1.0, seed=7) == first


def test_uncached_family_is_refused_in_one_line(tiny_gpt2):
    with pytest.raises(UnsupportedModelError, match="backend='torch'") as refusal:
        generate(jax_model(tiny_gpt2), prompts(), NEW)
    assert "\n" not in str(refusal.value) and "'gpt2'" in str(refusal.value)
    torch_model = TorchSourceModel(resolve_model(tiny_gpt2))  # what the refusal points to
    assert generate(torch_model, prompts(), NEW) == generate_uncached(torch_model, prompts(), NEW)


def test_bad_arguments_are_refused(llama):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(llama[0], [[3], []], NEW)
    with pytest.raises(ValueError, match="temperature"):
        generate(llama[0], prompts(), NEW, temperature=-1.0)
    assert generate(llama[0], prompts(), 0) == [[]] * 4


@pytest.mark.real_model
def test_smollm2_cached_greedy_equals_full_forward():
    files = resolve_model("smollm2")
    tokenizer = load_tokenizer(files)
    texts = ["The capital of France is", "def fibonacci(n):", "Sparse autoencoders decompose a model's activations"]
    rows = [tokenizer(text)["input_ids"] for text in texts]
    model = JaxSourceModel(files, mesh=make_mesh(data=1, model=1))
    expected = generate_uncached(model, rows, 16)
    assert generate(model, rows, 16) == expected
    assert generate(TorchSourceModel(files), rows, 16) == expected


def test_last_logits_are_the_full_logits_at_each_rows_last_position(llama):
    jax_llama = llama[0]
    tokens = np.array([row + [0] * (11 - len(row)) for row in prompts()], np.int32)  # right-padded
    last = np.array([len(row) - 1 for row in prompts()])
    full = np.asarray(jax_llama.logits(tokens))[np.arange(len(tokens)), last]
    np.testing.assert_allclose(jax_llama.last_logits(tokens, last), full, rtol=1e-5, atol=1e-5 * np.abs(full).max())
