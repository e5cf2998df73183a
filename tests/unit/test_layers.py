"""The layers import one way (DESIGN §4): core <- io <- graph <- runtime <- backends <- api <- the top-level
tools (cli, dashboard, testing). A module may import its own layer and those below it, never one above:
an upward import is how api and graph once formed a cycle, and how backends grew into each other.

Read from the source with `ast`, imports inside functions included (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import procflow

PACKAGE = pathlib.Path(procflow.__file__).parent
LAYERS = ("core", "io", "graph", "runtime", "backends", "api")
TOP = len(LAYERS)   # procflow/__init__.py, cli.py, dashboard.py, testing.py


def layer_of(module: str) -> int:
    """`procflow.runtime.task.entry` -> 2; a top-level module of procflow -> TOP."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else TOP


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: pathlib.Path, module: str | None = None) -> set[str]:
    """Every procflow module that `path` (the source of `module`) imports, absolute or relative."""
    tree = ast.parse(path.read_text(), str(path))
    here = (module or module_name(path)).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "procflow"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] == "procflow":
                found.add(base)
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def upward_imports(path: pathlib.Path, module: str) -> list[str]:
    return [f"{module} imports {target}" for target in sorted(imported_modules(path, module))
            if layer_of(target) > layer_of(module)]


def test_no_module_imports_a_layer_above_its_own():
    found = {line for path in SOURCES for line in upward_imports(path, module_name(path))}
    assert found == set()


@pytest.mark.parametrize("path", [p for p in SOURCES if "backends/ray" not in p.as_posix()],
                         ids=lambda p: module_name(p))
def test_only_the_ray_backend_imports_ray(path):
    tree = ast.parse(path.read_text(), str(path))
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
    assert "ray" not in names


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule must be able to fail: a graph module importing runtime and backends is caught, absolute
    and relative imports alike, inside a function too."""
    probe = tmp_path / "probe.py"
    probe.write_text("from procflow.runtime import dispatcher\n"
                     "def lazy():\n    from ..backends import local\n    from . import render\n")
    assert upward_imports(probe, "procflow.graph.probe") == [
        "procflow.graph.probe imports procflow.backends", "procflow.graph.probe imports procflow.runtime"]
