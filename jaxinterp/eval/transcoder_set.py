"""A transcoder set spliced in at once: every covered MLP output replaced in the same forward pass.

Each transcoder reads its input hook (``blocks.L.mlp.hook_in``) as the *spliced* forward computes it, i.e.
downstream of the replacements at earlier layers, and its prediction replaces ``blocks.L.hook_mlp_out``: the
replacement model of circuit tracing (Ameisen et al. 2025), whose errors compound across layers, so its
CE-loss recovered is below that of any one of its transcoders spliced alone. The baseline zeroes every
covered target at once.

    CE-loss recovered = (CE_zero − CE_set) / (CE_zero − CE_clean)       (all targets zeroed / replaced)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxinterp.config import ConfigError
from jaxinterp.eval.splice import spliced_losses, spliced_summary, transcoder_edit, zero_ablation
from jaxinterp.export import LoadedSAE, loaded_from_trained, require_same_model
from jaxinterp.export.run import transcoder_set_members
from jaxinterp.runs import load_trained

__all__ = ["SetMember", "load_transcoder_set", "transcoder_set_metrics"]


class SetMember(NamedTuple):
    """One transcoder of a set: where it came from and the SAE itself."""

    run: str
    name: str
    sae: LoadedSAE


def load_transcoder_set(runs: str, names: str, model_hash: str, model_name: str,
                        allow_other_model: bool) -> list[SetMember]:
    """The transcoders of ``runs`` (comma-separated; every SAE of each, or members ``names`` of one sweep run),
    ordered by where the forward pass reaches their targets.

    Raises:
      ConfigError (naming 'transcoder_set'): an SAE that is not a transcoder, two predicting one hook, or a
        transcoder of another model than ``model_hash`` (unless ``allow_other_model``).
    """
    members = []
    for run, name in transcoder_set_members(runs, names):
        sae = loaded_from_trained(load_trained(run, name))
        if not sae.sae.transcode:
            raise ConfigError(f"config field 'transcoder_set': {run} SAE {name!r} reads and reconstructs "
                              f"{sae.sae.hook_name}; a set holds transcoders only (pick members with "
                              "transcoder_set_saes)")
        require_same_model(sae, model_hash, model_name, "transcoder_set", allow_other_model)
        members.append(SetMember(run, name, sae))
    targets: dict[str, SetMember] = {}
    for member in members:
        other = targets.setdefault(member.sae.sae.target_hook, member)
        if other is not member:
            raise ConfigError(f"config field 'transcoder_set': {other.run} {other.name!r} and {member.run} "
                              f"{member.name!r} both predict {member.sae.sae.target_hook}; a set has one per hook "
                              "(pick members with transcoder_set_saes)")
    return sorted(members, key=lambda m: _order(m.sae.sae.target_hook))


def _order(hook: str) -> tuple[int, str]:
    parts = hook.split(".")
    return (int(parts[1]), hook) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else (-1, hook)


def transcoder_set_metrics(model: Any, contexts: np.ndarray, members: Sequence[SetMember], keep_first: bool,
                           batch_size: int, progress: bool = False) -> dict[str, Any]:
    """CE clean / set-spliced / all-targets-zeroed, CE-loss recovered, ΔCE and KL on ``contexts`` [n, seq]."""
    edits = [transcoder_edit(m.sae.sae.hook_name, m.sae.sae.target_hook, m.sae.architecture, m.sae.params,
                             m.sae.arch_state, keep_first) for m in members]
    zeros = [zero_ablation(m.sae.sae.target_hook, keep_first) for m in members]
    losses = spliced_losses(model, contexts, {"set": edits, "zero": zeros}, batch_size, progress)
    return {
        "members": [{"run": m.run, "sae": m.name, "hook_name": m.sae.sae.hook_name,
                     "target_hook": m.sae.sae.target_hook, "architecture": m.sae.sae.architecture} for m in members],
        **spliced_summary(losses, "set", contexts),
    }
