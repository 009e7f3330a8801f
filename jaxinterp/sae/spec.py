"""What an architecture declares about itself: :class:`ArchitectureSpec`, one per module (``SPEC``).

The config schema, the sharding rules, the exporters and warm starts read these facts; none of
them names an architecture. A new architecture is one module that defines ``make(cfg)`` and
``SPEC``; ``sae.architecture`` names a built-in (:data:`BUILTINS`) or, for one defined outside the
package, its module's dotted path (``my_project.my_sae``), resolved when a config names it.

Portable form (what exporters read and importers write, float32 numpy on raw activations):
``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_out]``, ``b_dec [d_out]``, optional
``W_skip [d_in, d_out]``, plus what the architecture's *family* needs. A family is the inference
rule a file format can express:

- ``topk``: per-token top-k of ``relu(pre)``, ``pre = (x − b_dec) W_enc + b_enc`` (``x`` for a
  transcoder);
- ``jumprelu``: ``relu(pre)·1[pre > threshold]`` with ``threshold [d_sae]`` (a global BatchTopK
  threshold broadcast);
- ``relu``: ``relu(pre)``;
- any other family (``gated``, ``matching_pursuit``, …) is held only by formats that name it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.config import ConfigError, Field
from jaxinterp.sae.base import B_DEC_INITS, Architecture, Params

__all__ = ["ArchitectureSpec", "BUILTINS", "DICTIONARY_FIELDS", "FAMILY_BUILTINS", "LATENT", "STANDARD_PARAM_AXES", "one_hook_builtins", "transcoder_architectures",
           "architecture_fields", "architecture_spec", "builtin_fields", "fold_scales", "make_architecture",
           "standard_from_portable", "standard_to_portable"]

ArchState = dict[str, jax.Array]
Axes = tuple[str | None, ...]

# The logical axis of latents; the mesh maps it to 'model' (jaxinterp.mesh.LOGICAL_RULES).
LATENT = "latent"

# Logical axes of the parameters every dictionary has (None = not sharded).
STANDARD_PARAM_AXES: Mapping[str, Axes] = {
    "W_enc": (None, LATENT),
    "b_enc": (LATENT,),
    "W_dec": (LATENT, None),
    "b_dec": (None,),
    "W_skip": (None, None),
}

_STANDARD_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec", "W_skip")


def standard_to_portable(params: Params, arch_state: ArchState, cfg: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The standard weights as float32 numpy (a ``topk`` or ``relu`` family architecture)."""
    return {name: np.asarray(params[name], np.float32) for name in _STANDARD_NAMES if name in params}


def standard_from_portable(weights: Mapping[str, np.ndarray], cfg: Mapping[str, Any]) -> tuple[Params, ArchState]:
    """``(params, arch_state)`` from the standard portable weights."""
    return {name: jnp.asarray(weights[name], jnp.float32) for name in _STANDARD_NAMES if name in weights}, {}


def fold_scales(params: Params, input_scale: float, target_scale: float, transcode: bool) -> Params:
    """Params that act on raw activations for a dictionary trained on ``input_scale · x`` → ``target_scale · y``.

    SAE (``target_scale == input_scale``): ``W_enc·s`` and ``b_dec/s`` give the same pre-activations
    from raw ``x`` (so the same selection; thresholds compare pre-activations and are unchanged),
    and ``W_dec/s``, ``b_dec/s`` return the reconstruction in raw units. Transcoder: the encoder
    reads ``x`` itself, so only ``W_enc·s_in``; the prediction is divided by ``s_out`` (``W_dec``,
    ``b_dec``, and ``W_skip·s_in/s_out``). Decoder rows are then no longer unit-norm, as in SAELens
    exports of normalised SAEs.
    """
    folded = {**params, "W_enc": params["W_enc"] * input_scale, "W_dec": params["W_dec"] / target_scale,
              "b_dec": params["b_dec"] / target_scale}
    if "W_skip" in params:
        folded["W_skip"] = params["W_skip"] * (input_scale / target_scale)
    return folded


class ArchitectureSpec(NamedTuple):
    """One architecture's facts.

    Attributes:
      name: its ``sae.architecture`` value (a built-in's short name, or the module's dotted path).
      make: ``cfg -> Architecture`` (``cfg`` is the member's ``sae`` block plus ``transcode``).
      family: the inference rule file formats see (module docstring): ``topk``, ``jumprelu``, ``relu``, …
      fields: its own ``sae.*`` config fields (name without ``sae.``), each with its default.
      param_axes: logical axes of every parameter it adds to or changes from
        :data:`STANDARD_PARAM_AXES`; a param with no entry anywhere is replicated.
      state_axes: logical axes of its ``arch_state`` entries (replicated when absent).
      to_portable: ``(params, arch_state, cfg) -> weights`` on raw activations (after :attr:`fold_scales`).
      from_portable: ``(weights, cfg) -> (params, arch_state)``, the inverse.
      fold_scales: ``(params, input_scale, target_scale, transcode) -> params`` on raw activations.
      unit_norm_renormalize: warm start into a unit-norm-decoder run: ``(params, arch_state, norms
        [d_sae]) -> (params, arch_state)`` moving decoder row norms into the encoder; ``None`` when
        decoder norms are free.
      renormalize_exact: whether that move leaves the function unchanged for *unequal* row norms
        (true for a per-latent threshold; false for a top-k ranking or a global threshold).
      transcoder: whether it has a transcoder form (``cfg["transcode"]``: a target hook other than its
        input hook); the trainer refuses a transcoder member of one that has not.
      layers: it reads several hooks and its functions see ``[tokens, L, d]`` stacks. With
        ``transcoder`` (a cross-layer transcoder) its ``hook`` and ``target_hook`` are layer wildcards
        (``blocks.*.mlp.hook_in``); without (a crosscoder, acausal) ``hook`` lists its sources (comma-separated
        store hooks or a wildcard) and ``target_hook`` is ``''``.
    """

    name: str
    make: Callable[[Mapping[str, Any]], Architecture]
    family: str
    fields: Mapping[str, Field] = {}
    param_axes: Mapping[str, Axes] = {}
    state_axes: Mapping[str, Axes] = {}
    to_portable: Callable[[Params, ArchState, Mapping[str, Any]], dict[str, np.ndarray]] = standard_to_portable
    from_portable: Callable[[Mapping[str, np.ndarray], Mapping[str, Any]], tuple[Params, ArchState]] = (
        standard_from_portable)
    fold_scales: Callable[[Params, float, float, bool], Params] = fold_scales
    unit_norm_renormalize: Callable[[Params, ArchState, jax.Array], tuple[Params, ArchState]] | None = None
    renormalize_exact: bool = False
    transcoder: bool = True
    layers: bool = False

    def axes(self, param: str) -> Axes | None:
        """Logical axes of parameter ``param`` (``None``: replicated)."""
        return {**STANDARD_PARAM_AXES, **self.param_axes}.get(param)


# The built-in architectures, each the module ``jaxinterp.sae.<name>`` (a static list: nothing is
# registered at import time).
BUILTINS = ("topk", "batch_topk", "matryoshka", "jumprelu", "relu", "gated", "matching_pursuit", "top_afa", "clt",
            "crosscoder")

# The built-in an importer gives a file of each family (a file records the inference rule only).
FAMILY_BUILTINS: Mapping[str, str] = {"topk": "topk", "jumprelu": "jumprelu", "relu": "relu", "gated": "gated",
                                      "matching_pursuit": "matching_pursuit"}


def architecture_spec(name: str) -> ArchitectureSpec:
    """The :class:`ArchitectureSpec` of a built-in short name or an importable module's dotted path.

    Raises:
      ConfigError: naming ``sae.architecture`` and listing the built-ins, for an unknown name or a
        module without ``SPEC``.
    """
    module_name = f"jaxinterp.sae.{name}" if name in BUILTINS else name
    unknown = ConfigError(f"config field 'sae.architecture': unknown architecture {name!r}; choose one of "
                          f"{', '.join(BUILTINS)}, or the dotted path of a module that defines SPEC")
    if name not in BUILTINS and "." not in name:
        raise unknown
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise unknown from error
    spec = getattr(module, "SPEC", None)
    if not isinstance(spec, ArchitectureSpec):
        raise unknown
    return spec


def make_architecture(cfg: Mapping[str, Any]) -> Architecture:
    """The architecture ``cfg["architecture"]`` configured by the rest of ``cfg`` (an ``sae`` config).

    Its ``name`` is the config's name, so ``architecture_spec(arch.name)`` finds its spec again.
    """
    spec = architecture_spec(cfg["architecture"])
    return spec.make(cfg)._replace(name=spec.name)


def _is_architecture(name: str) -> bool:
    try:
        architecture_spec(name)
    except ConfigError:
        return False
    return True


# The fields every dictionary has, whatever its architecture (``sae.*`` without the prefix).
DICTIONARY_FIELDS: Mapping[str, Field] = {
    "architecture": Field(str, "SAE architecture", default="topk", check=(
        _is_architecture, f"one of {', '.join(map(repr, BUILTINS))}, or the dotted path of a module that "
                          "defines SPEC")),
    "n_latents": Field(int, "dictionary size d_sae", minimum=1, default=4096),
    "k": Field(int, "active latents per token (TopK family); initial target L0 (JumpReLU)", minimum=1, default=32),
    "b_dec_init": Field(str, "initial b_dec: mean or geometric_median (Weiszfeld) of the first training batch, as "
                             "training sees it, or zero", choices=B_DEC_INITS, default="mean"),
    "skip": Field(bool, "transcoder only: add a zero-initialised linear skip x @ W_skip (Paulo et al. 2025)",
                  default=False),
}


def transcoder_architectures() -> tuple[str, ...]:
    """The one-hook built-ins that have a transcoder form."""
    return tuple(name for name in one_hook_builtins() if architecture_spec(name).transcoder)


def one_hook_builtins() -> tuple[str, ...]:
    """The built-ins that read one hook (all but the multi-hook ones: cross-layer transcoders, crosscoders)."""
    return tuple(name for name in BUILTINS if not architecture_spec(name).layers)


def builtin_fields() -> dict[str, Field]:
    """The union of the built-ins' own fields (one ``Field`` object per name, shared where reused).

    Raises:
      AssertionError: two built-ins declare different fields under one name.
    """
    union: dict[str, Field] = {}
    for name in BUILTINS:
        for field_name, field in architecture_spec(name).fields.items():
            assert union.setdefault(field_name, field) == field, f"{name} redeclares sae.{field_name}"
    return union


def architecture_fields(flat: Mapping[str, Any], prefix: str = "sae.") -> dict[str, Field]:
    """The fields (under ``prefix``) of the architecture a flat config names when it is not a built-in
    (a built-in's are already in the schema); none for an unknown name, which its own field reports."""
    name = flat.get(prefix + "architecture")
    if not isinstance(name, str) or name in BUILTINS or not _is_architecture(name):
        return {}
    return {prefix + field_name: field for field_name, field in architecture_spec(name).fields.items()}
