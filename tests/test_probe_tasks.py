"""Built-in probe tasks from the standard library's source: determinism, balance, labels re-derived."""

import ast
import collections
import io
import itertools
import json
import os
import subprocess
import sys
import sysconfig
import tokenize

import pytest

from jaxinterp.probe import tasks
from jaxinterp.probe.tasks import MAX_BRACKET_CHARS, MAX_STATEMENT_CHARS, STATEMENT_KINDS, TASKS, build_task

N_BRACKET = 600
N_STATEMENT = 400


@pytest.fixture(scope="module")
def brackets():
    return build_task("open_bracket", N_BRACKET, seed=3)


@pytest.fixture(scope="module")
def statements():
    return build_task("statement_kind", N_STATEMENT, seed=3)


@pytest.fixture(scope="module")
def stdlib_text():
    """Every standard-library .py file (outside site-packages), '\\n' line ends, joined."""
    root = sysconfig.get_paths()["stdlib"]
    parts = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in ("site-packages", "dist-packages", "__pycache__")]
        for name in names:
            if name.endswith(".py"):
                with open(os.path.join(directory, name), "rb") as handle:
                    parts.append(handle.read().decode("utf-8", "replace").replace("\r\n", "\n"))
    return "\n".join(parts)


def test_task_names():
    assert TASKS == ("open_bracket", "statement_kind")
    assert set(tasks.__all__) >= {"TASKS", "build_task", "write_jsonl"}


@pytest.mark.parametrize("name,n", [("open_bracket", 64), ("statement_kind", 80)])
def test_deterministic_and_seeded(name, n):
    first = build_task(name, n, seed=11)
    assert first == build_task(name, n, seed=11)
    assert first != build_task(name, n, seed=12)


def test_deterministic_across_processes(brackets, statements):
    """A fresh interpreter (other hash seed, cold caches) builds the same lists."""
    script = ("import json\n"
              "import jaxinterp.probe.tasks as module\n"
              f"print(json.dumps([module.build_task('open_bracket', {N_BRACKET}, seed=3), "
              f"module.build_task('statement_kind', {N_STATEMENT}, seed=3)]))\n")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout) == [brackets, statements]


def test_open_bracket_balanced_and_well_formed(brackets):
    assert len(brackets) == N_BRACKET
    assert all(set(example) == {"text", "label"} for example in brackets)
    assert collections.Counter(example["label"] for example in brackets) == {0: N_BRACKET // 2, 1: N_BRACKET // 2}
    assert all(type(example["label"]) is int for example in brackets)
    texts = [example["text"] for example in brackets]
    assert len(set(texts)) == len(texts)
    for text in texts:
        assert text.strip() and len(text) <= MAX_BRACKET_CHARS
        assert text.count("\n") <= 2
        assert text[-1] not in "()[]{} \t\n"  # the cut token is never a bracket; no trailing space
    # both classes are spread over texts of different shapes, not one length
    assert len({len(text) for text in texts}) > 50


def _local_depth(text):
    """Bracket depth at the end of ``text`` tokenized on its own (lines left-stripped so indentation
    cannot fail), or None when that tokenization is unreliable (the text starts inside a string...)."""
    source = "\n".join(line.lstrip(" \t") for line in text.split("\n"))
    depth = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.ERRORTOKEN:
                return None
            if tok.type == tokenize.OP and tok.string in ("(", "[", "{"):
                depth += 1
            elif tok.type == tokenize.OP and tok.string in (")", "]", "}"):
                depth -= 1
    except tokenize.TokenError as error:
        if "multi-line statement" not in str(error.args[0]):  # only "bracket still open at EOF" is fine
            return None
    except SyntaxError:
        return None
    return depth


def test_open_bracket_labels_follow_from_the_text_alone(brackets):
    """Texts start where no bracket is open, so re-tokenizing the text alone gives the label exactly."""
    checked = collections.Counter()
    for example in brackets:
        depth = _local_depth(example["text"])
        if depth is None:
            continue
        assert depth >= 0 and example["label"] == int(depth > 0), example
        checked[example["label"]] += 1
    # the check is not vacuous: most texts of both classes tokenize on their own
    assert min(checked.values()) >= 0.8 * N_BRACKET / 2


def test_texts_come_from_the_standard_library(brackets, statements, stdlib_text):
    for example in statements[:40]:
        assert example["text"] in stdlib_text, example
    for example in brackets[:40]:
        last_line = example["text"].split("\n")[-1].lstrip(" \t")
        assert last_line in stdlib_text, example


def test_statement_kind_balanced_and_parsed(statements):
    assert len(statements) == N_STATEMENT
    counts = collections.Counter(example["label"] for example in statements)
    assert counts == {kind: N_STATEMENT // len(STATEMENT_KINDS) for kind in STATEMENT_KINDS}
    texts = [example["text"] for example in statements]
    assert len(set(texts)) == len(texts)
    for example in statements:
        text = example["text"]
        assert text and text == text.strip() and "\n" not in text and len(text) <= MAX_STATEMENT_CHARS
        body = ast.parse(text).body  # independently: the text alone is one statement of that class
        assert len(body) == 1 and type(body[0]).__name__ == example["label"], example
        if example["label"] == "Expr":
            assert isinstance(body[0].value, ast.Call), example


def test_labels_depend_on_the_text_not_the_order(statements):
    """Examples are shuffled, not grouped by class."""
    labels = [example["label"] for example in statements]
    runs = sum(1 for a, b in itertools.pairwise(labels) if a != b)
    assert runs > len(labels) // 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="open_bracket.*statement_kind"):
        build_task("no_such_task", 10)
    with pytest.raises(ValueError, match="even"):
        build_task("open_bracket", 7)
    with pytest.raises(ValueError, match="multiple of 8"):
        build_task("statement_kind", 12)
    for n in (0, -8, 2.0, True):
        with pytest.raises(ValueError, match="positive integer"):
            build_task("statement_kind", n)


@pytest.mark.parametrize("name", TASKS)
def test_too_large_n(name):
    with pytest.raises(ValueError, match="too few examples"):
        build_task(name, 8 * 10**7)


@pytest.mark.parametrize("name", TASKS)
def test_too_little_material_after_a_scan(name, monkeypatch):
    """Files that cannot be read give no material: the error comes after the scan, with counts."""
    monkeypatch.setattr(tasks, "stdlib_files", lambda: tuple(f"missing/file_{i}.py" for i in range(50)))
    with pytest.raises(ValueError, match="too few examples.*found"):
        build_task(name, 16)


def test_write_jsonl(tmp_path, statements):
    path = tasks.write_jsonl(statements[:10], tmp_path / "sub" / "task.jsonl")
    assert isinstance(path, str)
    with open(path, encoding="utf-8") as handle:
        assert [json.loads(line) for line in handle] == statements[:10]
