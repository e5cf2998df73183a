"""The server outlives its jobs' failures: a SIGKILLed driver, and a server that dies and restarts."""

from __future__ import annotations

import os
import signal

import pytest

from procflow.testing import own_segments, wait_until

from .conftest import wait_dead


@pytest.mark.timeout(180)
def test_a_sigkilled_driver_fails_its_job_and_the_server_carries_on(start_server):
    server = start_server("--max-jobs", "2", "--cores", "64")
    job_id = server.submit("crawl_long")
    job = server.wait_running(job_id)
    os.kill(job["pid"], signal.SIGKILL)
    waited = server.cli("wait", job_id)
    assert waited.returncode == 1, waited.stderr
    row = server.status(job_id)
    assert row["status"] == "failed" and "SIGKILL" in row["error"]
    # Its tasks went with it, and so did its shared memory (swept once its owner was gone).
    assert wait_until(lambda: not own_segments(job["pid"]), 30)
    # The server still answers and runs jobs.
    assert server.answers()
    after = server.submit("chatty")
    assert server.cli("wait", after).returncode == 0


@pytest.mark.timeout(180)
def test_a_restarted_server_shows_the_history_and_marks_running_jobs_lost(start_server):
    server = start_server("--max-jobs", "2", "--cores", "64")
    done = server.submit("chatty")
    assert server.cli("wait", done).returncode == 0
    running = server.submit("crawl_long")
    driver = server.wait_running(running)["pid"]
    # The server dies without a chance to clean up; its job's driver ends with it (a parent-death
    # signal asks it to stop), so nothing runs on unwatched.
    server.stop(signal.SIGKILL)
    assert wait_dead([driver])
    assert wait_until(lambda: not own_segments(driver), 30)

    again = start_server("--max-jobs", "2")
    assert "1 job(s) of a previous server marked lost" in again.log()
    rows = {row["id"]: row for row in again.call("list")}
    assert rows[done]["status"] == "succeeded"
    assert rows[running]["status"] == "lost" and rows[running]["finished_at"] is not None
    assert again.cli("wait", running).returncode == 1
    assert "lost" in again.cli("list").stdout


@pytest.mark.timeout(180)
def test_ctrl_c_on_serve_stops_its_jobs_gracefully_and_leaves_nothing(start_server):
    server = start_server("--max-jobs", "2", "--cores", "64")
    job_id = server.submit("forever")    # an unbounded source: a graceful stop ends it, nothing to drain

    def running_with_live() -> dict | None:
        job = server.call("status", id=job_id)
        return job if job["status"] == "running" and job["live"] and job["live"]["operators"] else None

    job = wait_until(running_with_live, 60)
    assert job, server.log()
    assert server.stop(signal.SIGINT) == 0
    assert wait_dead([job["pid"]])
    assert wait_until(lambda: not own_segments(job["pid"]), 30)
    again = start_server()
    row = again.status(job_id)
    # Stopped by the driver itself (sources ended, tasks drained), not killed after the grace period.
    assert row["status"] == "stopped" and row["exit_code"] == 130 and row["error"] == "stopped"
    assert row["summary"]["status"] == "stopped"
