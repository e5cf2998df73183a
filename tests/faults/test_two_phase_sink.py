"""A user sink with prepare_commit() / commit(token) (issue 20): its tokens are committed once their
checkpoint completes, while the job runs, and its tail once the job succeeds; across a SIGKILL of the
driver and a resume, what it committed holds every record exactly once."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from typing import Any

import pytest

from procflow import JobFailedError, LocalEnvironment, SinkFunction
from procflow.testing import DriverProcess, descendants, wait_gone
from tests.faults import checkpoint_pipeline as pipeline
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.timeout(240)


class TwoPhaseSink(SinkFunction):
    """Stages each transaction's records as a file; commit(token) renames it into `committed/`, and a
    token committed before (the driver may repeat one on resume) is left as it is: idempotent."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.pending: list[Any] = []

    def execute(self, record: Any) -> None:
        self.pending.append(record)

    def prepare_commit(self) -> str:
        token = f"{self.ctx.name}-{uuid.uuid4().hex}.json"
        with open(os.path.join(self.folder, "staged", token), "w", encoding="utf-8") as f:
            json.dump(self.pending, f)
        self.pending = []
        return token

    def commit(self, token: str) -> None:
        staged = os.path.join(self.folder, "staged", token)
        if os.path.exists(staged):
            os.replace(staged, os.path.join(self.folder, "committed", token))


def build(env: LocalEnvironment, inp: str, out: str, chained: bool = True) -> None:
    """The checkpoint pipeline, and a second source into the two-phase sink: in the source's task
    (`chained`: its tail token comes with its final snapshot) or behind a keyby (with Stopped)."""
    pipeline.build(env, inp, out)
    folder = os.path.join(out, "two_phase")
    for sub in ("staged", "committed"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    numbers = env.read_text(inp, parallelism=2, split_size=2000, name="lines2").map(pipeline.parse, parallelism=2)
    (numbers if chained else numbers.keyby(pipeline.key_of)).sink(TwoPhaseSink, folder, parallelism=2,
                                                                  name="two_phase")


def committed(out: str) -> list[Any]:
    folder = os.path.join(out, "two_phase", "committed")
    rows: list[Any] = []
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            rows += json.load(f)
    return sorted(rows)


DRIVER = """
import sys
from procflow import LocalEnvironment
from tests.faults.test_two_phase_sink import build

env = LocalEnvironment("ckpt", env_dir=sys.argv[1], checkpoint_dir=sys.argv[4],
                       config={"checkpoint_interval": 0.1})
build(env, sys.argv[2], sys.argv[3], sys.argv[5] == "chained")
print("running", flush=True)
env.submit()
print("finished", flush=True)
"""


@pytest.mark.parametrize("chained", [True, False])
def test_without_checkpoints_the_sink_commits_once_the_job_succeeds(env_dir, tmp_path, chained):
    inp = pipeline.write_input(str(tmp_path / "in"))
    out = str(tmp_path / "out")
    env = LocalEnvironment("two-phase", env_dir=env_dir)
    build(env, inp, out, chained)
    env.submit()
    assert committed(out) == list(range(pipeline.RECORDS))
    assert os.listdir(os.path.join(out, "two_phase", "staged")) == []


@pytest.mark.parametrize("chained", [True, False])
def test_committed_per_checkpoint_and_exactly_once_after_a_driver_kill_and_resume(env_dir, tmp_path, chained):
    inp = pipeline.write_input(str(tmp_path / "in"))
    out, checkpoint_dir = str(tmp_path / "out"), str(tmp_path / "ckpt")
    with DriverProcess(DRIVER, env_dir, inp, out, checkpoint_dir,
                       "chained" if chained else "keyed") as driver:
        driver.expect("running", timeout=90)
        # A completed checkpoint's tokens are committed while the job runs.
        wait_for(lambda: os.path.isdir(os.path.join(out, "two_phase")) and committed(out), 90,
                 "a commit of the two-phase sink")
        tasks = descendants(driver.pid)
        driver.signal(signal.SIGKILL)
        assert driver.wait(10) == -signal.SIGKILL, "the job ended before the kill: make it slower"
        assert wait_gone(tasks, 10) == set(), "task processes outlived their killed driver"
    assert 0 < len(committed(out)) < pipeline.RECORDS

    env = LocalEnvironment("ckpt-resume", env_dir=env_dir, checkpoint_dir=checkpoint_dir,
                           config={"checkpoint_interval": 0.1})
    build(env, inp, out, chained)
    env.submit(resume=True)
    assert committed(out) == list(range(pipeline.RECORDS))   # nothing lost, nothing twice
    assert pipeline.committed(out) == pipeline.expected()


def _fail_at_end(n: int) -> int:
    if n == 99:
        raise ValueError("the last record fails the job")
    return n


def test_a_failed_job_commits_no_token(env_dir, tmp_path):
    folder = str(tmp_path / "out" / "two_phase")
    for sub in ("staged", "committed"):
        os.makedirs(os.path.join(folder, sub))
    env = LocalEnvironment("two-phase-fails", env_dir=env_dir)
    env.from_batch(range(100)).map(_fail_at_end).keyby(pipeline.key_of).sink(TwoPhaseSink, folder, parallelism=2)
    with pytest.raises(JobFailedError, match="last record"):
        env.submit()
    assert committed(str(tmp_path / "out")) == []


# The driver-side sink's commit waits for this (the committer runs in this process): the test holds it.
_COMMIT_MAY_GO = threading.Event()


class SlowCommitSink(TwoPhaseSink):
    """A commit that takes as long as the test says: an upload, a database transaction."""

    def commit(self, token: str) -> None:
        assert _COMMIT_MAY_GO.wait(60), "the test never let the commit go"
        super().commit(token)


def _slow(n: int) -> int:
    time.sleep(0.002)   # about 6 s in all, far longer than the two checkpoints the test takes
    return n


def test_a_slow_commit_holds_up_no_checkpoint_and_tokens_commit_in_order(env_dir, tmp_path):
    folder = str(tmp_path / "out")
    for sub in ("staged", "committed"):
        os.makedirs(os.path.join(folder, "two_phase", sub))
    env = LocalEnvironment("slow-commit", env_dir=env_dir, checkpoint_dir=str(tmp_path / "ckpt"),
                           config={"checkpoint_interval": 3600.0})
    env.from_batch(range(3000), name="numbers").map(_slow, name="slow") \
        .sink(SlowCommitSink, os.path.join(folder, "two_phase"), name="two_phase")
    _COMMIT_MAY_GO.clear()
    job = env.submit(autostop=False)
    try:
        # Checkpoint 1's commit is blocked in the driver; checkpoints 1 and 2 complete all the same.
        assert job.checkpoint(timeout=60) == 1
        assert job.checkpoint(timeout=60) == 2
        assert committed(folder) == [], "a token was committed before the test let any commit go"
    finally:
        _COMMIT_MAY_GO.set()
    job.wait(120)
    assert job.status == "finished"
    assert committed(folder) == list(range(3000))
    assert os.listdir(os.path.join(folder, "two_phase", "staged")) == []


class RefusedCommitSink(TwoPhaseSink):
    def commit(self, token: str) -> None:
        raise PermissionError("the warehouse refused the transaction")


def test_a_commit_that_raises_fails_the_job_promptly_naming_the_sink_and_checkpoint(env_dir, tmp_path):
    folder = str(tmp_path / "out" / "two_phase")
    for sub in ("staged", "committed"):
        os.makedirs(os.path.join(folder, sub))
    env = LocalEnvironment("refused", env_dir=env_dir, checkpoint_dir=str(tmp_path / "ckpt"),
                           config={"checkpoint_interval": 0.1})
    env.from_batch(range(30_000), name="numbers").map(_slow, name="slow") \
        .sink(RefusedCommitSink, folder, name="two_phase")
    started = time.monotonic()
    with pytest.raises(JobFailedError, match=r"two_phase\.commit\(token\) of two_phase_0 at checkpoint \d+ failed: "
                                             r"PermissionError: the warehouse refused"):
        env.submit()
    assert time.monotonic() - started < 50, "the job ran on after its commit failed"   # 60 s of records
    assert committed(str(tmp_path / "out")) == []
