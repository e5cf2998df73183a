"""procflow/__init__ imports each public name on first use (issue 24): a worker process that unpickles one
runtime class (a Ray task actor, a spawned task) must not pay for the whole API, which cost each Ray
task actor 0.3-0.7 s of its start on 2 cores."""

from __future__ import annotations

import subprocess
import sys

from procflow.testing import repo_env

PROBE = """
import sys
import procflow.runtime.task.entry, procflow.core.functions
heavy = sorted(m for m in sys.modules if m.startswith(("procflow.api", "procflow.io.sinks", "multiprocess")))
print(",".join(heavy))
import procflow
assert procflow.LocalEnvironment.__module__ == "procflow.api.local_environment"
assert "LocalEnvironment" in dir(procflow)
"""


def test_a_runtime_import_leaves_the_api_unimported():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=repo_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported with the runtime: {out.stdout.strip()}"
