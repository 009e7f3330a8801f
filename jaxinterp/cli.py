"""The ``jaxinterp`` command: ``jaxinterp VERB [--config FILE[:variant]] [--config.field=value ...]``.

Thin by design: it loads and validates the config, then calls the same library function the
tests call. Errors a user can fix (config, hooks, stores, runs) and failures of the machine's state
(disk full, read-only or unwritable paths) print one line and exit 2; ``--debug`` (or
``JAXINTERP_DEBUG=1``) shows their tracebacks instead. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from jaxinterp import schemas
from jaxinterp.buffer import NonFiniteRowsError
from jaxinterp.config import ConfigError, Schema, flatten, load_config
from jaxinterp.export.portable import SAEFileError
from jaxinterp.extract.run import NonFiniteActivationError
from jaxinterp.faults import CorruptFileError, machine_error
from jaxinterp.models.hooks import HookError
from jaxinterp.store import StoreError

__all__ = ["main", "VERBS"]


class Verb(NamedTuple):
    summary: str
    default_config: str
    schema: Schema
    run: Callable[[Any], Any]


def _extract(cfg):
    from jaxinterp.extract import extract

    result = extract(cfg)
    return {"store": cfg["out"], "n_tokens": result.manifest["n_tokens"], "tokens_written": result.tokens_written,
            "tokens_per_s": result.tokens_per_s, "hooks": result.manifest["hook_names"]}


def _train(cfg):
    from jaxinterp.train import train

    return train(cfg)


def _plan(cfg):
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        import jax

        from jaxinterp.train.plan import PLANNING_DEVICES

        jax.config.update("jax_num_cpu_devices", PLANNING_DEVICES)  # the planning mesh's host CPU devices
    from jaxinterp.train.plan import format_plan, plan_run

    print(format_plan(plan_run(cfg)))


def _export(cfg):
    from jaxinterp.export import export_run

    written = export_run(cfg["run"], cfg["format"], cfg["out"], overwrite=cfg["overwrite"], sae=cfg["sae"],
                         partial=cfg["partial"], progress=True)
    return {"exported": str(written)}


def _eval(cfg):
    from jaxinterp.eval.run import evaluate_run

    return evaluate_run(cfg, progress=True)


def _interpret(cfg):
    from jaxinterp.interpret import interpret

    return interpret(cfg, progress=True)


def _probe(cfg):
    from jaxinterp.probe import run_probe

    return run_probe(cfg)


def _demo(cfg):
    from jaxinterp.demo import format_summary, run_demo

    print(format_summary(run_demo(cfg)))


VERBS = {
    "demo": Verb("run the whole pipeline on the embedded default (SmolLM2-135M over pydoc)",
                 "configs/demo.py", schemas.DEMO, _demo),
    "extract": Verb("run a source model over a corpus and write hooked activations to a store",
                    "configs/extract.py", schemas.EXTRACT, _extract),
    "train": Verb("train a sparse autoencoder from a store", "configs/train.py", schemas.TRAIN, _train),
    "plan": Verb("print a train config's memory per device on a mesh (params, optimizer, step), without the devices",
                 "configs/train.py", schemas.PLAN, _plan),
    "eval": Verb("evaluate a trained run on held-out activations", "configs/eval.py", schemas.EVAL, _eval),
    "export": Verb("export a trained run for other tools (SAELens, sparsify/delphi, Gemma-Scope npz, circuit-tracer)",
                   "configs/export.py", schemas.EXPORT, _export),
    "interpret": Verb("auto-interpretation of a trained SAE: delphi-layout latent cache, explanations, detection/fuzzing "
                      "scores, dashboards",
                      "configs/interpret.py", schemas.INTERPRET, _interpret),
    "probe": Verb("train probe sweeps (hooks x C x k) on pooled activations or SAE latents",
                  "configs/probe.py", schemas.PROBE, _probe),
}

# Problems the user can fix get one line; anything else is a bug and keeps its traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, HookError, StoreError, NonFiniteActivationError,
                                                 NonFiniteRowsError, FileNotFoundError, FileExistsError,
                                                 NotImplementedError, ImportError, TimeoutError, CorruptFileError,
                                                 SAEFileError)


def _fields_help(verb: Verb) -> str:
    defaults: dict[str, Any] = {}
    try:
        defaults = flatten(load_config(verb.default_config, [], verb.schema))
    except ConfigError:
        pass
    lines = [f"config fields (defaults from {verb.default_config}; override with --config.FIELD=VALUE):"]
    for name, field in verb.schema.fields.items():
        default = f" [default: {defaults[name]!r}]" if name in defaults else ""
        lines.append(f"  {name:<24} {field.doc}; {field.describe()}{default}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxinterp",
        description="Sparse autoencoders and probes on transformer activations, in JAX. "
                    "Start with `jaxinterp demo`; see `jaxinterp VERB --help` for each verb's config fields.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, verb in VERBS.items():
        p = sub.add_parser(name, help=verb.summary, description=verb.summary, epilog=_fields_help(verb),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", default=verb.default_config,
                       help=f"config file, optionally FILE:variant (default: {verb.default_config})")
        p.add_argument("--debug", action="store_true",
                       help="show the Python traceback of an error instead of its one line (also JAXINTERP_DEBUG=1)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxinterp`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, overrides = _parser().parse_known_args(argv)
    verb = VERBS[args.verb]
    debug = args.debug or os.environ.get("JAXINTERP_DEBUG", "") not in ("", "0")
    try:
        cfg = load_config(args.config, overrides, verb.schema, args.verb)
        from jaxinterp.distributed import initialize

        initialize(cfg["distributed"])  # a no-op for one process
        result = verb.run(cfg)
    except Exception as error:
        line = str(error) if isinstance(error, _USER_ERRORS) else machine_error(error)
        if debug or line is None:
            raise
        print(f"jaxinterp {args.verb}: error: {line}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
