"""`make serve` starts the job server with the Makefile's venv (run against a fake venv: nothing installs)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
@pytest.mark.timeout(60)
def test_make_serve_runs_procflow_serve(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text('#!/bin/sh\necho "fake python: $*"\n')
    python.chmod(0o700)
    checksum = subprocess.run("cat setup.cfg pyproject.toml | cksum", shell=True, cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.split()[0]
    (venv / f".installed-{checksum}").touch()
    out = subprocess.run(["make", "-s", "-C", str(ROOT), "serve", f"VENV={venv}", "SERVE_ARGS=--max-jobs 2"],
                         env={**os.environ, "MAKEFLAGS": ""}, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "fake python: -m procflow.cli serve --max-jobs 2" in out.stdout
