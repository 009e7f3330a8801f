"""``jaxinterp export``: the newest checkpoint of a run, in a format other tools load."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from jaxinterp.config import ConfigError
from jaxinterp.export.circuit_tracer import export_circuit_tracer
from jaxinterp.export.circuit_tracer_clt import export_circuit_tracer_clt
from jaxinterp.export.crosscoder import CROSSCODER_FORMAT, export_crosscoder, portable_crosscoder
from jaxinterp.export.dictionary_learning import export_dictionary_learning
from jaxinterp.export.npz import export_npz
from jaxinterp.export.portable import portable_from_trained, require_format
from jaxinterp.export.saelens import export_saelens
from jaxinterp.export.sparsify import export_sparsify
from jaxinterp.runs import load_trained, read_run_config

__all__ = ["FORMATS", "SET_FORMATS", "export_run", "transcoder_set_members"]

# format → writer(PortableSAE, out, overwrite) -> path written
FORMATS = {"saelens": export_saelens, "sparsify": export_sparsify, "npz": export_npz,
           "dictionary_learning": export_dictionary_learning}
# formats that hold a set of transcoders (one per layer), read from one or several runs
SET_FORMATS = ("circuit_tracer",)


def transcoder_set_members(runs: str, sae: str = "") -> list[tuple[str, str]]:
    """``[(run, sae name)]`` of a transcoder set: every SAE of each comma-separated run in ``runs``, or, with
    ``sae`` (comma-separated names), those members of one sweep run.

    Raises:
      ConfigError: ``sae`` with several runs, or a name the run does not have.
    """
    run_dirs = [run.strip() for run in runs.split(",") if run.strip()]
    names = [name.strip() for name in sae.split(",") if name.strip()]
    if not run_dirs:
        raise ConfigError("config field 'run': name the run(s) that hold the transcoder set")
    if names and len(run_dirs) > 1:
        raise ConfigError("config field 'sae': names members of one sweep run; with several runs, each run's SAEs "
                          "are all exported (leave 'sae' empty)")
    members = []
    for run in run_dirs:
        saes = read_run_config(run)["saes"]
        for name in names or saes:
            if name not in saes:
                raise ConfigError(f"config field 'sae': run {run} has no SAE {name!r}; it has {', '.join(saes)}")
            members.append((run, name))
    return members


def _model_layers(source: dict, partial: bool) -> int:
    """The source model's depth, which a complete set must cover; 0 with ``partial`` or no model recorded."""
    if partial or not source.get("model"):
        return 0
    from jaxinterp.models import resolve_model
    from jaxinterp.models.files import load_hf_config
    from jaxinterp.models.hooks import layer_count

    try:
        return layer_count(load_hf_config(resolve_model(source["model"])))
    except (FileNotFoundError, OSError) as error:
        raise ConfigError(f"config field 'partial': cannot read the depth of source model {source['model']!r} to "
                          f"check the set covers every layer ({error}); pass --config.partial=true to export "
                          "layers 0..n-1 anyway") from error


def _is_clt(run: str, sae: str) -> bool:
    return read_run_config(run)["saes"][sae]["architecture"] == "clt"


def export_run(run: str, fmt: str, out: str, overwrite: bool = False, sae: str = "", partial: bool = False,
               progress: bool = False) -> Path:
    """Exports SAE ``sae`` (default: the run's only one) at the newest checkpoint of ``run`` in
    format ``fmt`` to ``out``; returns the directory written (for sparsify ``<out>/<hookpoint>``).

    For a set format (``circuit_tracer``) ``run`` may list several runs and ``sae`` several members
    (:func:`transcoder_set_members`); the set must cover every layer of the source model unless ``partial``.
    A cross-layer transcoder (``sae.architecture=clt``) is exported alone, as circuit-tracer's
    ``cross_layer_transcoder``.
    ``progress`` shows a bar over a set's members as they are restored (one checkpoint each).

    Raises:
      ConfigError: an unknown format, or one that cannot hold this SAE's architecture or hook.
      FileExistsError: the target exists and ``overwrite`` is false.
    """
    if fmt in SET_FORMATS:
        members = transcoder_set_members(run, sae)
        if len(members) == 1 and _is_clt(*members[0]):  # a cross-layer transcoder is a set by itself
            trained = load_trained(*members[0])
            return export_circuit_tracer_clt(trained, out, overwrite,
                                             _model_layers(trained.run_config["source"], partial))
        trained = [load_trained(run_dir, name)
                   for run_dir, name in tqdm(members, unit="sae", desc="restore", disable=not progress)]
        n_layers = _model_layers(trained[0].run_config["source"], partial)
        return export_circuit_tracer([portable_from_trained(t) for t in trained], out, overwrite, n_layers)
    if fmt == CROSSCODER_FORMAT:  # its own portable form: sources stacked [S, d] (export/crosscoder.py)
        return export_crosscoder(portable_crosscoder(load_trained(run, sae)), out, overwrite=overwrite)
    if fmt not in FORMATS:
        raise ConfigError(f"config field 'format' must be one of "
                          f"{', '.join(map(repr, (*FORMATS, *SET_FORMATS, CROSSCODER_FORMAT)))}, "
                          f"got {fmt!r}")
    # Every process restores (orbax restores collectively); process 0 alone writes (atomic_directory).
    portable = portable_from_trained(load_trained(run, sae))
    require_format(portable, fmt)
    return FORMATS[fmt](portable, out, overwrite=overwrite)
