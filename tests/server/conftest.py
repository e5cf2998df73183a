"""A `procflow serve` subprocess per test, on a short private socket path and a tmp state folder, and the
client commands run against it as real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from procflow.server.protocol import Client, ServerUnavailable
from procflow.testing import pid_alive, repo_env, wait_until

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = str(ROOT / "tests" / "cli" / "pipelines.py")
STARTUP_S = 60


def procflow(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "procflow.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=repo_env())


class ServerProcess:
    """`procflow serve` in its own session (a test's signal reaches only what it aims at)."""

    def __init__(self, socket_path: str, state_dir: str, log_path: Path, *extra: str) -> None:
        self.socket = socket_path
        self.state_dir = state_dir
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "procflow.cli", "serve", "--socket", socket_path, "--state-dir", state_dir,
             *extra], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=repo_env(), start_new_session=True)
        if not wait_until(lambda: self.answers() or self.proc.poll() is not None, STARTUP_S) or not self.answers():
            self.close()
            raise AssertionError(f"the server did not start:\n{self.log()}")

    def answers(self) -> bool:
        try:
            with Client(self.socket, timeout=5) as client:
                return client.call("ping")["pid"] == self.proc.pid
        except (ServerUnavailable, OSError):
            return False

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return procflow(*args, "--socket", self.socket, timeout=timeout)

    def call(self, op: str, **args: Any) -> Any:
        with Client(self.socket) as client:
            return client.call(op, **args)

    def submit(self, target: str, *args: str) -> str:
        done = self.cli("submit", f"{PIPELINES}:{target}", *args)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def status(self, job_id: str) -> dict:
        done = self.cli("status", job_id, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def wait_running(self, job_id: str, timeout: float = 60) -> dict:
        """The job's details once its driver runs and has written live.json with a record through."""
        def ready() -> dict | None:
            job = self.call("status", id=job_id)
            live = job.get("live") or {}
            done = sum(op["records_out"] for op in live.get("operators", ()) if op["name"] == "work")
            return job if job["status"] == "running" and job["pid"] and done > 0 else None

        job = wait_until(ready, timeout)
        assert job, f"job {job_id} did not get going: {self.call('status', id=job_id)}\n{self.log()}"
        return job

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.proc.wait(timeout)

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.stop()
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        finally:
            self._log.close()


@pytest.fixture
def short_dir():
    """A private folder with a short path: a Unix socket path may have at most 107 bytes."""
    path = tempfile.mkdtemp(prefix="pf-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_server(tmp_path, short_dir):
    """start_server(*options) -> a ServerProcess; every one is stopped (SIGTERM) after the test."""
    servers: list[ServerProcess] = []

    def start(*extra: str, state_dir: str | None = None) -> ServerProcess:
        server = ServerProcess(os.path.join(short_dir, "s.sock"), state_dir or str(tmp_path / "state"),
                               tmp_path / f"serve-{len(servers)}.log", *extra)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def wait_dead(pids: list[int], timeout: float = 60) -> bool:
    return bool(wait_until(lambda: not any(pid_alive(p) for p in pids), timeout))
