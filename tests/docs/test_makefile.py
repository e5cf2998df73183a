"""The Makefile's reader-facing targets, run against a fake venv (issue 23, item 3).

After `make run`, `procflow` and `python tour.py` failed for a newcomer: everything lives in .venv and
nothing said so. `make run` now ends with the hint and `make shell` opens a shell with .venv activated.

No test here may install anything, so `VENV=` points at a folder whose `bin/python` only echoes its
arguments: a recipe that ran pip through it would show up in the output, and install nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make"),
              pytest.mark.timeout(60)]


def executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fake_venv(tmp_path):
    """A venv lookalike, with the Makefile's install stamp in place."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    executable(venv / "bin" / "python", '#!/bin/sh\necho "fake python: $*"\n')
    executable(venv / "bin" / "procflow", '#!/bin/sh\necho "fake procflow: $*"\n')
    (venv / "bin" / "activate").write_text(f'export PATH="{venv}/bin:$PATH"\n')
    checksum = subprocess.run("cat setup.cfg pyproject.toml | cksum", shell=True, cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.split()[0]
    (venv / f".installed-{checksum}").touch()
    return venv


def make(*args: str, venv: Path, tmp_path: Path, stdin: str = "") -> subprocess.CompletedProcess:
    home = tmp_path / "home"   # no ~/.bashrc of the person running the tests
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "MAKEFLAGS": ""}
    env.pop("VIRTUAL_ENV", None)
    out = subprocess.run(["make", "-s", "-C", str(ROOT), *args, f"VENV={venv}"], input=stdin, env=env,
                         capture_output=True, text=True, timeout=30)
    assert "pip" not in out.stdout, f"make tried to install:\n{out.stdout}"
    return out


def test_run_ends_by_saying_where_procflow_is_installed(fake_venv, tmp_path):
    out = make("run", venv=fake_venv, tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "fake python: examples/wordcount.py"
    hint = " ".join(lines[1:])
    assert f". {fake_venv}/bin/activate" in hint and "make shell" in hint and f"{fake_venv}/bin/procflow" in hint


def test_shell_puts_the_venv_first_on_path(fake_venv, tmp_path):
    out = make("shell", venv=fake_venv, tmp_path=tmp_path, stdin="command -v procflow\nprocflow --help\nexit\n")
    assert out.returncode == 0, out.stderr
    assert f"{fake_venv}/bin/procflow" in out.stdout.splitlines()
    assert "fake procflow: --help" in out.stdout.splitlines()


def test_a_newer_setup_cfg_alone_does_not_reinstall(fake_venv, tmp_path):
    # A stamp older than setup.cfg and pyproject.toml, as after a git checkout or in a fresh worktree. Its
    # name already says whether their content changed; the old rule (stamp: setup.cfg pyproject.toml)
    # reinstalled on the mtime alone.
    (stamp,) = fake_venv.glob(".installed-*")
    os.utime(stamp, (0, 0))
    out = make("run", venv=fake_venv, tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    assert not any(line.startswith("fake python: -m pip") for line in out.stdout.splitlines())


@pytest.mark.timeout(120)
def test_what_make_run_runs_counts_words(tmp_path):
    """The example behind `make run` (the fake venv above only shows that make calls it), run for real on a
    shorter text."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "examples/wordcount.py", "--lines", "2000", "--top", "3"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr[-3000:]
    first, *top = out.stdout.splitlines()
    assert first.startswith("2,000 lines, 24,000 words in "), first
    assert len(top) == 3 and top[0].split()[0] == "stream", top   # the Zipf-like text's most common word


def test_example_files_runs_the_files_job(fake_venv, tmp_path):
    out = make("example-files", venv=fake_venv, tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["fake python: examples/files_job.py"]


@pytest.mark.timeout(120)
def test_what_make_example_files_runs_summarises_the_logs_it_generated(tmp_path):
    """The example behind `make example-files`, run for real on 0.3 MB of logs, keeping its output."""
    import procflow

    env_has = hasattr(procflow.LocalEnvironment, "read_jsonl") and hasattr(procflow.DataStream, "write_jsonl")
    if not env_has:
        pytest.skip("env.read_jsonl and stream.write_jsonl are not in this build (issue 18)")
    kept = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "examples/files_job.py", "--mb", "0.3", "--parallelism", "2",
                          "--top", "3", "--out", str(kept)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=100)
    assert out.returncode == 0, out.stderr[-3000:]
    generated, done, header, *top = out.stdout.splitlines()
    lines = int(generated.split()[1].replace(",", ""))
    assert generated.startswith("generated ") and lines > 1000, generated
    assert done.endswith("committed with _SUCCESS"), done
    assert header.split()[:2] == ["endpoint", "requests"] and len(top) == 3
    assert top[0].split()[0] == "/api/orders", top              # the most requested endpoint by design
    manifest = json.loads((kept / "_SUCCESS").read_text())
    rows = [json.loads(line) for part in manifest["files"] for line in (kept / part["name"]).read_text().splitlines()]
    assert manifest["records"] == len(rows) == 12                # one row per endpoint
    assert sum(row["requests"] for row in rows) == lines
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("procflow_files_job_")] == []   # logs gone
