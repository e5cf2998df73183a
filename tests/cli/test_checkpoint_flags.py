"""`procflow run --checkpoint-dir DIR` and `--resume` (issue 20) through a real subprocess: a run killed
after a checkpoint continues with --resume, and its committed output is exactly an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from procflow.testing import descendants, wait_gone, wait_until
from tests.faults import checkpoint_pipeline as pipeline

ROOT = Path(__file__).resolve().parents[2]

# A target file for the command: the checkpoint tests' pipeline, its folders from the environment.
TARGET = """
import os
from tests.faults import checkpoint_pipeline


def build(env):
    checkpoint_pipeline.build(env, os.environ["CKPT_IN"], os.environ["CKPT_OUT"])
"""


def _command(target: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "procflow.cli", "run", f"{target}:build", *args]


def _env(inp: str, out: str) -> dict[str, str]:
    return {**os.environ, "CKPT_IN": inp, "CKPT_OUT": out, "PYTHONPATH": str(ROOT)}


def _complete(checkpoint_dir: str) -> list[str]:
    if not os.path.isdir(checkpoint_dir):
        return []
    return [n for n in os.listdir(checkpoint_dir) if os.path.exists(os.path.join(checkpoint_dir, n, "MANIFEST.json"))]


@pytest.mark.timeout(240)
def test_a_killed_run_continues_with_resume_and_commits_every_record_once(tmp_path):
    inp = pipeline.write_input(str(tmp_path / "in"))
    out, checkpoint_dir = str(tmp_path / "out"), str(tmp_path / "ckpt")
    target = tmp_path / "job.py"
    target.write_text(TARGET)
    flags = ["--checkpoint-dir", checkpoint_dir, "--checkpoint-interval", "0.1", "--env-dir", str(tmp_path / "env")]
    first = subprocess.Popen(_command(str(target), *flags), cwd=ROOT, env=_env(inp, out),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: _complete(checkpoint_dir) or first.poll() is not None, 120)
        tasks = descendants(first.pid)
        first.kill()
        assert first.wait(10) == -signal.SIGKILL, "the run ended before the kill: make the pipeline slower"
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    assert wait_gone(tasks, 15) == set(), "task processes outlived their killed driver"
    assert not os.path.exists(os.path.join(out, "records", "_SUCCESS"))

    again = subprocess.run(_command(str(target), *flags, "--resume"), cwd=ROOT,
                           env=_env(inp, out), capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    assert pipeline.committed(out) == pipeline.expected()
    assert _complete(checkpoint_dir) == [], "a finished run keeps no checkpoints"


@pytest.mark.timeout(60)
def test_checkpoint_flags_that_cannot_work_are_usage_errors(tmp_path):
    done = subprocess.run([sys.executable, "-m", "procflow.cli", "run", "tests/cli/pipelines.py:counted", "--resume",
                           "--env-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=50)
    assert done.returncode == 2
    assert "--resume continues from the checkpoints in --checkpoint-dir DIR" in done.stderr


def test_the_ray_backend_takes_the_checkpoint_folder(tmp_path):
    """`--backend ray --checkpoint-dir D` builds a RayEnvironment with D (Ray itself starts at submit)."""
    from procflow.cli import make_env

    env = make_env("ray", "ckpt", {}, str(tmp_path / "env"), "ckpt")
    try:
        assert env.backend == "ray" and env.checkpoint_dir == os.path.abspath("ckpt")
    finally:
        env.close()


@pytest.mark.timeout(60)
def test_run_help_names_the_checkpoint_flags():
    done = subprocess.run([sys.executable, "-m", "procflow.cli", "run", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=50)
    for flag in ("--checkpoint-dir", "--checkpoint-interval", "--resume"):
        assert flag in done.stdout
