"""Configs: Python files whose ``get_config()`` returns an ``ml_collections.ConfigDict``.

A config is loaded from ``path/to/config.py`` (or ``path/to/config.py:variant``, passed to
``get_config(variant)`` as in big_vision), then ``--config.a.b=value`` overrides are applied, and
the result is checked against the verb's schema: unknown fields, ill-typed values and values
outside their allowed set fail with a :class:`ConfigError` that names the field.

Example::

    cfg = load_config("configs/train.py", ["--config.sae.k=64"], TRAIN_SCHEMA)
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

__all__ = [
    "ConfigError",
    "check_field",
    "Field",
    "Schema",
    "load_config",
    "validate",
    "flatten",
    "as_dict",
    "config_search_path",
    "HOOK_LIST",
]


class ConfigError(ValueError):
    """A config problem; the message names the offending field."""


@dataclasses.dataclass(frozen=True)
class Field:
    """One leaf of a schema.

    Attributes:
      kind: the Python type of the value (``int``, ``float``, ``str``, ``bool``).
      doc: one line shown by ``jaxinterp VERB --help``.
      choices: allowed values, if the set is closed.
      minimum: smallest allowed value for numbers.
      maximum: largest allowed value for numbers.
      check: extra predicate with a description of what it accepts, e.g. ``(fn, "a hook list")``.
      default: the field's value when a config file does not set it. Stated here once: the shipped
        ``configs/*.py`` start from :meth:`Schema.defaults` and set only what their job changes.
    """

    kind: type
    doc: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    check: tuple[Callable[[Any], bool], str] | None = None
    default: Any = None

    def describe(self) -> str:
        """What values the field accepts, in words."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        text = {int: "an int", float: "a float", str: "a string", bool: "true/false"}[self.kind]
        if self.minimum is not None and self.maximum is not None:
            text += f" in [{self.minimum}, {self.maximum}]"
        elif self.minimum is not None:
            text += f" >= {self.minimum}"
        elif self.maximum is not None:
            text += f" <= {self.maximum}"
        if self.check is not None:
            text += f" ({self.check[1]})"
        return text


@dataclasses.dataclass(frozen=True)
class Schema:
    """The fields a verb accepts, plus cross-field constraints ``(fields, predicate, message)``.

    ``extra(flat)`` adds fields that depend on the config's own values (the fields of the
    architecture ``sae.architecture`` names by dotted path). A config that omits a field gets its
    ``default``; every field's default must pass the field's own check.
    """

    fields: Mapping[str, Field]
    constraints: Sequence[tuple[tuple[str, ...], Callable[..., bool], str]] = ()
    extra: Callable[[Mapping[str, Any]], Mapping[str, Field]] | None = None

    def __post_init__(self) -> None:
        for path, field in self.fields.items():
            check_field(path, field, field.default)

    def defaults(self) -> ml_collections.ConfigDict:
        """A config with every field at its default: where a ``configs/*.py`` ``get_config()`` starts."""
        return ml_collections.ConfigDict(_unflatten({path: field.default for path, field in self.fields.items()}))

    def all_fields(self, flat: Mapping[str, Any]) -> dict[str, Field]:
        """:attr:`fields` plus the :attr:`extra` fields of the flat config ``flat``."""
        return {**self.fields, **(self.extra(flat) if self.extra else {})}


def _is_hook_list(value: str) -> bool:
    return all(part.strip() for part in value.split(","))


HOOK_LIST = (_is_hook_list, "comma-separated TransformerLens hook names")


def flatten(config: ml_collections.ConfigDict | Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted-path view of a nested config: ``{"sae.k": 32, ...}``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict, Mapping)):
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def as_dict(config: Mapping[str, Any]) -> dict[str, Any]:
    """A plain nested ``dict`` copy of a (frozen) config, e.g. for JSON."""
    return _unflatten(flatten(config))


def _coerce(path: str, field: Field, value: Any) -> Any:
    """Turns a command-line string (or a config value) into the field's type, or names the field."""
    bad = ConfigError(f"config field '{path}' must be {field.describe()}, got {value!r}")
    if field.kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise bad
    if field.kind is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                raise bad from None
        raise bad
    if field.kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if not isinstance(value, str):
        raise bad
    return value


def check_field(path: str, field: Field, value: Any) -> Any:
    """``value`` coerced to ``field``'s type and checked, or a :class:`ConfigError` naming ``path``."""
    typed = _coerce(path, field, value)
    _check(path, field, typed)
    return typed


def _check(path: str, field: Field, value: Any) -> None:
    bad = ConfigError(f"config field '{path}' must be {field.describe()}, got {value!r}")
    if field.choices is not None and value not in field.choices:
        raise bad
    if field.minimum is not None and value < field.minimum:
        raise bad
    if field.maximum is not None and value > field.maximum:
        raise bad
    if field.check is not None and not field.check[0](value):
        raise bad


def validate(config: ml_collections.ConfigDict, schema: Schema, verb: str = "") -> ml_collections.FrozenConfigDict:
    """Checks every field of ``config`` against ``schema`` and returns a frozen, type-correct copy.

    Raises:
      ConfigError: on an unknown field, a wrong type, a value outside its allowed set, or a failed
        cross-field constraint; the message names the field. A field the config omits gets its default.
    """
    flat = flatten(config)
    where = f" for `jaxinterp {verb}`" if verb else ""
    fields = schema.all_fields(flat)
    for path in flat:
        if path not in fields:
            raise ConfigError(
                f"unknown config field '{path}'{where}; valid fields: {', '.join(sorted(fields))}"
            )
    for path, field in fields.items():
        flat.setdefault(path, field.default)
    typed = {}
    for path, value in flat.items():
        field = fields[path]
        typed[path] = check_field(path, field, value)
    for names, predicate, message in schema.constraints:
        if not predicate(*(typed[n] for n in names)):
            raise ConfigError(f"config field '{names[0]}': {message} (got " + ", ".join(
                f"{n}={typed[n]!r}" for n in names) + ")")
    return ml_collections.FrozenConfigDict(_unflatten(typed))


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for path, value in flat.items():
        node = nested
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def config_search_path() -> list[Path]:
    """Where shipped configs live: the repo's ``configs/`` (editable install) or the wheel's copy."""
    package = Path(__file__).resolve().parent
    return [package / "_configs", package.parent / "configs"]


def _resolve_config_path(spec: str) -> tuple[Path, str | None]:
    path_text, _, variant = spec.partition(":")
    path = Path(path_text)
    if not path.exists() and not path.is_absolute():
        for root in config_search_path():
            candidate = root / (path.name if path.parent == Path("configs") else path)
            if candidate.exists():
                path = candidate
                break
    if not path.exists():
        raise ConfigError(f"config file '{path_text}' does not exist")
    return path, variant or None


def _read_config_file(path: Path, variant: str | None) -> ml_collections.ConfigDict:
    module_spec = importlib.util.spec_from_file_location(f"jaxinterp_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file '{path}' has no get_config() function")
    return module.get_config(variant) if variant is not None else module.get_config()


def parse_overrides(args: Sequence[str]) -> dict[str, str]:
    """``["--config.a.b=1", "--config.c", "2"]`` → ``{"a.b": "1", "c": "2"}``."""
    overrides: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--config."):
            raise ConfigError(f"unexpected argument '{arg}'; overrides look like --config.field=value")
        key, eq, value = arg[len("--config."):].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise ConfigError(f"config field '{key}' was given no value")
            value = args[i + 1]
            i += 1
        overrides[key] = value
        i += 1
    return overrides


def load_config(
    spec: str, overrides: Sequence[str] | Mapping[str, Any], schema: Schema, verb: str = ""
) -> ml_collections.FrozenConfigDict:
    """Loads ``spec`` (``path.py`` or ``path.py:variant``), applies overrides, validates.

    Args:
      spec: config file path, optionally with ``:variant`` passed to ``get_config``.
      overrides: ``--config.x.y=v`` command-line strings, or a ``{"x.y": v}`` mapping.
      schema: the verb's schema.
      verb: the CLI verb, for error messages.
    """
    path, variant = _resolve_config_path(spec)
    base = {**flatten(schema.defaults()), **flatten(_read_config_file(path, variant))}
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    where = f" for `jaxinterp {verb}`" if verb else ""
    later = {key: value for key, value in overrides.items() if key not in schema.fields}
    for key, value in overrides.items():
        if key not in later:
            base[key] = _coerce(key, schema.fields[key], value)
    fields = schema.all_fields(base) if later else schema.fields  # extra fields follow the overridden values
    for key, value in later.items():
        if key not in fields:
            raise ConfigError(
                f"unknown config field '{key}'{where}; valid fields: {', '.join(sorted(fields))}"
            )
        base[key] = _coerce(key, fields[key], value)
    return validate(ml_collections.ConfigDict(_unflatten(base)), schema, verb)
