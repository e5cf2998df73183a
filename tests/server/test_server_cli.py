"""The job server end to end through the `procflow` command: a queue bounded by --max-jobs, stop, a
failing job, wait's exit codes, logs, and nothing left behind once `procflow serve` is stopped."""

from __future__ import annotations

import signal

import pytest

from procflow.testing import own_segments, wait_until

from .conftest import procflow, wait_dead


@pytest.mark.timeout(300)
def test_queue_stop_failure_wait_and_logs_through_the_cli(start_server):
    # crawl_long's source has emitted all its records at once, so a graceful stop would drain them for
    # 100 s: the driver kills its tasks after --stop-grace minus 3 s, and the job counts as stopped.
    server = start_server("--max-jobs", "2", "--cores", "64", "--stop-grace", "6")
    first = server.submit("crawl_long")
    second = server.submit("crawl_long", "--name", "second")
    third = server.submit("chatty")
    # Two jobs run; the third waits for a free slot.
    assert server.status(third)["status"] == "queued"
    first_job = server.wait_running(first)
    assert server.status(second)["status"] in ("queued", "running")
    assert server.status(third)["status"] == "queued"
    listed = server.cli("list")
    assert listed.returncode == 0 and third in listed.stdout and "queued" in listed.stdout

    # Stop the first: it stops gracefully (exit code 130), and the third runs in its slot.
    stopped = server.cli("stop", first)
    assert stopped.returncode == 0, stopped.stderr
    assert server.cli("wait", first).returncode == 130
    assert server.cli("wait", third).returncode == 0
    first_row, third_row = server.status(first), server.status(third)
    assert first_row["status"] == "stopped" and first_row["exit_code"] == 130
    assert third_row["status"] == "succeeded" and third_row["started_at"] >= first_row["finished_at"]
    assert third_row["summary"]["completed_records"] == 5

    # A job whose function raises: failed, exit code 1, the error and remote traceback shown.
    failing = server.submit("failing")
    assert server.cli("wait", failing).returncode == 1
    shown = server.cli("status", failing)
    assert shown.returncode == 0
    assert "failed" in shown.stdout and "unlucky record 13" in shown.stdout and "Traceback" in shown.stdout
    assert "unlucky record 13" in server.status(failing)["error"]
    assert "failed" in server.cli("list").stdout

    # logs: a task's own log, and every log of the job.
    logs = server.cli("logs", third, "--task", "chatty_0")
    assert logs.returncode == 0, logs.stderr
    assert "chatty saw record 4" in logs.stdout
    everything = server.cli("logs", third)
    assert "Dispatcher.log" in everything.stdout and "chatty saw record 0" in everything.stdout
    missing = server.cli("logs", third, "--task", "nope_0")
    assert missing.returncode == 2 and "chatty_0" in missing.stderr

    # The second still runs; stopping the server stops it and leaves nothing behind.
    second_job = server.wait_running(second)
    drivers = [first_job["pid"], second_job["pid"]]
    assert server.stop(signal.SIGTERM) == 0
    assert wait_dead(drivers)
    assert wait_until(lambda: not any(own_segments(pid) for pid in drivers), 30)
    assert not server.answers()

    # A new server on the same state lists the history; the second was stopped by the shutdown, not lost.
    again = start_server()
    rows = {row["id"]: row for row in again.call("list")}
    assert {first, second, third, failing} <= set(rows)
    assert rows[second]["status"] == "stopped"


@pytest.mark.timeout(120)
def test_follow_prints_the_log_until_the_job_ends(start_server):
    server = start_server()
    job = server.submit("crawl")
    followed = server.cli("logs", job, "--follow", "--task", "driver")
    assert followed.returncode == 0, followed.stderr
    assert "succeeded" in followed.stdout     # the driver's last line, written as the job ended
    assert server.status(job)["status"] == "succeeded"


@pytest.mark.timeout(60)
def test_the_clients_say_how_to_start_a_server_when_none_runs(short_dir):
    for command in (("list",), ("status", "0123abcd"), ("wait", "0123abcd"), ("submit", "x.py:build")):
        done = procflow(*command, "--socket", f"{short_dir}/none.sock")
        assert done.returncode == 1
        assert f"no procflow server at {short_dir}/none.sock; start one with `procflow serve`" in done.stderr
        assert "Traceback" not in done.stderr


@pytest.mark.timeout(120)
def test_unknown_jobs_and_bad_targets_are_usage_errors(start_server):
    server = start_server()
    for command in ("status", "stop", "wait", "logs"):
        done = server.cli(command, "0123abcd")
        assert done.returncode == 2 and "no job '0123abcd'" in done.stderr, (command, done.stderr)
    bad = server.cli("submit", "tests/cli/pipelines.py:no_such_builder")
    assert bad.returncode == 2 and "no attribute 'no_such_builder'" in bad.stderr
    assert server.call("list") == []
