"""The SAEs of a run: the base ``sae`` config plus the members of a ``sweep``.

A sweep trains several SAEs on the same buffer draws, each with its own parameters, optimizer and
metrics, so the data cost (store reads, shuffling, transfers) is paid once for all of them::

    --config.sweep="k16: k=16; k64: k=64; wide: n_latents=16384; bt: architecture=batch_topk"

Each ``;``-separated member overrides ``sae.*`` fields (and ``hook``, ``target_hook``, ``lr``) of the
base config;
its name is the text before ``:`` (or made from its overrides). The base config is member
``sae`` unless the sweep names it. Every member is initialised from the run's seed alone, so a
member equals a separate run of the same config, with one exception: in a run with a transcoder
member, a token that is massive at *any* of the run's hooks is dropped for every member (shrinking
each hook by its own factor would break input/target pairs), so a member then also loses the rows
that are massive at the other members' hooks.

A member whose ``target_hook`` names another hook than its ``hook`` is a transcoder (its ``sae``
config gets ``transcode=True``, which the architectures read); ``''`` means the input hook (an SAE).
A cross-layer architecture (its spec's ``layers``, e.g. ``clt``) takes layer wildcards instead,
``hook='blocks.*.mlp.hook_in'``, ``target_hook='blocks.*.hook_mlp_out'``: :func:`build_members` matches
them against the store's hooks in layer order, and the member reads them stacked (:func:`member_rows`).
A crosscoder (a multi-hook architecture without a transcoder form) reads and reconstructs its sources:
``hook`` is a comma-separated list of store hooks (``blocks.3.hook_resid_post,m1/blocks.3.hook_resid_post``;
any names, items may be layer wildcards, :func:`source_hooks`) and ``target_hook`` is ``''``. Its sources
stack the same way; a sweep member cannot set a comma list (``,`` separates its overrides), so it inherits
the base ``hook`` or names a wildcard.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxinterp.config import ConfigError, as_dict, check_field
from jaxinterp.sae import Architecture, architecture_spec, make_architecture, remove_parallel_decoder_grad
from jaxinterp.sae.spec import transcoder_architectures
from jaxinterp.sae.topk import TOPK_BASE_LR
from jaxinterp.schemas import TRAIN

__all__ = ["Member", "member_configs", "build_members", "check_widths", "layer_hooks", "member_hooks", "member_rows",
           "run_hooks", "learning_rate", "make_optimizer", "source_hooks"]


class Member(NamedTuple):
    """The static parts of one SAE of a run (hashable pieces for ``jax.jit``)."""

    name: str
    hook: str  # the input hook
    d_sae: int
    architecture: Architecture
    optimizer: optax.GradientTransformation
    target_hook: str = ""  # the hook it reconstructs; '' = hook (an SAE)
    layer_hooks: tuple[str, ...] = ()  # a cross-layer member: its input hooks, layer by layer
    layer_targets: tuple[str, ...] = ()  # and its target hooks

    @property
    def target(self) -> str:
        """The hook this member reconstructs (its input hook for an SAE)."""
        return self.target_hook or self.hook

    @property
    def transcoder(self) -> bool:
        return self.target != self.hook

    @property
    def input_hooks(self) -> tuple[str, ...]:
        """The store hooks it reads: one, or a cross-layer member's layers (stacked ``[tokens, L, d]``)."""
        return self.layer_hooks or (self.hook,)

    @property
    def target_hooks(self) -> tuple[str, ...]:
        return self.layer_targets or (self.target,)


def layer_hooks(pattern: str, available: Sequence[str], field: str = "hook") -> dict[int, str]:
    """``{layer: hook}`` of the hooks of ``available`` that a layer wildcard (``blocks.*.mlp.hook_in``)
    names, in layer order.

    Raises:
      ConfigError: naming ``field`` when none match.
    """
    regex = re.compile(re.escape(pattern).replace(r"\*", r"(\d+)") + "$")
    found = sorted((int(m.group(1)), hook) for hook in available if (m := regex.match(hook)))
    if not found:
        raise ConfigError(f"config field '{field}': no hook matches {pattern!r}; the store has {', '.join(available)}")
    return dict(found)


def source_hooks(hooks: str, available: Sequence[str], field: str = "hook") -> tuple[str, ...]:
    """The store hooks a crosscoder's ``hook`` names: comma-separated hook names (any, e.g. a two-model store's
    ``m1/blocks.3.hook_resid_post``), each a store hook or a layer wildcard (:func:`layer_hooks`, layer order).

    Raises:
      ConfigError: naming ``field``: a hook the store lacks (listing the store's), one named twice, or fewer than two.
    """
    found: list[str] = []
    for item in (item.strip() for item in hooks.split(",")):
        if "*" in item:
            found += layer_hooks(item, available, field).values()
        elif item and item not in available:
            raise ConfigError(f"config field '{field}': the store has no hook {item!r}; it has {', '.join(available)}")
        elif item:
            found.append(item)
    if len(set(found)) != len(found):
        raise ConfigError(f"config field '{field}': {hooks!r} names a hook twice ({', '.join(found)})")
    if len(found) < 2:
        raise ConfigError(f"config field '{field}': a crosscoder reads two or more hooks; {hooks!r} names "
                          f"{', '.join(found) or 'none'} (comma-separate them, or use a layer wildcard)")
    return tuple(found)


def check_widths(members: Sequence[Member], d_in: Mapping[str, int]) -> None:
    """Refuses a multi-hook member whose input (or target) hooks differ in width (they stack ``[tokens, L, d]``).

    Raises:
      ConfigError: naming ``hook`` (or ``target_hook``), the member and each hook's width.
    """
    for member in members:
        if not member.layer_hooks:
            continue
        for field, hooks in (("hook", member.input_hooks), ("target_hook", member.target_hooks)):
            if len({d_in[hook] for hook in hooks}) > 1:
                widths = ", ".join(f"{hook} {d_in[hook]}" for hook in hooks)
                raise ConfigError(f"config field '{field}': member {member.name!r} stacks its hooks, which need one "
                                  f"width; got {widths}")


def run_hooks(members: Sequence[Member]) -> list[str]:
    """Every input and target hook the members read, each once, in first-use order (the buffer's hooks)."""
    return list(dict.fromkeys(hook for member in members for hook in (*member.input_hooks, *member.target_hooks)))


def member_rows(rows: Mapping[str, Any], hooks: Sequence[str]) -> Any:
    """A member's rows of a batch (or holdout, or sample): its one hook's ``[tokens, d]``, or a cross-layer
    member's hooks stacked ``[tokens, L, d]``."""
    if len(hooks) == 1:
        return rows[hooks[0]]
    stack = jnp.stack if isinstance(rows[hooks[0]], jax.Array) else np.stack
    return stack([rows[hook] for hook in hooks], axis=1)


def _parse_member(spec: str) -> tuple[str | None, dict[str, str]]:
    name, _, body = spec.rpartition(":") if ":" in spec else ("", "", spec)
    overrides = {}
    for item in body.split(","):
        if not item.strip():
            continue
        field, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"config field 'sweep': expected field=value, got {item.strip()!r}")
        overrides[field.strip()] = value.strip()
    return name.strip() or None, overrides


def member_configs(cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{name: {"hook", "target_hook", "lr", "sae": {...}}}`` for every SAE of the run, validated field
    by field; ``target_hook`` is resolved (``''`` → ``hook``) and ``sae["transcode"]`` says whether it differs.

    Raises:
      ConfigError: naming the sweep field that is unknown or has a bad value, or a repeated name; a
        skip connection (``sae.skip``) on an SAE.
    """
    # .get: the train config of a run made before transcoders has no target_hook or sae.skip.
    base = {"hook": cfg["hook"], "target_hook": cfg.get("target_hook", ""), "lr": cfg["lr"], "sae": as_dict(cfg["sae"])}
    specs = [s for s in cfg["sweep"].split(";") if s.strip()]
    members: dict[str, dict[str, Any]] = {} if specs else {"sae": _resolve_target(base)}
    for spec in specs:
        name, overrides = _parse_member(spec)
        member = {"hook": base["hook"], "target_hook": base["target_hook"], "lr": base["lr"], "sae": dict(base["sae"])}
        # The member's architecture first: its own fields are the ones the other overrides may set.
        architecture = check_field("sweep.architecture", TRAIN.fields["sae.architecture"],
                                   overrides.get("architecture", member["sae"]["architecture"]))
        fields = {**TRAIN.fields, **{f"sae.{n}": f for n, f in architecture_spec(architecture).fields.items()}}
        for field, value in overrides.items():
            path = field if field in _MEMBER_TOP_FIELDS else f"sae.{field}"
            if path not in fields:
                valid = ", ".join([*_MEMBER_TOP_FIELDS, *sorted(p[4:] for p in fields if p.startswith("sae."))])
                raise ConfigError(f"config field 'sweep': unknown member field {field!r}; valid: {valid}")
            typed = check_field(f"sweep.{field}", fields[path], value)
            if path.startswith("sae."):
                member["sae"][field] = typed
            else:
                member[path] = typed
        for field, spec_field in architecture_spec(architecture).fields.items():
            member["sae"].setdefault(field, spec_field.default)  # a custom architecture's field the base lacks
        if member["sae"]["k"] > member["sae"]["n_latents"]:
            raise ConfigError(f"config field 'sweep': k={member['sae']['k']} exceeds n_latents={member['sae']['n_latents']}")
        name = name or "_".join(f"{f}{v}" for f, v in overrides.items()) or "sae"
        if name in members:
            raise ConfigError(f"config field 'sweep': member name {name!r} is used twice")
        members[name] = _resolve_target(member, f"sweep member {name!r}: ")
    return members


_MEMBER_TOP_FIELDS = ("hook", "target_hook", "lr")


def _resolve_target(member: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``target_hook`` '' → ``hook``; ``sae.transcode``; refuses a skip connection on an SAE."""
    target = member["target_hook"] or member["hook"]
    sae = {**member["sae"], "transcode": target != member["hook"]}
    if sae.get("skip", False) and not sae["transcode"]:
        raise ConfigError(f"config field 'sae.skip': {where}a skip connection needs a transcoder; set target_hook "
                          f"to another hook than {member['hook']}")
    return {**member, "target_hook": target, "sae": sae}


def learning_rate(lr: float, n_latents: int, base_lr: float = TOPK_BASE_LR, batch_size: int = 0,
                  lr_batch_reference: int = 0) -> float:
    """``lr``, or by default ``base_lr`` × 1/√(n_latents / 2¹⁴) (Gao et al. 2024, §2.3), times
    √(batch_size / lr_batch_reference) where the architecture sets a reference batch; each
    architecture states its ``base_lr`` and ``lr_batch_reference``."""
    if lr > 0:
        return lr
    if lr_batch_reference and batch_size <= 0:
        raise ValueError(f"learning_rate: this architecture's default lr scales with the batch; got batch_size={batch_size}")
    batch_scale = (batch_size / lr_batch_reference) ** 0.5 if lr_batch_reference else 1.0
    return base_lr / (n_latents / 2**14) ** 0.5 * batch_scale


def make_optimizer(cfg: Mapping[str, Any], lr: float, unit_norm_decoder: bool = True) -> optax.GradientTransformation:
    """Clip → (drop decoder-parallel gradient) → Adam with linear warm-up, constant, linear decay.

    ``cfg`` supplies ``steps``, ``warmup_steps``, ``decay_fraction`` and ``grad_clip``.
    """
    steps = cfg["steps"]
    decay_steps = int(round(steps * cfg["decay_fraction"]))
    flat_until = max(cfg["warmup_steps"], steps - decay_steps)
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(0.0, lr, max(cfg["warmup_steps"], 1)),
            optax.constant_schedule(lr),
            optax.linear_schedule(lr, 0.0, max(steps - flat_until, 1)),
        ],
        boundaries=[cfg["warmup_steps"], flat_until],
    )
    return optax.chain(
        optax.clip_by_global_norm(cfg["grad_clip"]) if cfg["grad_clip"] > 0 else optax.identity(),
        remove_parallel_decoder_grad() if unit_norm_decoder else optax.identity(),
        optax.adam(schedule),
    )


def build_members(cfg: Mapping[str, Any], store_hooks: Sequence[str] = ()) -> list[Member]:
    """The run's SAEs with their architectures and optimizers; a cross-layer member's layer wildcards
    are resolved against ``store_hooks`` (the hooks of the store, or of the run's ``cfg.json``)."""
    members = []
    for name, member in member_configs(cfg).items():
        spec = architecture_spec(member["sae"]["architecture"])
        layers = member_hooks(name, member, store_hooks)
        if member["sae"]["transcode"] and not spec.transcoder:
            raise ConfigError(f"config field 'target_hook': member {name!r} is a transcoder "
                              f"({member['hook']} -> {member['target_hook']}), and a {spec.name!r} dictionary has "
                              f"no transcoder form; use one of {', '.join(transcoder_architectures())}")
        architecture = make_architecture(member["sae"])
        lr = learning_rate(member["lr"], member["sae"]["n_latents"], architecture.base_lr, cfg["batch_size"],
                           architecture.lr_batch_reference)
        members.append(Member(name, member["hook"], member["sae"]["n_latents"], architecture,
                              make_optimizer(cfg, lr, architecture.unit_norm_decoder),
                              member["target_hook"] if member["sae"]["transcode"] else "", *layers))
    return members


def member_hooks(name: str, member: Mapping[str, Any],
                 store_hooks: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A multi-hook member's (input hooks, target hooks): a cross-layer transcoder's layer by layer, a
    crosscoder's sources (its targets: the same hooks); ``((), ())`` for a one-hook member. ``member`` is
    a :func:`member_configs` entry.

    Raises:
      ConfigError: a wildcard or hook list on a one-hook architecture, a cross-layer one without wildcards,
        inputs and targets on different layers, latents that do not split evenly over the layers, a
        crosscoder with a target hook, or its hooks not in the store (:func:`source_hooks`).
    """
    spec = architecture_spec(member["sae"]["architecture"])
    hook, target = member["hook"], member["target_hook"]
    wildcard = "*" in hook or "*" in target
    if not spec.layers:
        if wildcard or "," in hook or "," in target:
            raise ConfigError(f"config field 'hook': member {name!r}: a layer wildcard or hook list ({hook} -> "
                              f"{target}) names a multi-hook dictionary's hooks; set sae.architecture=clt "
                              "(wildcards) or crosscoder, or name one hook")
        return (), ()
    if not spec.transcoder:  # a crosscoder: acausal, it reconstructs the hooks it reads
        if member["sae"]["transcode"]:
            raise ConfigError(f"config field 'target_hook': member {name!r}: a crosscoder reconstructs its own hooks "
                              f"(acausal); leave target_hook '' (got {target!r})")
        sources = source_hooks(hook, store_hooks, "hook")
        return sources, sources
    if "*" not in hook or "*" not in target or hook == target:
        raise ConfigError(f"config field 'hook': member {name!r}: a cross-layer transcoder reads every layer; set "
                          "hook='blocks.*.mlp.hook_in' and target_hook='blocks.*.hook_mlp_out' (layer wildcards)")
    inputs, targets = layer_hooks(hook, store_hooks, "hook"), layer_hooks(target, store_hooks, "target_hook")
    if list(inputs) != list(targets):
        raise ConfigError(f"config field 'target_hook': member {name!r}: {target} matches layers {list(targets)}, "
                          f"{hook} layers {list(inputs)}")
    if member["sae"]["n_latents"] % len(inputs):
        raise ConfigError(f"config field 'sae.n_latents': member {name!r}: {member['sae']['n_latents']} latents do "
                          f"not split evenly over {len(inputs)} layers")
    return tuple(inputs.values()), tuple(targets.values())
