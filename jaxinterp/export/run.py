"""``jaxinterp export``: the newest checkpoint of a run, in a format other tools load."""

from __future__ import annotations

from pathlib import Path

from jaxinterp.config import ConfigError
from jaxinterp.export.dictionary_learning import export_dictionary_learning
from jaxinterp.export.npz import export_npz
from jaxinterp.export.portable import portable_from_trained, require_format
from jaxinterp.export.saelens import export_saelens
from jaxinterp.export.sparsify import export_sparsify
from jaxinterp.runs import load_trained

__all__ = ["FORMATS", "export_run"]

# format → writer(PortableSAE, out, overwrite) -> path written
FORMATS = {"saelens": export_saelens, "sparsify": export_sparsify, "npz": export_npz,
           "dictionary_learning": export_dictionary_learning}


def export_run(run: str, fmt: str, out: str, overwrite: bool = False, sae: str = "") -> Path:
    """Exports SAE ``sae`` (default: the run's only one) at the newest checkpoint of ``run`` in
    format ``fmt`` to ``out``; returns the directory written (for sparsify ``<out>/<hookpoint>``).

    Raises:
      ConfigError: an unknown format, or one that cannot hold this SAE's architecture or hook.
      FileExistsError: the target exists and ``overwrite`` is false.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"config field 'format' must be one of {', '.join(map(repr, FORMATS))}, got {fmt!r}")
    # Every process restores (orbax restores collectively); process 0 alone writes (atomic_directory).
    portable = portable_from_trained(load_trained(run, sae))
    require_format(portable, fmt)
    return FORMATS[fmt](portable, out, overwrite=overwrite)
