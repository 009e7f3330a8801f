import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jaxinterp import schemas
from jaxinterp.config import ConfigError, Field, Schema, flatten, load_config, parse_overrides, validate

SHIPPED = {"extract": schemas.EXTRACT, "train": schemas.TRAIN, "export": schemas.EXPORT, "eval": schemas.EVAL,
           "probe": schemas.PROBE, "demo": schemas.DEMO}


def test_overrides_are_typed_and_applied():
    cfg = load_config("configs/train.py", ["--config.sae.k=64", "--config.lr", "3e-4", "--config.exclude_bos=false"],
                      schemas.TRAIN, "train")
    assert cfg.sae.k == 64 and cfg.lr == pytest.approx(3e-4) and cfg.exclude_bos is False
    with pytest.raises(AttributeError):  # frozen: stages cannot mutate it
        cfg.sae.k = 3


def test_variant_is_passed_to_get_config():
    assert load_config("configs/train.py:quick", [], schemas.TRAIN).steps == 100


@pytest.mark.parametrize("override, field, allowed", [
    ("--config.sae.k=abc", "sae.k", "an int >= 1"),
    ("--config.sae.k=0", "sae.k", "an int >= 1"),
    ("--config.sae.architecture=gatd", "sae.architecture", "one of 'topk', 'batch_topk'"),
    ("--config.holdout_fraction=0.9", "holdout_fraction", "in [0.0, 0.5]"),
    ("--config.exclude_bos=maybe", "exclude_bos", "true/false"),
])
def test_bad_values_name_the_field_and_allowed_values(override, field, allowed):
    with pytest.raises(ConfigError, match=f"'{re.escape(field)}'.*{re.escape(allowed)}"):
        load_config("configs/train.py", [override], schemas.TRAIN, "train")


def test_unknown_field_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown config field 'sae\.kk'.*valid fields: .*sae\.k,"):
        load_config("configs/train.py", ["--config.sae.kk=3"], schemas.TRAIN, "train")


def test_cross_field_constraint():
    with pytest.raises(ConfigError, match="sae.k.*must not exceed sae.n_latents"):
        load_config("configs/train.py", ["--config.sae.k=5000", "--config.sae.n_latents=4096"], schemas.TRAIN)


def test_config_file_with_unknown_key_is_rejected(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("import ml_collections\n"
                    "def get_config():\n"
                    "    return ml_collections.ConfigDict({'run': 'r', 'format': 'saelens', 'out': 'o',"
                    " 'overwrite': False, 'typo': 1})\n")
    with pytest.raises(ConfigError, match="unknown config field 'typo'"):
        load_config(str(path), [], schemas.EXPORT)


def test_parse_overrides_rejects_stray_arguments():
    assert parse_overrides(["--config.a.b=1", "--config.c", "2"]) == {"a.b": "1", "c": "2"}
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_overrides(["--steps=3"])


def test_every_shipped_config_validates():
    for spec, schema in [("configs/extract.py", schemas.EXTRACT), ("configs/train.py", schemas.TRAIN),
                         ("configs/export.py", schemas.EXPORT), ("configs/eval.py", schemas.EVAL),
                         ("configs/demo.py", schemas.DEMO), ("configs/demo.py:quick", schemas.DEMO),
                         ("configs/extract.py:quick", schemas.EXTRACT), ("configs/train.py:quick", schemas.TRAIN),
                         ("configs/probe.py", schemas.PROBE), ("configs/probe.py:quick", schemas.PROBE)]:
        load_config(spec, [], schema)


def test_cli_bad_value_is_one_line_naming_the_field():
    result = subprocess.run([sys.executable, "-m", "jaxinterp.cli", "train", "--config", "configs/train.py",
                             "--config.sae.n_latents=-5"], capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'sae.n_latents'" in lines[0] and "an int >= 1" in lines[0]


def test_cli_help_lists_fields():
    result = subprocess.run([sys.executable, "-m", "jaxinterp.cli", "train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "sae.n_latents" in result.stdout and "default" in result.stdout


def test_the_former_train_config_name_still_loads_the_same_config():
    old = load_config("configs/train_topk.py", {"sae.k": 16}, schemas.TRAIN, "train")
    assert old == load_config("configs/train.py", {"sae.k": 16}, schemas.TRAIN, "train")


@pytest.mark.parametrize("verb", sorted(SHIPPED))
def test_every_field_states_a_default_its_own_check_accepts(verb):
    schema = SHIPPED[verb]
    assert flatten(validate(schema.defaults(), schema)) == {path: f.default for path, f in schema.fields.items()}
    with pytest.raises(ConfigError, match="'steps' must be an int >= 1, got 0"):
        Schema({"steps": Field(int, "optimizer steps", minimum=1, default=0)})
    with pytest.raises(ConfigError, match="'out' must be a string, got None"):
        Schema({"out": Field(str, "where")})  # no default stated


def _assignments(tree: ast.AST) -> dict[str, tuple[object, int]]:
    """``config.a.b = <literal>`` statements of a get_config body outside its ``if variant`` blocks."""
    function = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "get_config")
    found = {}
    for statement in function.body:
        if isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Attribute):
            path = ast.unparse(statement.targets[0]).removeprefix("config.")
            found[path] = (ast.literal_eval(statement.value), statement.lineno)
    return found


@pytest.mark.parametrize("verb", sorted(SHIPPED))
def test_shipped_configs_start_from_the_schema_and_restate_no_default(verb):
    path = Path("configs") / f"{verb}.py"
    schema = SHIPPED[verb]
    defaults = flatten(schema.defaults())
    assigned = _assignments(ast.parse(path.read_text()))
    for field, (value, line) in assigned.items():
        assert field in schema.fields, f"{path}:{line} sets '{field}', not a field of the schema"
        assert value != defaults[field], f"{path}:{line} restates the schema's default {field}={value!r}"
    loaded = flatten(load_config(str(path), [], schema))
    assert {field: value for field, value in loaded.items() if value != defaults[field]} == {
        field: value for field, (value, _) in assigned.items()}


def test_a_config_file_of_your_own_needs_only_the_fields_it_changes(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("import ml_collections\n"
                    "def get_config():\n"
                    "    return ml_collections.ConfigDict({'store': 'stores/mine', 'sae': {'k': 16}})\n")
    cfg = load_config(str(path), ["--config.steps=50", "--config.sae.architecture=jumprelu"], schemas.TRAIN, "train")
    assert (cfg.store, cfg.sae.k, cfg.steps, cfg.sae.architecture) == ("stores/mine", 16, 50, "jumprelu")
    assert cfg.batch_size == schemas.TRAIN.fields["batch_size"].default
    assert cfg.sae.bandwidth == schemas.TRAIN.fields["sae.bandwidth"].default  # jumprelu's own field
