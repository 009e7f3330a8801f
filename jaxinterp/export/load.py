"""Loading an SAE saved by jaxinterp or a peer tool, whatever its format: :func:`load_sae`.

Paths may be URLs (``file://``, ``gs://``, ``s3://``): a run directory is restored by orbax from
where it is; an export is read from a temporary local copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
from etils import epath

from jaxinterp.config import ConfigError
from jaxinterp.export.crosscoder import (CROSSCODER_FORMAT, WEIGHTS_FILE, portable_crosscoder, read_crosscoder,
                                         to_crosscoder)
from jaxinterp.export.npz import read_npz
from jaxinterp.export.portable import PortableSAE, portable_from_trained, to_jaxinterp
from jaxinterp.export.saelens import read_saelens
from jaxinterp.export.sparsify import hookpoint_dirs, read_sparsify
from jaxinterp.faults import read_json
from jaxinterp.sae import Architecture, Latents
from jaxinterp.sae.base import skip_term
from jaxinterp.store.paths import local_copy, location

if TYPE_CHECKING:
    from jaxinterp.runs import TrainedSAE

__all__ = ["LoadedSAE", "READERS", "detect_format", "is_run_directory", "load_sae", "loaded_from_trained",
           "require_same_model", "require_trained_on"]

READERS = {"saelens": read_saelens, "sparsify": read_sparsify, "npz": read_npz}


class LoadedSAE(NamedTuple):
    """An imported SAE, ready for jaxinterp.

    Attributes:
      format: the format it was read from (``run`` for a jaxinterp run directory, ``saelens``, ``sparsify``, ``npz``).
      sae: its neutral form (numpy weights, hook name, metadata).
      architecture: the jaxinterp :class:`~jaxinterp.sae.Architecture` (SAELens ``standard`` is
        ``relu``; sparsify is ``topk``; SAELens ``jumprelu`` and Gemma-Scope npz are ``jumprelu``).
      params: the params pytree ``architecture.encode`` / ``decode`` take.
      arch_state: the architecture state pytree ``architecture.encode`` takes.
    """

    format: str
    sae: PortableSAE
    architecture: Architecture
    params: dict[str, jax.Array]
    arch_state: dict[str, jax.Array]

    def encode(self, x: Any) -> Latents:
        """Latents of raw activations ``x`` [tokens, d_in] (sparse for TopK, dense otherwise)."""
        return self.architecture.encode(self.params, self.arch_state, x)

    def decode(self, latents: Latents) -> jax.Array:
        """Reconstruction ``x̂`` [tokens, d_in] of ``latents`` (a transcoder's, without its skip term: [tokens, d_out])."""
        return self.architecture.decode(self.params, latents)

    def predict(self, x: Any) -> jax.Array:
        """``decode(encode(x))`` plus a skip transcoder's ``x @ W_skip``: the SAE's reconstruction, a transcoder's
        prediction of its target hook."""
        return skip_term(self.params, x, self.decode(self.encode(x)))


def require_same_model(sae: LoadedSAE, model_hash: str, model_name: str, field: str, allow: bool) -> None:
    """Refuses to apply ``sae`` to activations of another model than the one it was trained on.

    jaxinterp runs and their exports record the source model's fingerprint
    (``metadata["jaxinterp_model_hash"]``); an SAE from another tool records none, so nothing can be
    checked and it is accepted. Activations of another model with the same width and hook name
    would give meaningless numbers with exit status 0.

    Args:
      sae: the SAE.
      model_hash, model_name: the model whose activations it is about to read (a store's manifest
        ``model_hash``/``model_name``, or ``ModelFiles.fingerprint()``/``.name``).
      field: the config field named in the error.
      allow: the user's explicit override (``allow_other_model``).

    Raises:
      ConfigError: the fingerprints differ and ``allow`` is false (names ``field`` and both models).
    """
    require_trained_on(sae.sae.metadata.get("jaxinterp_model_hash"), sae.sae.metadata.get("model_name"), model_hash,
                       model_name, field, allow)


def require_trained_on(trained_hash: str | None, trained_name: str | None, model_hash: str, model_name: str,
                       field: str, allow: bool, what: str = "SAE") -> None:
    """:func:`require_same_model` from the fingerprint and name a dictionary records (``None``: unknown,
    accepted), for dictionaries that are no :class:`LoadedSAE` (a CLT, a crosscoder: their run's ``source``)."""
    if allow or not trained_hash or trained_hash == model_hash:
        return
    raise ConfigError(f"config field '{field}': the {what} was trained on {trained_name!r} "
                      f"(fingerprint {trained_hash}), not on {model_name!r} (fingerprint {model_hash}); "
                      "pass --config.allow_other_model=true to use it anyway")


def is_run_directory(path: str | Path | epath.Path) -> bool:
    """Whether ``path`` is a ``jaxinterp train`` run directory (``cfg.json`` listing its SAEs)."""
    run = location(path)
    cfg = run / "cfg.json"
    return cfg.is_file() and (run / "checkpoints").is_dir() and "saes" in read_json(cfg, "run config")


def loaded_from_trained(trained: TrainedSAE) -> LoadedSAE:
    """The :class:`LoadedSAE` of a trained run's SAE (normalisation folded in, raw activations)."""
    if trained.config["architecture"] == "crosscoder":  # its own portable form (export/crosscoder.py)
        sae = portable_crosscoder(trained)
        return LoadedSAE("run", sae, *to_crosscoder(sae))
    sae = portable_from_trained(trained)
    return LoadedSAE("run", sae, *to_jaxinterp(sae))


def detect_format(path: str | Path | epath.Path) -> str:
    """``run``, ``crosscoder``, ``saelens``, ``sparsify`` or ``npz``, from the files at ``path``.

    A jaxinterp run directory is ``run``; a directory with ``crosscoder.safetensors`` is ``crosscoder``;
    a ``.npz`` file or a directory with ``params.npz`` is Gemma-Scope style; a directory with
    ``sae_weights.safetensors`` is SAELens; one with ``sae.safetensors``, or whose subdirectories
    hold one, is sparsify.

    Raises:
      FileNotFoundError: ``path`` does not exist or holds none of these.
    """
    path = location(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir() and is_run_directory(path):
        return "run"
    if path.is_file():
        if path.suffix == ".npz":
            return "npz"
        raise FileNotFoundError(f"{path} is a file but not a .npz; pass an SAE directory")
    if (path / "params.npz").exists():
        return "npz"
    if (path / WEIGHTS_FILE).exists():
        return CROSSCODER_FORMAT
    if (path / "sae_weights.safetensors").exists():
        return "saelens"
    if (path / "sae.safetensors").exists() or hookpoint_dirs(path):
        return "sparsify"
    raise FileNotFoundError(f"{path} is not an SAE export: expected sae_weights.safetensors (SAELens), "
                            f"sae.safetensors or <hookpoint>/sae.safetensors (sparsify), or params.npz (Gemma Scope)")


def load_sae(path: str | Path | epath.Path, fmt: str = "", name: str = "") -> LoadedSAE:
    """Loads the SAE at ``path`` (format detected by :func:`detect_format` unless ``fmt`` names it).

    A run directory gives SAE ``name`` (default: its only one) at its newest checkpoint, with any
    input normalisation folded in, so every loaded SAE acts on raw activations.

    Example::

        sae = load_sae("exports/topk_saelens")      # or a run directory, a sparsify dir, params.npz, a URL
        x_hat = sae.decode(sae.encode(x))

    Raises:
      FileNotFoundError: no SAE at ``path``.
      ValueError: an unknown ``fmt``, or an SAE jaxinterp cannot represent (the message says why).
    """
    fmt = fmt or detect_format(path)
    if fmt == "run":
        from jaxinterp.runs import load_trained  # orbax is heavy; importing export needs none of it

        return loaded_from_trained(load_trained(str(path), name))
    if fmt == CROSSCODER_FORMAT:
        with local_copy(location(path)) as local:
            sae = read_crosscoder(local)
        return LoadedSAE(fmt, sae, *to_crosscoder(sae))
    if fmt not in READERS:
        raise ValueError(f"unknown SAE format {fmt!r}; choose one of run, {CROSSCODER_FORMAT}, {', '.join(READERS)}")
    with local_copy(location(path)) as local:  # the readers read local files
        sae = READERS[fmt](local)
    architecture, params, arch_state = to_jaxinterp(sae)
    return LoadedSAE(fmt, sae, architecture, params, arch_state)
