"""Exporters from a run directory to the formats other tools load."""

from jaxinterp.export.run import FORMATS, export_run
from jaxinterp.export.saelens import SAELENS_VERSION, export_saelens, saelens_config

__all__ = ["FORMATS", "SAELENS_VERSION", "export_run", "export_saelens", "saelens_config"]

