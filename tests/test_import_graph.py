"""No import cycle inside the jaxinterp package, counting every import, not only the module-level ones.

Each module's source is parsed with ``ast`` (nothing is imported), and every ``import x`` and
``from x import y`` anywhere in it, at module level, inside ``if TYPE_CHECKING:`` or inside a
function, becomes an edge from that module to the jaxinterp module it names:

- ``from package import name`` is an edge to ``package.name`` when that is a submodule, else to
  ``package`` (its ``__init__``), whose attribute ``name`` is read;
- importing ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b`` first: an edge to each of
  them, unless the importer lives inside that package (then it has already begun to run);
- relative imports are resolved against the importer's package.

A function-level import does not fail at import time, but it still ties the two modules together
(``import a`` inside ``b`` and ``import b`` inside ``a`` means neither can be understood, tested
or moved alone), so it counts as a dependency like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import jaxinterp

PACKAGE = "jaxinterp"
ROOT = Path(jaxinterp.__file__).parent

# The package's layers: what each may never import, even indirectly. ``runs`` reads the run directories
# ``train`` writes and ``export`` / ``eval`` read trained SAEs through it, so it sits below all three.
FORBIDDEN = {
    "jaxinterp.runs": ("jaxinterp.train", "jaxinterp.export", "jaxinterp.eval", "jaxinterp.probe"),
}


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its ``__init__``)."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def imported_modules(module: str, path: Path, modules: set[str]) -> set[str]:
    """The jaxinterp modules ``module`` (its source at ``path``) imports anywhere in its body."""
    own_packages = set(_ancestors(module)) | ({module} if path.name == "__init__.py" else set())
    targets: set[str] = set()

    def add(target: str) -> None:
        """An edge to ``target`` plus the package ``__init__``s Python runs before it."""
        for ancestor in _ancestors(target):
            if ancestor in modules and ancestor not in own_packages:
                targets.add(ancestor)
        targets.add(target)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    add(alias.name)
                elif alias.name.startswith(PACKAGE + "."):
                    raise AssertionError(f"{module} imports {alias.name}, which is not a module of {PACKAGE}")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(module, path).split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source != PACKAGE and not source.startswith(PACKAGE + "."):
                continue
            if source not in modules:
                raise AssertionError(f"{module} imports from {source}, which is not a module of {PACKAGE}")
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    add(submodule)
                else:  # an attribute of ``source``: its body must have run, even from inside the package
                    add(source)
                    if source in own_packages:
                        targets.add(source)
    targets.discard(module)
    return targets


def import_graph() -> dict[str, set[str]]:
    """jaxinterp module → the jaxinterp modules it imports."""
    files = module_files()
    return {module: imported_modules(module, path, set(files)) for module, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None when the graph is acyclic (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append(iter(sorted(graph.get(child, ()))))
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for child in graph.get(todo.pop(), ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def test_the_parser_sees_every_kind_of_import(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import jaxinterp.store.paths\n"
        "from jaxinterp.models import hooks, ModelFiles\n"
        "from . import faults\n"
        "from .runs.trained import load_trained\n"
        "if TYPE_CHECKING:\n"
        "    from jaxinterp.buffer.loader import ActivationBuffer\n"
        "def late():\n"
        "    from jaxinterp.eval import run\n"
    )
    modules = set(module_files())
    assert imported_modules("jaxinterp.demo", source, modules) == {
        "jaxinterp.store", "jaxinterp.store.paths", "jaxinterp.models", "jaxinterp.models.hooks",
        "jaxinterp.faults", "jaxinterp.runs", "jaxinterp.runs.trained", "jaxinterp.buffer",
        "jaxinterp.buffer.loader", "jaxinterp.eval", "jaxinterp.eval.run",
    }
    # inside its own package a submodule import needs no __init__, an attribute import does
    source.write_text("from jaxinterp.models import hooks\nfrom . import layers\nfrom .files import ModelFiles\n")
    assert imported_modules("jaxinterp.models.weights", source, modules) == {
        "jaxinterp.models.hooks", "jaxinterp.models.layers", "jaxinterp.models.files"}
    source.write_text("from jaxinterp.models import ModelFiles\nfrom .. import faults\n")
    assert imported_modules("jaxinterp.models.weights", source, modules) == {"jaxinterp.models", "jaxinterp.faults"}


def test_find_cycle_names_the_loop():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_in_jaxinterp():
    graph = import_graph()
    assert "jaxinterp.models.hooks" in graph and graph["jaxinterp.models"]  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in jaxinterp: " + " -> ".join(cycle)


def test_layers_import_nothing_above_them():
    graph = import_graph()
    for package, above in FORBIDDEN.items():
        assert package in graph, f"{package} is gone: update FORBIDDEN"
        for module in (m for m in graph if m == package or m.startswith(package + ".")):
            bad = sorted(m for m in reachable(graph, module) if any(m == a or m.startswith(a + ".") for a in above))
            assert not bad, f"{module} imports {', '.join(bad)} (directly or indirectly)"


def test_reachable_follows_indirect_imports():
    assert reachable({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a"}}, "a") == {"b", "c"}
