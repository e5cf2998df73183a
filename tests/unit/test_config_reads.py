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

# Modules still to convert, by the helper who rewrites them (issue 17): remove an entry once it is clean.
PENDING = {"runtime/dispatcher.py", "backends/inline/executor.py", "backends/ray/dispatcher.py",
           "backends/ray/actor.py"}


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
        if rel in PENDING:
            continue
        calls = config_get_calls(path)
        if calls:
            found[rel] = calls
    assert not found, f"config read with .get(key, default) (index it instead: config[key]): {found}"


def test_the_pending_list_names_only_modules_that_still_need_it():
    stale = sorted(rel for rel in PENDING if not (PACKAGE / rel).exists() or not config_get_calls(PACKAGE / rel))
    assert not stale, f"remove from PENDING, these are gone or read the config by index now: {stale}"
