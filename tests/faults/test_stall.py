"""The stall watch (config stall_timeout, issue 22 item 12): a task that stops making progress while records
wait for it (SIGSTOP, user code that never returns) fails the job within about stall_timeout, naming the
task, what it was doing and its process state; every process is then gone (the autouse leak check). A slow
task that keeps moving, and an idle job, are left alone."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from procflow import JobFailedError, LocalEnvironment
from procflow.testing import wait_until

pytestmark = pytest.mark.timeout(60)

STALL_S = 1.0
# Detection takes stall_timeout plus up to a quarter of it (the watch's period), plus cleanup (0.5 s grace
# before SIGKILL: a stopped process never handles SIGTERM); the rest is slack for a loaded machine.
PROMPT_S = STALL_S + 3.0


def stall_env(env_dir: str, queue: str = "shm", chaining: bool = False) -> LocalEnvironment:
    """Unchained by default: these tests stop one task of several, with rings between them (a chain runs
    its operators in one process; test_a_record_that_never_finishes_inside_a_chain covers that)."""
    return LocalEnvironment("stall", {"queue": queue, "stall_timeout": STALL_S, "ring_bytes": 64 << 10,
                                      "stop_timeout": 1.0, "chaining": chaining}, env_dir=env_dir)


def running_pid(job, task: str) -> int:
    """The pid of `task` once it has taken records in (read from the live counters)."""
    assert wait_until(lambda: job.metrics[task]["records_in"] > 0, 20), f"{task} never received a record"
    return job.metrics[task]["pid"]


@pytest.mark.parametrize("queue", ["shm", "mp"])
def test_a_stopped_task_fails_the_job_naming_it(env_dir, queue):
    env = stall_env(env_dir, queue)
    env.from_batch(range(10**8), name="src").map(lambda r: r, name="map").sink(lambda r: None, name="sink")
    job = env.submit(autostop=False)
    try:
        pid = running_pid(job, "map_0")
        os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        with pytest.raises(JobFailedError) as info:
            job.wait(timeout=PROMPT_S + 5)
        assert time.monotonic() - stopped < PROMPT_S
    finally:
        env.close()
    error = info.value
    message = str(error)
    assert error.task == "map_0"
    assert "stalled" in message and f"stall_timeout={STALL_S:g}" in message
    assert f"task map_0 (pid {pid})" in message
    assert "wait in its input" in message or "input queue holds records" in message
    assert "record(s) in" in message            # its last published counters
    assert "stopped (SIGSTOP" in message        # its process state
    # The tasks blocked behind it (the source, on a full ring) are not blamed.
    assert "task src_0" not in message
    assert job.status == "failed"


class HangsAt:
    """A map whose call never returns at record `at` (a deadlock in user code)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def __call__(self, record: int) -> int:
        if record == self.at:
            threading.Event().wait()
        return record


def test_a_record_that_never_finishes_fails_the_job(env_dir):
    env = stall_env(env_dir)
    env.from_batch(range(1000), name="src").map(HangsAt(10), name="map").sink(lambda r: None, name="sink")
    started = time.monotonic()
    with pytest.raises(JobFailedError) as info:
        env.submit()
    assert time.monotonic() - started < PROMPT_S + 2
    message = str(info.value)
    assert info.value.task == "map_0"
    assert "has not finished them" in message   # mid-batch: records taken out, not done
    assert "asleep (state S" in message


def test_a_record_that_never_finishes_inside_a_chain_fails_the_job_naming_its_operator(env_dir):
    env = stall_env(env_dir, chaining=True)
    env.from_batch(range(1000), name="src").map(HangsAt(10), name="map").sink(lambda r: None, name="sink")
    assert env.compile().chains["src_0"] == ("src_0", "map_0", "sink_0")
    started = time.monotonic()
    with pytest.raises(JobFailedError) as info:
        env.submit()
    assert time.monotonic() - started < PROMPT_S + 2
    message = str(info.value)
    assert info.value.task == "map_0" and "task map_0" in message
    assert "holds records from the operator before it in its chain and has not finished them" in message
    assert "task src_0" not in message and "task sink_0" not in message


class SlowSink:
    """A sink taking 0.3 s per record: slow, but every record moves."""

    def __call__(self, record: int) -> None:
        time.sleep(0.3)   # the work itself, not synchronisation


def test_a_slow_but_moving_task_is_not_stalled(env_dir):
    # The eight records reach the sink in one or two batches of up to 2.4 s, longer than stall_timeout,
    # and the sink emits nothing anyone could see: it must publish its progress while it works through
    # a batch.
    env = stall_env(env_dir)
    env.from_batch(range(8), name="src").sink(SlowSink(), name="sink")
    job = env.submit()
    assert job.status == "finished"
    assert job.metrics["sink_0"]["records_in"] == 8


def test_an_idle_job_is_not_stalled(env_dir):
    # Nothing waits anywhere while the source is idle: no stall, however long that lasts. The bounded
    # branch ends first: its finished tasks took their last records out and never asked for more, which
    # is not work left undone.
    def source():
        return None   # "nothing right now", forever: env.close() ends it

    env = stall_env(env_dir)
    env.from_source(source, name="src").map(lambda r: r, name="map").sink(lambda r: None, name="sink")
    env.from_batch(range(10), name="bounded").map(lambda r: r, name="map2").sink(lambda r: None, name="sink2")
    job = env.submit(autostop=False)
    try:
        with pytest.raises(TimeoutError):
            job.wait(timeout=STALL_S * 2.5)
        assert job.status == "running"
        assert job.metrics["sink2_0"]["finished"] > 0
    finally:
        env.close()
