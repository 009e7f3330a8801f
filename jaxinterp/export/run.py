"""``jaxinterp export``: the newest checkpoint of a run, in a format other tools load."""

from __future__ import annotations

from pathlib import Path

from jaxinterp.config import ConfigError
from jaxinterp.export.saelens import export_saelens
from jaxinterp.train.trained import load_trained

__all__ = ["FORMATS", "export_run"]

FORMATS = {"saelens": export_saelens}


def export_run(run: str, fmt: str, out: str, overwrite: bool = False, sae: str = "") -> Path:
    """Exports SAE ``sae`` (default: the run's only one) at the newest checkpoint of ``run`` in
    format ``fmt`` to ``out``; returns the path."""
    if fmt not in FORMATS:
        raise ConfigError(f"config field 'format' must be one of {', '.join(map(repr, FORMATS))}, got {fmt!r}")
    return FORMATS[fmt](load_trained(run, sae), out, overwrite=overwrite)
