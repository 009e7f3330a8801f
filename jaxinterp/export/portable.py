"""The neutral in-memory form of an SAE that every exporter writes from and every importer reads into.

A :class:`PortableSAE` holds float32 numpy weights that act on *raw* (unnormalised) activations
with jaxinterp's encoder convention::

    pre = (x − b_dec) @ W_enc + b_enc          W_enc [d_in, d_sae], b_enc [d_sae], b_dec [d_in]
    x̂   = latents @ W_dec + b_dec              W_dec [d_sae, d_in]

A transcoder (``target_hook`` set) reads ``x`` itself (``pre = x @ W_enc + b_enc``), predicts its
target hook with ``W_dec`` [d_sae, d_out], ``b_dec`` [d_out], and, for a skip transcoder, adds
``x @ W_skip`` (``W_skip`` [d_in, d_out]).

plus ``threshold`` [d_sae] for the threshold architectures (``jumprelu``, ``batch_topk``,
``matryoshka``), whose inference is ``relu(pre) · 1[pre > threshold]``. Formats whose convention
differs (Gemma-Scope's ``x @ W_enc + b_enc``, sparsify's ``encoder.weight`` [d_sae, d_in]) convert
at their own edge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxinterp.config import ConfigError
from jaxinterp.eval.metrics import log10_firing_frequency
from jaxinterp.sae import Architecture, make_architecture
from jaxinterp.sae.topk import fold_input_scale

if TYPE_CHECKING:
    from jaxinterp.runs import TrainedSAE

__all__ = ["FORMAT_ARCHITECTURES", "TRANSCODER_FORMAT_ARCHITECTURES", "PortableSAE", "SAEFileError", "THRESHOLD_ARCHITECTURES", "portable_from_trained",
           "fold_transcoder_scales", "require_format", "to_jaxinterp"]

# Architectures whose inference is a JumpReLU: a per-latent (jumprelu) or global learned threshold.
THRESHOLD_ARCHITECTURES = ("jumprelu", "batch_topk", "matryoshka")

# Export format → the architectures it can hold. sparsify only has TopK; a Gemma-Scope params.npz
# is a JumpReLU (a ReLU SAE is one with threshold 0), which TopK's per-token selection is not.
FORMAT_ARCHITECTURES = {
    "saelens": ("topk", "batch_topk", "matryoshka", "jumprelu", "relu"),
    "sparsify": ("topk",),
    "npz": ("jumprelu", "batch_topk", "matryoshka", "relu"),
    "dictionary_learning": ("topk", "batch_topk", "matryoshka", "jumprelu", "relu"),
}

# Export format → the transcoder architectures it can hold: SAELens 6's transcoders are ReLU and JumpReLU
# (transcoder, skip_transcoder, jumprelu_transcoder, jumprelu_skip_transcoder; no TopK), sparsify's TopK;
# a Gemma-Scope params.npz holds SAEs only.
TRANSCODER_FORMAT_ARCHITECTURES = {"saelens": ("relu", "jumprelu"), "sparsify": ("topk",), "npz": (),
                                   "dictionary_learning": ()}


class SAEFileError(ValueError):
    """An SAE file that cannot be imported: it disagrees with itself (weight shapes vs its config) or
    uses an option jaxinterp cannot represent. The message names the file and the field."""


class PortableSAE(NamedTuple):
    """An SAE as plain arrays and metadata, independent of any file format.

    Attributes:
      architecture: jaxinterp's architecture name (``topk``, ``batch_topk``, ``matryoshka``,
        ``jumprelu``, ``relu``).
      params: float32 numpy ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec`` on raw activations, and
        ``threshold`` [d_sae] for :data:`THRESHOLD_ARCHITECTURES`.
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
    def transcode(self) -> bool:
        """Whether this is a transcoder (it predicts ``target_hook`` from ``hook_name``)."""
        return bool(self.target_hook) and self.target_hook != self.hook_name

    @property
    def family(self) -> str:
        """The inference rule formats see: ``topk``, ``jumprelu`` (a threshold) or ``relu``."""
        return {"topk": "topk", "relu": "relu"}.get(self.architecture, "jumprelu")

    @property
    def d_out(self) -> int:
        """The prediction's width (``d_in`` for an SAE)."""
        return int(self.params["W_dec"].shape[1])


def fold_transcoder_scales(params: dict[str, Any], input_scale: float, target_scale: float) -> dict[str, Any]:
    """Params on raw activations for a transcoder trained to map ``input_scale · x`` to ``target_scale · y``.

    The encoder reads ``x`` itself, so ``W_enc · input_scale`` gives the same pre-activations; the
    prediction is divided by ``target_scale`` (``W_dec``, ``b_dec``, and ``W_skip`` times
    ``input_scale / target_scale``).
    """
    folded = {**params, "W_enc": params["W_enc"] * input_scale, "W_dec": params["W_dec"] / target_scale,
              "b_dec": params["b_dec"] / target_scale}
    if "W_skip" in params:
        folded["W_skip"] = params["W_skip"] * (input_scale / target_scale)
    return folded


def portable_from_trained(trained: TrainedSAE) -> PortableSAE:
    """The :class:`PortableSAE` of a :class:`~jaxinterp.runs.TrainedSAE`.

    Input normalisation is folded into the weights (:func:`jaxinterp.sae.topk.fold_input_scale`);
    ``threshold`` is ``exp(log_threshold)`` for JumpReLU and BatchTopK/Matryoshka's global
    threshold broadcast to every latent.
    """
    cfg, source, state = trained.config, trained.run_config["source"], trained.state
    transcode = bool(cfg.get("transcode", False))
    if transcode:
        params = fold_transcoder_scales(state.params, trained.input_scale, trained.target_scale)
    else:
        params = fold_input_scale(state.params, trained.input_scale)
    weights = {name: np.asarray(params[name], np.float32) for name in ("W_enc", "b_enc", "W_dec", "b_dec", "W_skip")
               if name in params}
    architecture = cfg["architecture"]
    if architecture == "jumprelu":
        weights["threshold"] = np.exp(np.asarray(params["log_threshold"], np.float32))
    elif architecture in THRESHOLD_ARCHITECTURES:
        weights["threshold"] = np.full(cfg["d_sae"], float(state.arch_state["threshold"]), np.float32)
    metadata = {
        "model_name": source["model_name"],
        "jaxinterp_model_hash": source["model_hash"],  # what eval/train/probe compare a store's model with
        "context_size": source["context_size"],
        "prepend_bos": source["prepend_bos"],
        "dataset_path": source["dataset_path"],
        "model_class_name": source["model_class"],
        "exclude_special_tokens": trained.run_config["train"]["exclude_bos"],
        "trained_with": "jaxinterp",
        "jaxinterp_architecture": architecture,
        "training_steps": trained.step,
        "training_tokens": int(trained.tokens_seen),
    }
    frequency = np.asarray(log10_firing_frequency(state.fire_count, trained.tokens_seen), np.float32)
    return PortableSAE(architecture, weights, int(cfg["d_in"]), int(cfg["d_sae"]), int(cfg["k"]), cfg["hook_name"],
                       metadata, frequency, bool(cfg.get("multi_topk", False)),
                       cfg["target_hook"] if transcode else "")


def require_format(sae: PortableSAE, fmt: str) -> None:
    """Raises :class:`~jaxinterp.config.ConfigError` (a ``ValueError``) naming the formats that
    can hold ``sae`` when ``fmt`` cannot."""
    if sae.transcode:
        allowed, what = TRANSCODER_FORMAT_ARCHITECTURES[fmt], f"transcoder ({sae.hook_name} -> {sae.target_hook})"
        others = [name for name, archs in TRANSCODER_FORMAT_ARCHITECTURES.items() if sae.architecture in archs]
        instead = f"; export it as {' or '.join(map(repr, others))}" if others else ""
        if not allowed:
            raise ConfigError(f"config field 'format': {fmt!r} (Gemma-Scope params.npz) holds no transcoder, and this "
                              f"SAE is a {what}{instead}")
        if sae.architecture not in allowed:
            raise ConfigError(f"config field 'format': {fmt!r} cannot hold a {sae.architecture!r} {what} (its "
                              f"transcoders are {', '.join(allowed)}){instead}")
        return
    if sae.architecture not in FORMAT_ARCHITECTURES[fmt]:
        others = [name for name, archs in FORMAT_ARCHITECTURES.items() if sae.architecture in archs]
        raise ConfigError(f"config field 'format': {fmt!r} cannot hold a {sae.architecture!r} SAE (it holds "
                         f"{', '.join(FORMAT_ARCHITECTURES[fmt])}); export it as {' or '.join(map(repr, others))}")


def to_jaxinterp(sae: PortableSAE) -> tuple[Architecture, dict[str, jnp.ndarray], dict[str, jnp.ndarray]]:
    """``(architecture, params, arch_state)`` that ``architecture.encode`` / ``decode`` accept.

    JumpReLU gets ``log_threshold = log(max(threshold, 0))``: ``-inf`` for a zero threshold, which
    ``exp`` maps back to 0, i.e. a plain ReLU on that latent; a negative threshold acts as 0 does,
    since ``relu(pre)·1[pre > θ]`` is ``relu(pre)`` for any θ ≤ 0. BatchTopK / Matryoshka need one
    threshold shared by all latents (their ``arch_state["threshold"]``).

    Raises:
      SAEFileError: a BatchTopK / Matryoshka SAE whose thresholds differ between latents.
    """
    params = {name: jnp.asarray(sae.params[name], jnp.float32) for name in ("W_enc", "b_enc", "W_dec", "b_dec", "W_skip")
              if name in sae.params}
    arch_state: dict[str, jnp.ndarray] = {}
    if sae.architecture == "jumprelu":
        threshold = np.maximum(np.asarray(sae.params["threshold"], np.float32), np.float32(0))
        with np.errstate(divide="ignore"):
            params["log_threshold"] = jnp.asarray(np.log(threshold))
    elif sae.architecture in THRESHOLD_ARCHITECTURES:
        threshold = np.asarray(sae.params["threshold"], np.float32)
        if threshold.size and not np.all(threshold == threshold.flat[0]):
            raise SAEFileError(f"{sae.architecture} uses one threshold for every latent, but these differ; "
                             f"treat it as architecture 'jumprelu' (sae._replace(architecture='jumprelu'))")
        arch_state["threshold"] = jnp.asarray(threshold.flat[0] if threshold.size else 0.0, jnp.float32)
    cfg = {"architecture": sae.architecture, "k": sae.k, "multi_topk": sae.multi_topk, "transcode": sae.transcode,
           "skip": "W_skip" in sae.params}
    return make_architecture(cfg), params, arch_state
