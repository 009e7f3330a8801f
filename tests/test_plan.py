"""The memory planner against what XLA compiles and what the arrays hold, on the 8 test CPU devices."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.cli import main
from jaxinterp.config import load_config
from jaxinterp.mesh import batch_sharding, make_mesh
from jaxinterp.train import abstract_state, build_members, init_state, train_step
from jaxinterp.train.plan import plan_memory
from jaxinterp.train.state import state_shardings

HOOK, TARGET, D_IN = "blocks.1.hook_resid_post", "blocks.1.hook_mlp_out", 64
GIB = 2**30


def train_cfg(**overrides):
    fields = {"hook": HOOK, "sae.n_latents": 2048, "sae.k": 8, "batch_size": 512, **overrides}
    return load_config("configs/train.py", fields, schemas.TRAIN, "train")


CLT_HOOKS = [f"blocks.{layer}.{name}" for layer in range(3) for name in ("mlp.hook_in", "hook_mlp_out")]


def compiled_step_bytes(cfg, data: int, model: int) -> int:
    """Per-device bytes XLA reports for the run's real sharded step on a data x model mesh of the test devices."""
    members = build_members(cfg, CLT_HOOKS)
    hooks = list(dict.fromkeys(hook for m in members for hook in (*m.input_hooks, *m.target_hooks)))
    abstract = abstract_state(members, dict.fromkeys(hooks, D_IN))
    mesh = make_mesh(data, model)
    shardings = state_shardings(abstract, members, mesh)
    placed = jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), abstract, shardings)
    batch = {hook: jax.ShapeDtypeStruct((cfg["batch_size"], D_IN), jnp.float32, sharding=batch_sharding(mesh))
             for hook in hooks}
    step = jax.jit(partial(train_step, members=members, dead_tokens=cfg["dead_tokens"]),
                   in_shardings=(shardings, {hook: batch_sharding(mesh) for hook in hooks}),
                   out_shardings=(shardings, None), donate_argnums=0)
    with jax.set_mesh(mesh):
        memory = step.lower(placed, batch).compile().memory_analysis()
    return (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes)


@pytest.mark.parametrize("overrides, data, model", [
    ({}, 2, 4),  # TopK with AuxK: latent-sharded gathers
    ({}, 8, 1),
    ({"sae.architecture": "jumprelu"}, 2, 4),
    ({"sae.architecture": "batch_topk"}, 4, 2),
    ({"target_hook": TARGET, "sae.skip": True}, 1, 8),  # a skip transcoder
    ({"sweep": "a: k=8; wide: n_latents=4096, architecture=relu"}, 2, 4),
    ({"hook": "blocks.*.mlp.hook_in", "target_hook": "blocks.*.hook_mlp_out", "sae.architecture": "clt",
      "sae.n_latents": 3 * 1024}, 2, 4),  # a cross-layer transcoder over 3 layers
    ({"hook": "blocks.0.mlp.hook_in,blocks.1.mlp.hook_in,blocks.2.mlp.hook_in", "sae.architecture": "crosscoder"},
     2, 4),  # a crosscoder over 3 hooks
])
def test_planned_bytes_match_the_compiled_sharded_step(overrides, data, model):
    cfg = train_cfg(**overrides)
    hooks = {HOOK: D_IN, TARGET: D_IN, **dict.fromkeys(CLT_HOOKS, D_IN)}
    plan = plan_memory(cfg, hooks, data, model, 16 * GIB, search_batch=False)
    compiled = compiled_step_bytes(cfg, data, model)
    assert abs(plan.total - compiled) <= 0.10 * compiled, (plan, compiled)
    assert plan.fits


def test_planned_state_is_what_each_device_holds_and_falls_by_the_model_axis():
    cfg = train_cfg()
    members = build_members(cfg)
    sample = np.random.default_rng(0).normal(size=(512, D_IN)).astype(np.float32)
    held = {}
    for model in (1, 8):
        plan = plan_memory(cfg, {HOOK: D_IN}, 8 // model, model, 16 * GIB, search_batch=False)
        mesh = make_mesh(8 // model, model)
        state = init_state(jax.random.key(0), {HOOK: jnp.asarray(sample)}, members)
        state = jax.device_put(state, state_shardings(abstract_state(members, {HOOK: D_IN}), members, mesh))
        sae = state.saes["sae"]
        on_device_0 = [sum(shard.data.nbytes for leaf in jax.tree.leaves(tree) for shard in leaf.addressable_shards
                           if shard.device == mesh.devices.flat[0]) for tree in (sae.params, sae.opt_state)]
        assert on_device_0 == [plan.members[0].params, plan.members[0].optimizer]
        held[model] = on_device_0
    latent_sharded = 2 * 2048 * D_IN * 4 + 2048 * 4  # W_enc, W_dec, b_enc
    assert held[1][0] - held[8][0] == latent_sharded * 7 // 8  # b_dec stays replicated
    assert held[1][1] - held[8][1] == 2 * latent_sharded * 7 // 8  # Adam's mu and nu follow their params


def test_the_largest_batch_the_plan_names_fits_and_a_quarter_more_does_not():
    cfg = train_cfg()
    memory = 64 * 2**20
    largest = plan_memory(cfg, {HOOK: D_IN}, 2, 4, memory).max_batch_size
    assert largest > 0
    assert plan_memory(train_cfg(batch_size=largest), {HOOK: D_IN}, 2, 4, memory, search_batch=False).fits
    more = (largest * 5 // 4) // 16 * 16
    assert not plan_memory(train_cfg(batch_size=more), {HOOK: D_IN}, 2, 4, memory, search_batch=False).fits


def test_plan_cli_prints_the_table_and_refuses_a_mesh_it_cannot_size(capsys):
    args = ["plan", "--config.d_in=64", "--config.sae.n_latents=2048", "--config.sae.k=8", "--config.batch_size=512",
            "--config.mesh.data=2", "--config.mesh.model=4", "--config.device_memory_gib=0.05"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "mesh 2 (data) x 4 (model)" in out and "fits" in out and "largest batch_size that fits" in out
    assert main([*args, "--config.sae.n_latents=65536", "--config.device_memory_gib=0.01"]) == 0  # 25 MB of state
    out = capsys.readouterr().out
    assert "does NOT fit" in out and "no batch_size fits" in out
    assert main(["plan", "--config.d_in=64", "--config.mesh.model=4"]) == 2  # mesh.data = -1, the train default
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config field 'mesh.data'" in err[0]
