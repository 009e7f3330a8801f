"""The JAX-native extraction backend: flax.nnx models, jitted, sharded by a rules table.

Weights come from safetensors directories or GGUF files (dequantised with ``gguf``; no torch).
A safetensors checkpoint (one file or ``model-0000k-of-0000N`` shards + index) is read lazily
(:mod:`jaxinterp.models.checkpoint`): the model is built from the headers, then each addressable
device reads only its slice of each parameter, straight into the model dtype, one shard file at a
time, so the whole model never sits on one host (nor in float32); a GGUF is dequantised in memory
first. Parameters are sharded over the mesh's 'model' axis (attention heads / MLP width, the
vocabulary of the embedding and unembedding), token batches over 'data'; a dimension that does not
divide its mesh axis stays replicated.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxinterp.mesh import Rules, make_mesh, tree_shardings
from jaxinterp.models.checkpoint import lazy_safetensors, place
from jaxinterp.models.files import ModelFiles, load_hf_config
from jaxinterp.models.hooks import (HookEdit, HookPoint, as_edits, as_hook_points, edit_sources, layer_count,
                                    parse_hooks)
from jaxinterp.models.kv_cache import check_cached, prefixed_last_logits
from jaxinterp.models.support import check_jax_support
from jaxinterp.models.transformer import Edit, build_model, hooked_forward
from jaxinterp.models.weights import load_hf_weights

__all__ = ["JaxSourceModel", "MODEL_RULES"]

# Column-parallel input projections, row-parallel output projections (Megatron layout).
# GPT-NeoX's fused query_key_value is per head ([heads, 3 * head_size] columns), so its columns split by heads too.
# The vocabulary splits too, so no device holds a whole table: the unembedding's columns (lm_head), the
# embedding's rows (a gather from a row-split table is exact). GPT-2's position table stays replicated.
_COLUMN = r"(q_proj|k_proj|v_proj|gate_proj|up_proj|c_attn|c_fc|query_key_value|dense_h_to_4h|lm_head)"
MODEL_RULES: Rules = (
    (_COLUMN + r"'\]\['kernel", P(None, "model")),
    (_COLUMN + r"'\]\['bias", P("model")),
    (r"\['(o_proj|down_proj|attn_proj|mlp_proj|dense|dense_4h_to_h)'\]\['kernel", P("model", None)),
    (r"\['(embed_tokens|wte|embed_in)'\]", P("model", None)),
)


def _forward(graphdef, state, tokens, capture, edit, logits):
    return hooked_forward(nnx.merge(graphdef, state), tokens, capture, edit=edit, logits=logits)


def _edited_logits(graphdef, specs, state, tokens, operands):
    """Logits with every edit of ``specs`` ((hook, replace, sources) each; ``operands`` alongside) applied as the
    forward pass reaches its hook, so a later edit's sources are computed from the already edited stream."""
    read = {}  # edit index -> {source hook: its activation}, carried (while tracing) to the later hook it edits

    def edit(name, x):
        for i, (_, _, sources) in enumerate(specs):
            if name in sources:
                read.setdefault(i, {})[name] = x
        new = x
        for i, (hook, replace, sources) in enumerate(specs):
            if name != hook:
                continue
            if not sources:
                new = replace(operands[i], new).astype(x.dtype)
                continue
            got = read.pop(i, {})
            missing = [source for source in sources if source not in got]
            if missing:
                raise ValueError(f"hook edit: source {missing[0]} does not come before {hook} in the forward pass")
            new = replace(operands[i], new, *(got[source].astype(jnp.float32) for source in sources)).astype(x.dtype)
        return new

    return hooked_forward(nnx.merge(graphdef, state), tokens, edit=edit, logits=True)[0]


def _last_logits(graphdef, state, tokens, last):
    """Logits [batch, vocab] at position ``last[b]`` of each row: the unembedding runs on those rows only."""
    model = nnx.merge(graphdef, state)
    final = f"blocks.{len(model.layers) - 1}.hook_resid_post"  # what hooked_forward unembeds
    _, captured = hooked_forward(model, tokens, capture=frozenset({final}))
    rows = captured[final][jnp.arange(tokens.shape[0]), last]
    return model.unembed(rows[:, None])[:, 0].astype(jnp.float32)


def _prefixed_last_logits(graphdef, state, prefix, start, suffixes, last):
    return prefixed_last_logits(nnx.merge(graphdef, state), prefix, start, suffixes, last)


class JaxSourceModel:
    """A Llama-family (Llama, Mistral, Qwen2, Qwen3), Gemma-2/3, GPT-2 or GPT-NeoX model in JAX with the torch
    backend's ``run`` interface.

    A model whose config this code would not compute exactly (e.g. dynamic or YaRN RoPE) is
    refused with an ``UnsupportedModelError`` naming the attribute (:mod:`jaxinterp.models.support`).

    Example::

        model = JaxSourceModel(resolve_model("smollm2"))
        acts = model.run(tokens, ["blocks.12.hook_resid_post"])        # {name: np.ndarray}
        logits, acts = model.forward(tokens, capture=frozenset({"blocks.3.hook_mlp_out"}))
    """

    backend = "jax"

    def __init__(self, files: ModelFiles, dtype: str = "float32", mesh: Mesh | None = None):
        self.files = files
        if files.gguf_file is None:  # refuse before reading the headers (build_model checks a GGUF's config)
            self.config = load_hf_config(files)
            check_jax_support(self.config)
            weights = lazy_safetensors(Path(files.directory))  # refs: the model is built without reading a tensor
        else:
            self.config, weights = load_hf_weights(files)
        graphdef, state = nnx.split(build_model(self.config, weights, dtype))
        # This process's devices only: with several processes each runs its own contexts (its own
        # shards, or the same eval contexts), so a forward must not wait on the other processes.
        self.mesh = mesh if mesh is not None else make_mesh(data=-1, model=1, devices=jax.local_devices())
        self.graphdef = graphdef
        self.state = place(state, tree_shardings(state, MODEL_RULES, self.mesh))
        self.model_class = type(nnx.merge(graphdef, state)).__name__
        self.n_layers = layer_count(self.config)
        self.d_model = int(self.config.hidden_size)
        self._jitted = jax.jit(partial(_forward, graphdef), static_argnames=("capture", "edit", "logits"))
        self._jitted_edit = jax.jit(partial(_edited_logits, graphdef), static_argnums=(0,))
        self._jitted_last = jax.jit(partial(_last_logits, graphdef))
        self._jitted_prefixed = jax.jit(partial(_prefixed_last_logits, graphdef))

    def parse_hooks(self, names: str | Sequence[str]) -> list[HookPoint]:
        """Parses hook names against this model's depth."""
        return parse_hooks(names, self.n_layers, self.config)

    def _place(self, tokens: np.ndarray) -> jax.Array:
        data = self.mesh.shape["data"]
        spec = P("data", None) if tokens.shape[0] % data == 0 else P()
        return jax.device_put(np.asarray(tokens, np.int32), NamedSharding(self.mesh, spec))

    def forward(self, tokens: np.ndarray, capture: frozenset[str] = frozenset(), edit: Edit | None = None,
                logits: bool = True) -> tuple[jax.Array | None, dict[str, jax.Array]]:
        """Jitted forward returning ``(logits, captured)``; ``edit`` replaces hook activations.

        ``edit`` is a static argument: pass the same function object to reuse the compilation.
        """
        return self._jitted(self.state, self._place(tokens), capture=frozenset(capture), edit=edit, logits=logits)

    def logits(self, tokens: np.ndarray, edit: HookEdit | Sequence[HookEdit] | None = None) -> jax.Array:
        """Logits [batch, seq, vocab] (float32, on device), with ``edit`` (one or several) applied during the pass.

        Several edits apply in one pass, each where the forward reaches its hook, so an edit's ``source`` is
        read downstream of every earlier edit (a transcoder set replacing each layer's MLP in turn).
        """
        edits = as_edits(edit)
        if not edits:
            return self.forward(tokens)[0].astype(np.float32)
        for one in edits:  # an unknown or refused hook would edit nothing
            parse_hooks([one.hook, *edit_sources(one)], self.n_layers, self.config)
        operands = jax.device_put(tuple(one.operand for one in edits), NamedSharding(self.mesh, P()))
        specs = tuple((one.hook, one.replace, edit_sources(one)) for one in edits)
        return self._jitted_edit(specs, self.state, self._place(tokens), operands).astype(np.float32)

    def last_logits(self, tokens: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Next-token logits [batch, vocab] float32 at position ``last[b]`` of each row (right-padded prompts:
        each one's last real token), without the [batch, seq, vocab] logits of every position."""
        return np.asarray(self._jitted_last(self.state, self._place(tokens), jnp.asarray(last, jnp.int32)))

    def prefixed_last_logits(self, prefix: np.ndarray, start: int, suffixes: np.ndarray,
                             last: np.ndarray) -> np.ndarray:
        """:meth:`last_logits` of ``prefix[start:] + suffixes[b]`` (``prefix`` [P] left-padded, ``suffixes``
        [batch, S] right-padded, ``last`` their last real positions), the shared prefix computed once
        (:func:`~jaxinterp.models.kv_cache.prefixed_last_logits`). Needs a KV-cache family."""
        check_cached(self.config.model_type)
        replicated = NamedSharding(self.mesh, P())
        prefix = jax.device_put(np.asarray(prefix, np.int32)[None], replicated)
        return np.asarray(self._jitted_prefixed(self.state, prefix, jnp.asarray(start, jnp.int32),
                                                self._place(suffixes), jnp.asarray(last, jnp.int32)))

    def run(self, tokens: np.ndarray, hooks: Sequence[str] | Sequence[HookPoint]) -> dict[str, np.ndarray]:
        """``{hook name: [batch, seq, d] float32 numpy}``; the pass stops after the last hook needed."""
        points = as_hook_points(hooks, self.n_layers, self.config)
        _, captured = self.forward(tokens, capture=frozenset(p.name for p in points), logits=False)
        return {name: np.asarray(value, np.float32) for name, value in captured.items()}
