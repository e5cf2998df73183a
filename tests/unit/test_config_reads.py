"""A default lives in one place, procflow.core.config.Config: no module restates one by reading the job
config with `.get(key, default)` (batch_bytes' default was once written in five places, and a copy can
drift from Config without any test noticing). The config dict every reader gets is complete, so they
index it: `config["flush_interval"]`.

Read from the source with `ast`: any `<something>.config.get(...)` or `config.get(...)` call.
"""

from __future__ import annotations

import ast
import pathlib

import procflow

PACKAGE = pathlib.Path(procflow.__file__).parent

def config_get_calls(path: pathlib.Path) -> list[int]:
    """Line numbers of `config.get(...)` / `x.config.get(...)` calls in one file."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            owner = node.func.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
            if name == "config":
                lines.append(node.lineno)
    return lines


def test_nothing_reads_the_job_config_with_a_default_of_its_own():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        calls = config_get_calls(path)
        if calls:
            found[rel] = calls
    assert not found, f"config read with .get(key, default) (index it instead: config[key]): {found}"


def test_the_scan_sees_a_default_read(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("x = ctx.config.get('batch_bytes', 1)\ny = config['queue']\nz = config.get('q')\n")
    assert config_get_calls(probe) == [1, 3]
