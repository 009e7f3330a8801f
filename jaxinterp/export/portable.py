"""The neutral in-memory form of an SAE that every exporter writes from and every importer reads into.

A :class:`PortableSAE` holds float32 numpy weights that act on *raw* (unnormalised) activations
with jaxinterp's encoder convention::

    pre = (x − b_dec) @ W_enc + b_enc          W_enc [d_in, d_sae], b_enc [d_sae], b_dec [d_in]
    x̂   = latents @ W_dec + b_dec              W_dec [d_sae, d_in]

A transcoder (``target_hook`` set) reads ``x`` itself (``pre = x @ W_enc + b_enc``), predicts its
target hook with ``W_dec`` [d_sae, d_out], ``b_dec`` [d_out], and, for a skip transcoder, adds
``x @ W_skip`` (``W_skip`` [d_in, d_out]).

plus what the architecture's *family* needs (:mod:`jaxinterp.sae.spec`): ``threshold`` [d_sae] for
the ``jumprelu`` family, whose inference is ``relu(pre) · 1[pre > threshold]``. Formats hold
families, not architectures; each architecture's spec converts its params to and from this form
(``to_portable`` / ``from_portable``) and folds the input scale (``fold_scales``). Formats whose convention
differs (Gemma-Scope's ``x @ W_enc + b_enc``, sparsify's ``encoder.weight`` [d_sae, d_in]) convert
at their own edge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxinterp.config import ConfigError
from jaxinterp.eval.metrics import log10_firing_frequency
from jaxinterp.sae import Architecture, architecture_spec, make_architecture
from jaxinterp.store.manifest import hook_model

if TYPE_CHECKING:
    from jaxinterp.runs import TrainedSAE

__all__ = ["FORMAT_FAMILIES", "TRANSCODER_FORMAT_FAMILIES", "PortableSAE", "SAEFileError", "portable_from_trained",
           "require_format", "to_jaxinterp"]

# Export format → the families it can hold. sparsify only has TopK; a Gemma-Scope params.npz is a
# JumpReLU (a ReLU SAE is one with threshold 0), which TopK's per-token selection is not.
FORMAT_FAMILIES = {"saelens": ("topk", "jumprelu", "relu", "gated", "matching_pursuit"), "sparsify": ("topk",), "npz": ("jumprelu", "relu"),
                   "dictionary_learning": ("topk", "jumprelu", "relu")}

# Export format → the transcoder families it can hold: SAELens 6's transcoders are ReLU and JumpReLU
# (transcoder, skip_transcoder, jumprelu_transcoder, jumprelu_skip_transcoder; no TopK), sparsify's TopK;
# a Gemma-Scope params.npz and dictionary_learning 0.1.0 hold SAEs only.
TRANSCODER_FORMAT_FAMILIES = {"saelens": ("relu", "jumprelu"), "sparsify": ("topk",), "npz": (),
                              "dictionary_learning": ()}


class SAEFileError(ValueError):
    """An SAE file that cannot be imported: it disagrees with itself (weight shapes vs its config) or
    uses an option jaxinterp cannot represent. The message names the file and the field."""


class PortableSAE(NamedTuple):
    """An SAE as plain arrays and metadata, independent of any file format.

    Attributes:
      architecture: jaxinterp's architecture name (a built-in or a dotted module path; an importer
        names the built-in of the file's family).
      params: float32 numpy ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec`` on raw activations, and
        ``threshold`` [d_sae] for the ``jumprelu`` family.
      d_in: input width.
      d_sae: number of latents.
      k: TopK's k (for BatchTopK / Matryoshka the mean L0 trained for; JumpReLU the initial target
        L0); 0 when unknown (an imported non-TopK SAE).
      hook_name: TransformerLens hook name (``blocks.6.hook_resid_post``); ``''`` when unknown.
      metadata: source model and training facts, keyed as SAELens' ``metadata`` keys them
        (``model_name``, ``context_size``, ``prepend_bos``, ``dataset_path``, ``model_class_name``, …).
      log10_frequency: [d_sae] log10 firing frequency (SAELens' ``sparsity``), or ``None``.
      multi_topk: a TopK SAE trained with the Multi-TopK loss (sparsify's ``multi_topk``).
      target_hook: a transcoder's target hook (what it predicts); ``''`` for an SAE.
    """

    architecture: str
    params: dict[str, np.ndarray]
    d_in: int
    d_sae: int
    k: int
    hook_name: str
    metadata: dict[str, Any]
    log10_frequency: np.ndarray | None = None
    multi_topk: bool = False
    target_hook: str = ""

    @property
    def family(self) -> str:
        """The inference rule formats hold (``topk``, ``jumprelu``, ``relu``), from the architecture's spec."""
        return architecture_spec(self.architecture).family

    @property
    def transcode(self) -> bool:
        """Whether this is a transcoder (it predicts ``target_hook`` from ``hook_name``)."""
        return bool(self.target_hook) and self.target_hook != self.hook_name

    @property
    def d_out(self) -> int:
        """The prediction's width (``d_in`` for an SAE)."""
        return int(self.params["W_dec"].shape[1])


def portable_from_trained(trained: TrainedSAE) -> PortableSAE:
    """The :class:`PortableSAE` of a :class:`~jaxinterp.runs.TrainedSAE`.

    Input normalisation is folded into the weights and the params become portable weights by the
    architecture's spec (``fold_scales``, ``to_portable``).
    """
    cfg, source, state = trained.config, trained.run_config["source"], trained.state
    transcode = bool(cfg.get("transcode", False))
    architecture = cfg["architecture"]
    spec = architecture_spec(architecture)
    # An SAE's target is its input: one scale (the trainer records target_scale = input_scale for it).
    target_scale = trained.target_scale if transcode else trained.input_scale
    params = spec.fold_scales(state.params, trained.input_scale, target_scale, transcode)
    weights = spec.to_portable(params, state.arch_state, cfg)
    # In a store of several models, the model whose hooks this SAE read, and the hook's name in that model.
    model, hook_name = hook_model(source, cfg["hook_name"])
    target_hook = hook_model(source, cfg["target_hook"])[1] if transcode else ""
    metadata = {
        "model_name": model["model_name"],
        "jaxinterp_model_hash": model["model_hash"],  # what eval/train/probe compare a store's model with
        "context_size": source["context_size"],
        "prepend_bos": source["prepend_bos"],
        "dataset_path": source["dataset_path"],
        "model_class_name": model["model_class"],
        "exclude_special_tokens": trained.run_config["train"]["exclude_bos"],
        "trained_with": "jaxinterp",
        "jaxinterp_architecture": architecture,
        "training_steps": trained.step,
        "training_tokens": int(trained.tokens_seen),
    }
    frequency = np.asarray(log10_firing_frequency(state.fire_count, trained.tokens_seen), np.float32)
    return PortableSAE(architecture, weights, int(cfg["d_in"]), int(cfg["d_sae"]), int(cfg["k"]), hook_name,
                       metadata, frequency, bool(cfg.get("multi_topk", False)), target_hook)


def require_format(sae: PortableSAE, fmt: str) -> None:
    """Raises :class:`~jaxinterp.config.ConfigError` (a ``ValueError``) naming the formats that
    can hold ``sae`` when ``fmt`` cannot."""
    family = sae.family
    if sae.transcode:
        allowed, what = TRANSCODER_FORMAT_FAMILIES[fmt], f"transcoder ({sae.hook_name} -> {sae.target_hook})"
        others = [name for name, families in TRANSCODER_FORMAT_FAMILIES.items() if family in families]
        instead = f"; export it as {' or '.join(map(repr, others))}" if others else ""
        if not allowed:
            raise ConfigError(f"config field 'format': {fmt!r} (Gemma-Scope params.npz) holds no transcoder, and this "
                              f"SAE is a {what}{instead}")
        if family not in allowed:
            raise ConfigError(f"config field 'format': {fmt!r} cannot hold a {sae.architecture!r} {what} (its "
                              f"transcoders are {', '.join(allowed)}){instead}")
        return
    if family not in FORMAT_FAMILIES[fmt]:
        others = [name for name, families in FORMAT_FAMILIES.items() if family in families]
        instead = f"; export it as {' or '.join(map(repr, others))}" if others else ""
        raise ConfigError(f"config field 'format': {fmt!r} cannot hold a {sae.architecture!r} SAE ({family} family; "
                          f"it holds {', '.join(FORMAT_FAMILIES[fmt])}){instead}")


def to_jaxinterp(sae: PortableSAE) -> tuple[Architecture, dict[str, jnp.ndarray], dict[str, jnp.ndarray]]:
    """``(architecture, params, arch_state)`` that ``architecture.encode`` / ``decode`` accept, by the
    architecture's spec (``from_portable``; e.g. JumpReLU's ``log_threshold = log(max(threshold, 0))``).

    Raises:
      SAEFileError: weights the architecture cannot take, e.g. a BatchTopK / Matryoshka SAE whose
        thresholds differ between latents.
    """
    cfg = {"architecture": sae.architecture, "k": sae.k, "multi_topk": sae.multi_topk, "transcode": sae.transcode,
           "skip": "W_skip" in sae.params}
    try:
        params, arch_state = architecture_spec(sae.architecture).from_portable(sae.params, cfg)
    except ConfigError:
        raise
    except ValueError as error:
        raise SAEFileError(str(error)) from error
    return make_architecture(cfg), params, arch_state
