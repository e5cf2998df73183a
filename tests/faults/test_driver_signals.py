"""Signals to the driver, driven from outside: a driver script runs in its own session, the test signals
it and then checks that every task process and every shared-memory segment of that driver is gone."""

from __future__ import annotations

import json
import os
import secrets
import signal
import time

import pytest

from procflow import LocalEnvironment
from procflow.runtime.communication.shm import SHM_DIR
from procflow.runtime.communication.shm_owner import driver_key
from procflow.runtime.job_monitor import JobMonitor
from procflow.testing import DriverProcess, Endless, descendants, own_segments, wait_gone, wait_until

pytestmark = pytest.mark.timeout(150)

# Runs an endless job under submit(); the sink prints "running" once records flow. On KeyboardInterrupt
# it reports what it still holds, then lets the interrupt end the interpreter (exit status 130).
DRIVER = """
import json, sys, time
from procflow import LocalEnvironment
from procflow.testing import AnnounceOnce, Endless, child_pids, mp_helper_pids, own_segments

env = LocalEnvironment("driver", env_dir=sys.argv[1], start_method=sys.argv[2])
env.from_source(Endless, name="src").map(lambda r: r, parallelism=2, name="map").sink(AnnounceOnce, name="sink")
try:
    env.submit()
except KeyboardInterrupt as exc:
    print(json.dumps({"interrupted": repr(exc), "status": env.job.status, "t": time.monotonic(),
                      "children": sorted(child_pids() - mp_helper_pids()), "segments": sorted(own_segments())}),
          flush=True)
    raise
"""


# The same job submitted from a thread that ends at once: the tasks must outlive that thread, and still
# end with the driver (the kernel's parent-death signal follows the forking thread, issue 22.8).
DRIVER_FROM_THREAD = """
import sys, threading
from procflow import LocalEnvironment
from procflow.testing import AnnounceOnce, Endless

env = LocalEnvironment("driver", env_dir=sys.argv[1], start_method=sys.argv[2])
env.from_source(Endless, name="src").map(lambda r: r, parallelism=2, name="map").sink(AnnounceOnce, name="sink")
submitter = threading.Thread(target=env.submit, kwargs={"autostop": False})
submitter.start()
submitter.join()
try:
    env.job.wait()
finally:
    env.close()
"""



def start_driver(env_dir: str, start_method: str = "fork", script: str = DRIVER,
                 ) -> tuple[DriverProcess, set[int], set[str]]:
    driver = DriverProcess(script, env_dir, start_method)
    try:
        driver.expect("running", timeout=90)   # generous: spawn start-up on a loaded 2-core machine
        tasks = descendants(driver.pid)
        segments = own_segments(driver.pid)
        assert len(tasks) >= 3 and segments, "the running job should hold processes and segments"
    except BaseException:
        driver.close()
        raise
    return driver, tasks, segments


@pytest.mark.parametrize("signum, to_group", [
    (signal.SIGINT, False),
    (signal.SIGINT, True),    # what a terminal's Ctrl-C does: the whole foreground process group
    (signal.SIGTERM, False),
    (signal.SIGHUP, False),   # a closed terminal (issue 23.5: the driver died and left its segments)
    (signal.SIGHUP, True),    # a shell hanging up its jobs: the tasks get it too, and must leave it to the driver
])
def test_interrupting_the_driver_stops_the_job_and_frees_everything(env_dir, signum, to_group):
    driver, tasks, _ = start_driver(env_dir)
    with driver:
        sent = time.monotonic()
        if to_group:
            os.killpg(driver.pid, signum)
        else:
            os.kill(driver.pid, signum)
        report = json.loads(driver.expect("{", timeout=10))
        assert report["t"] - sent < 2.0, "KeyboardInterrupt must leave submit() within 2 s"
        assert report["interrupted"].startswith("KeyboardInterrupt")
        assert report["status"] in ("stopped", "killed")
        assert report["children"] == [] and report["segments"] == []
        # An uncaught KeyboardInterrupt ends Python by SIGINT: a shell shows exit code 130.
        assert driver.wait(10) == -signal.SIGINT
    assert wait_gone(tasks, 5) == set()
    assert own_segments(driver.pid) == set()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_while_the_job_starts_stops_it_as_a_running_job(env_dir, monkeypatch, signum):
    # The monitor thread may release the sources before Thread.start() returns in the driver: a signal
    # in that window must still find env.job set, and stop the job like any running one.
    start_monitor = JobMonitor.start_monitor

    def start_then_interrupt(self, name):
        start_monitor(self, name)
        os.kill(os.getpid(), signum)

    monkeypatch.setattr(JobMonitor, "start_monitor", start_then_interrupt)
    env = LocalEnvironment("starting", env_dir=env_dir)
    env.from_source(Endless).map(lambda r: r, parallelism=2).sink(lambda r: None)
    before = signal.getsignal(signum)
    with pytest.raises(KeyboardInterrupt):
        env.submit()
    assert env.job is not None and env.job.status in ("stopped", "killed")
    assert signal.getsignal(signum) is before
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) & {signal.SIGINT, signal.SIGTERM} == set()


@pytest.mark.timeout(30)
def test_ctrl_c_still_interrupts_a_job_run_inline(env_dir):
    # The inline executor runs the whole job inside submit()'s start: holding interrupts there would
    # make an endless inline job impossible to stop.
    def interrupt_at_100(r):
        if r == 100:
            os.kill(os.getpid(), signal.SIGINT)
        return r

    env = LocalEnvironment("inline", env_dir=env_dir, executor="inline")
    env.from_source(Endless).map(interrupt_at_100).sink(lambda r: None)
    with pytest.raises(KeyboardInterrupt):
        env.submit()


def test_sigterm_handler_is_restored_after_submit(env_dir):
    env = LocalEnvironment("t", env_dir=env_dir)
    env.from_batch(range(10)).sink(lambda r: None)
    before = signal.getsignal(signal.SIGTERM)
    env.submit()
    assert signal.getsignal(signal.SIGTERM) is before


def fake_segment(owner_key: str) -> str:
    name = f"{owner_key}_fake_in_{secrets.token_hex(6)}"
    fd = os.open(os.path.join(SHM_DIR, name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.close(fd)
    return name


@pytest.mark.parametrize("start_method, script", [
    ("fork", DRIVER),
    ("spawn", DRIVER),
    ("forkserver", DRIVER),          # the tasks' parent is the fork server (issue 22.7)
    ("fork", DRIVER_FROM_THREAD),    # the thread that forked the tasks is gone (issue 22.8)
], ids=["fork", "spawn", "forkserver", "fork-from-thread"])
def test_driver_killed_children_exit_and_orphans_are_swept(env_dir, start_method, script):
    driver, tasks, segments = start_driver(env_dir, start_method, script)
    with driver:
        killed = driver.signal(signal.SIGKILL)
        assert driver.wait(10) == -signal.SIGKILL
        # The tasks notice on their own (the parent-death signal, or their watch on the driver's pidfd).
        assert wait_gone(tasks, 5) == set(), "task processes outlived their killed driver"
        assert time.monotonic() - killed < 3.0
    # Whatever the dead driver left in /dev/shm is swept when the next job starts (possibly by another
    # process's job first). A segment whose owner lives (this process) is never touched.
    dead_owner = fake_segment(f"procflow_{driver.pid}_{secrets.token_hex(8)}")
    live_owner = fake_segment(driver_key())
    try:
        env = LocalEnvironment("next", env_dir=env_dir)
        env.from_batch(range(10)).sink(lambda r: None)
        env.submit()
        assert own_segments(driver.pid) == set()
        # The dead driver's lock file (see shm_owner.py) goes with its segments.
        assert [n for n in os.listdir(SHM_DIR) if n.startswith(f"procflow_{driver.pid}_")] == []
        assert not os.path.exists(os.path.join(SHM_DIR, dead_owner))
        assert os.path.exists(os.path.join(SHM_DIR, live_owner))
    finally:
        os.unlink(os.path.join(SHM_DIR, live_owner))
    assert segments  # they existed while the driver lived


def test_children_ignore_sigint(env_dir):
    """Ctrl-C reaches every process of the foreground group; only the driver acts on it."""
    from procflow.testing import Endless

    env = LocalEnvironment("t", env_dir=env_dir)
    env.from_source(Endless).map(lambda r: r).sink(lambda r: None)
    job = env.submit(autostop=False)
    try:
        pids = [m["pid"] for m in job.metrics.values()]
        for pid in pids:
            os.kill(pid, signal.SIGINT)
        # Nothing happens: observe that the job keeps running and records keep flowing.
        seen = job.metrics["sink_0"]["records_in"]
        assert wait_until(lambda: job.metrics["sink_0"]["records_in"] > seen, 10)
        assert job.running and job.status == "running"
    finally:
        env.stop()
    assert job.status == "stopped"


def test_a_driver_run_under_nohup_keeps_ignoring_sighup(env_dir, monkeypatch):
    # `nohup` ignores SIGHUP so that a job outlives its terminal: submit() must leave that alone.
    start_monitor = JobMonitor.start_monitor
    seen = []

    def start_then_hang_up(self, name):
        start_monitor(self, name)
        seen.append(signal.getsignal(signal.SIGHUP))
        os.kill(os.getpid(), signal.SIGHUP)

    monkeypatch.setattr(JobMonitor, "start_monitor", start_then_hang_up)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        env = LocalEnvironment("nohup", env_dir=env_dir)
        env.from_batch(range(1000)).map(lambda r: r, parallelism=2).sink(lambda r: None)
        assert env.submit().status == "finished"
        assert seen == [signal.SIG_IGN] and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
