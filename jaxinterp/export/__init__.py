"""Exporters from a run directory to the formats other tools load."""

from jaxinterp.export.saelens import SAELENS_VERSION, export_saelens, saelens_config

__all__ = ["SAELENS_VERSION", "export_saelens", "saelens_config", "export_run"]


def export_run(run: str, fmt: str, out: str, overwrite: bool = False):
    """Exports the newest checkpoint of ``run`` in format ``fmt`` to ``out``; returns the path."""
    from jaxinterp.train.trained import load_trained

    if fmt != "saelens":
        raise ValueError(f"config field 'format' must be one of 'saelens', got {fmt!r}")
    return export_saelens(load_trained(run), out, overwrite=overwrite)
