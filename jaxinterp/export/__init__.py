"""Exporters from a run directory to the formats other tools load, and importers back.

Formats: SAELens v6 directories, EleutherAI sparsify / delphi hookpoint directories, Gemma-Scope
``params.npz``, circuit-tracer transcoder sets and cross-layer transcoders. Every format goes through one neutral
in-memory form, :class:`PortableSAE`.
"""

from jaxinterp.export.circuit_tracer import export_circuit_tracer
from jaxinterp.export.circuit_tracer_clt import export_circuit_tracer_clt, read_circuit_tracer_clt
from jaxinterp.export.load import (LoadedSAE, detect_format, is_run_directory, load_sae, loaded_from_trained,
                                  require_same_model)
from jaxinterp.export.npz import export_npz, read_npz
from jaxinterp.export.portable import (FORMAT_FAMILIES, PortableSAE, SAEFileError, portable_from_trained,
                                       require_format, to_jaxinterp)
from jaxinterp.export.run import FORMATS, export_run
from jaxinterp.export.saelens import SAELENS_VERSION, export_saelens, read_saelens, saelens_config
from jaxinterp.export.sparsify import export_sparsify, read_sparsify

__all__ = [
    "FORMATS",
    "FORMAT_FAMILIES",
    "LoadedSAE",
    "PortableSAE",
    "SAELENS_VERSION",
    "SAEFileError",
    "detect_format",
    "export_circuit_tracer",
    "export_circuit_tracer_clt",
    "export_npz",
    "export_run",
    "export_saelens",
    "export_sparsify",
    "is_run_directory",
    "load_sae",
    "loaded_from_trained",
    "portable_from_trained",
    "read_circuit_tracer_clt",
    "read_npz",
    "read_saelens",
    "read_sparsify",
    "require_format",
    "require_same_model",
    "saelens_config",
    "to_jaxinterp",
]
