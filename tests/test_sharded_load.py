"""Sharded safetensors checkpoints load lazily: each device reads only its slice, straight into the model dtype."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxinterp.mesh import make_mesh, tree_shardings
from jaxinterp.models import resolve_model
from jaxinterp.models.checkpoint import TensorRef, lazy_safetensors
from jaxinterp.models.jax_backend import MODEL_RULES, JaxSourceModel
from jaxinterp.models.files import load_hf_config
from jaxinterp.models.transformer import build_model
from jaxinterp.models.weights import load_hf_weights


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_gpt2"])
def bf16_sharded(request, tmp_path_factory) -> str:
    """A tiny model (GPT-2's unembedding tied to its embedding) saved in bfloat16 as several shard files + index."""
    import torch
    from transformers import AutoModelForCausalLM

    directory = tmp_path_factory.mktemp(f"{request.param}_bf16_sharded")
    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(request.param), local_files_only=True)
    model.to(torch.bfloat16).save_pretrained(directory, max_shard_size="40KB")
    assert len(list(directory.glob("model-*-of-*.safetensors"))) > 1
    return str(directory)


def bits(array) -> np.ndarray:
    """The array's bytes as unsigned integers: equal means bitwise equal (NaNs and signed zeros included)."""
    array = np.asarray(array)
    return array.view(f"u{array.dtype.itemsize}")


def eager_state(directory: str, dtype: str, like):
    """What the in-memory path builds (float32 numpy weights, then the model dtype), on ``like``'s shardings."""
    config, weights = load_hf_weights(resolve_model(directory))
    state = nnx.split(build_model(config, weights, dtype))[1]
    return jax.device_put(state, jax.tree.map(lambda a: a.sharding, like))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lazy_load_equals_the_in_memory_path_bitwise(bf16_sharded, dtype):
    assert_lazy_equals_eager(bf16_sharded, dtype)


def test_a_float32_checkpoint_rounds_to_bfloat16_as_the_in_memory_path(tiny_llama):
    assert_lazy_equals_eager(tiny_llama, "bfloat16")  # one model.safetensors, float32 stored


def assert_lazy_equals_eager(directory: str, dtype: str):
    """The lazily loaded state, and its logits, are bitwise those of the in-memory path."""
    model = JaxSourceModel(resolve_model(directory), dtype=dtype, mesh=make_mesh(data=1, model=1))
    eager = eager_state(directory, dtype, model.state)
    lazy_leaves, eager_leaves = jax.tree.leaves(model.state), jax.tree.leaves(eager)
    assert len(lazy_leaves) == len(eager_leaves)
    assert all(leaf.dtype.name == dtype for leaf in jax.tree.leaves(nnx.filter_state(model.state, nnx.Param)))
    for lazy, reference in zip(lazy_leaves, eager_leaves):
        assert lazy.shape == reference.shape and np.array_equal(bits(lazy), bits(reference))
    tokens = np.random.default_rng(0).integers(3, 500, size=(2, 24))
    lazy_logits = model.forward(tokens)[0]
    model.state = eager
    assert np.array_equal(bits(lazy_logits), bits(model.forward(tokens)[0]))


def test_each_device_holds_only_its_slice(bf16_sharded, monkeypatch):
    reads, read = [], TensorRef.read

    def spy(ref, checkpoint, index=()):
        values = read(ref, checkpoint, index)
        reads.append((ref, values.shape))
        return values

    monkeypatch.setattr(TensorRef, "read", spy)
    model = JaxSourceModel(resolve_model(bf16_sharded), dtype="bfloat16", mesh=make_mesh(data=2, model=4))
    # a split param is read a quarter at a time, each quarter once (its two 'data' replicas share the read);
    # GPT-2's tied embedding twice over: as the embedding, and transposed as the unembedding
    n_reads = {ref: sum(r == ref for r, _ in reads) for ref, _ in reads}
    for ref, got in reads:
        whole, quarter = got == ref.shape, np.prod(got) * 4 == np.prod(ref.shape)
        assert (whole and n_reads[ref] == 1) or (quarter and n_reads[ref] == 4), ref
    monkeypatch.undo()
    full = jax.tree.leaves(eager_state(bf16_sharded, "bfloat16", JaxSourceModel(
        resolve_model(bf16_sharded), dtype="bfloat16", mesh=make_mesh(data=1, model=1)).state))
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(model.state)[0]]
    split = 0
    for path, leaf, reference in zip(paths, jax.tree.leaves(model.state), full):
        spec = leaf.sharding.spec
        reference = np.asarray(reference)
        assert len(leaf.addressable_shards) == 8
        for shard in leaf.addressable_shards:
            assert shard.data.shape == leaf.sharding.shard_shape(leaf.shape)
            assert np.array_equal(bits(shard.data), bits(reference[shard.index])), path
        if "model" in spec:
            split += 1
            axis = list(spec).index("model")
            assert all(shard.data.shape[axis] * 4 == leaf.shape[axis] for shard in leaf.addressable_shards), path
    # every projection, the embedding and the unembedding: 3 layers of 7 (Llama) or 4 (GPT-2) kernels, + 2
    assert split >= 3 * (7 if "q_proj" in str(paths) else 4) + 2, paths
    head = model.state["lm_head"]["kernel"][...]
    assert head.sharding.spec[1] == "model" and head.addressable_shards[0].data.shape[1] * 4 == head.shape[1]


def test_lazy_refs_are_read_from_the_headers_only(bf16_sharded):
    refs = lazy_safetensors(bf16_sharded)
    config, weights = load_hf_weights(resolve_model(bf16_sharded))
    assert set(refs) == set(weights)
    for name, ref in refs.items():
        assert isinstance(ref, TensorRef) and ref.shape == weights[name].shape and ref.dtype == ml_dtypes.bfloat16
        assert ref.T.shape == weights[name].T.shape and ref.T.T == ref
    model = build_model(config, refs, "bfloat16")  # allocates nothing: every param is a ref in the model dtype
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(isinstance(leaf, TensorRef) and leaf.dtype == ml_dtypes.bfloat16 for leaf in leaves)
    # the shardings come from the refs' shapes alone: column- and row-split kernels, the vocab-split embedding
    specs = {s.spec for s in jax.tree.leaves(tree_shardings(nnx.state(model, nnx.Param), MODEL_RULES,
                                                            make_mesh(data=2, model=4)))}
    assert specs == {P(None, "model"), P("model", None), P()} | ({P("model")} if "gpt2" in bf16_sharded else set())


# A Llama-shaped checkpoint of about 1 GB (bf16): 10 layers of hidden 2048, MLP 5632, 16 heads / 4 kv heads.
SYNTHETIC = dict(hidden=2048, intermediate=5632, layers=10, heads=16, kv_heads=4, vocab=8192)
SHARD_BYTES = 250 * 10**6


def write_synthetic_llama(directory: Path, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
                          vocab: int) -> list[Path]:
    """A random-bits bf16 Llama checkpoint in ~250 MB shard files + index, written from numpy (no torch)."""
    from safetensors.numpy import save_file

    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
              "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": kv_heads, "vocab_size": vocab, "rms_norm_eps": 1e-5,
              "max_position_embeddings": 2048, "rope_theta": 10000.0, "tie_word_embeddings": False,
              "hidden_act": "silu", "dtype": "bfloat16"}
    (directory / "config.json").write_text(json.dumps(config))
    kv = hidden // heads * kv_heads
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
                   p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
                   p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                   p + "mlp.gate_proj.weight": (intermediate, hidden), p + "mlp.up_proj.weight": (intermediate, hidden),
                   p + "mlp.down_proj.weight": (hidden, intermediate)}
    shapes |= {"model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    groups, size = [[]], 0
    for name, shape in shapes.items():
        if size >= SHARD_BYTES:
            groups, size = [*groups, []], 0
        groups[-1].append(name)
        size += 2 * int(np.prod(shape))
    rng, weight_map, files = np.random.default_rng(0), {}, []
    for k, names in enumerate(groups, 1):
        file = directory / f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: np.frombuffer(rng.bytes(2 * int(np.prod(shapes[n]))), ml_dtypes.bfloat16).reshape(shapes[n])
                   for n in names}
        save_file(tensors, str(file))
        weight_map |= {n: file.name for n in names}
        files.append(file)
        del tensors
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return files


def rss_kib(field: str) -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))


def measure_load(directory: str) -> dict:
    """Loads ``directory`` (bfloat16, mesh data=1 x model=8) in this process; its memory and device bytes."""
    files = resolve_model(directory)
    load_hf_config(files)  # the baseline has transformers' config modules imported (~250 MB, whatever the model)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets the peak (VmHWM) to the current RSS
    baseline = rss_kib("VmRSS") * 1024
    model = JaxSourceModel(files, dtype="bfloat16", mesh=make_mesh(data=1, model=8))
    jax.block_until_ready(model.state)
    peak = rss_kib("VmHWM") * 1024
    leaves = jax.tree.leaves(model.state)
    split = [leaf for leaf in leaves if "model" in leaf.sharding.spec]

    def per_device(arrays) -> dict[str, int]:
        held: dict[str, int] = {}
        for array in arrays:
            for shard in array.addressable_shards:
                held[str(shard.device)] = held.get(str(shard.device), 0) + shard.data.nbytes
        return held

    held = per_device(leaves)
    return {"baseline": baseline, "peak": peak, "device_bytes": sum(held.values()), "per_device": held,
            "split_per_device": per_device(split), "total_bytes": sum(leaf.nbytes for leaf in leaves),
            "split_bytes": sum(leaf.nbytes for leaf in split), "n_split": len(split),
            "split_fractions": sorted({s.data.nbytes / leaf.nbytes for leaf in split for s in leaf.addressable_shards})}


def test_a_1gb_sharded_checkpoint_loads_within_1_5x_its_largest_shard(tmp_path):
    files = write_synthetic_llama(tmp_path, **SYNTHETIC)
    largest, total = max(f.stat().st_size for f in files), sum(f.stat().st_size for f in files)
    assert len(files) >= 4 and 0.9e9 < total < 1.1e9
    script = f"import json; from tests.test_sharded_load import measure_load; print(json.dumps(measure_load({str(tmp_path)!r})))"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    m = json.loads(result.stdout.strip().splitlines()[-1])
    extra = m["peak"] - m["baseline"] - m["device_bytes"]
    print(f"checkpoint {total / 1e6:.0f} MB in {len(files)} files, largest {largest / 1e6:.0f} MB; "
          f"baseline RSS {m['baseline'] / 1e6:.0f} MB, peak {m['peak'] / 1e6:.0f} MB, "
          f"device bytes {m['device_bytes'] / 1e6:.0f} MB; peak - baseline - device = {extra / 1e6:.0f} MB "
          f"= {extra / largest:.2f} x largest shard")
    assert extra <= 1.5 * largest, m
    assert 0.99 * total < m["total_bytes"] < total  # the files are the tensors plus small headers
    # every projection, the embedding and the unembedding split 8 ways: each device holds 1/8 of each
    assert m["n_split"] == 7 * SYNTHETIC["layers"] + 2 and m["split_fractions"] == [1 / 8]
    assert len(m["split_per_device"]) == 8 and set(m["split_per_device"].values()) == {m["split_bytes"] // 8}
    # the rest (norm weights, replicated) is small: each device holds about an eighth of the model
    assert len(m["per_device"]) == 8 and max(m["per_device"].values()) < 1.01 * m["total_bytes"] / 8
