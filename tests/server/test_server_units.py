"""The server's parts without processes: log names, the job table, the queue's decisions, request checks."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from procflow.server import paths
from procflow.server.jobs import JOB_STATES, JobService, UnknownJobError
from procflow.server.logs import list_log_files, read_log_file
from procflow.server.runner import Runner
from procflow.server.store import JobStore


@pytest.fixture
def log_dir(tmp_path):
    folder = tmp_path / "logs"
    (folder / "abc").mkdir(parents=True)
    (folder / "driver.log").write_text("driver line\n")
    (folder / "abc" / "map_0_info.log").write_text("héllo wörld\n")
    (tmp_path / "outside.txt").write_text("secret")
    os.symlink(tmp_path / "outside.txt", folder / "link.log")
    os.symlink(tmp_path, folder / "up")
    return str(folder)


def test_log_listing_skips_symlinks(log_dir):
    assert list_log_files(log_dir) == ["abc/map_0_info.log", "driver.log"]
    assert list_log_files(log_dir + "-missing") == []


@pytest.mark.parametrize("name", ["../outside.txt", "link.log", "up/outside.txt", "/etc/passwd", "abc/../driver.log",
                                  "", ".", "..", "abc//map_0_info.log", "a\0b", "abc\\..\\x", "driver.log/x"])
def test_a_log_name_cannot_leave_the_folder(log_dir, name):
    with pytest.raises(ValueError):
        read_log_file(log_dir, name)


def test_reads_continue_from_the_offset_and_never_split_a_character(log_dir):
    name = "abc/map_0_info.log"
    whole = "héllo wörld\n"
    text, offset = read_log_file(log_dir, name, 0, 2)     # "h" and the first byte of "é"
    assert text == "h" and offset == 1
    pieces = [text]
    while True:
        text, next_offset = read_log_file(log_dir, name, offset, 3)
        if next_offset == offset:
            break
        pieces.append(text)
        offset = next_offset
    assert "".join(pieces) == whole
    with pytest.raises(FileNotFoundError):
        read_log_file(log_dir, "nope.log")


class NoRunner:
    """Stands in for the runner: records what the service asked of it."""

    def __init__(self) -> None:
        self.woken = 0
        self.stopped: list[str] = []

    def wake(self) -> None:
        self.woken += 1

    def stop(self, job_id: str) -> None:
        self.stopped.append(job_id)


@pytest.fixture
def service(tmp_path):
    store = JobStore(str(tmp_path / "jobs.sqlite"))
    yield JobService(store, NoRunner(), str(tmp_path))   # type: ignore[arg-type]
    store.close()


def test_submit_queues_a_record_and_lists_newest_first(service, tmp_path):
    first = service.submit_job("pkg.jobs:build")
    second = service.submit_job("/x/y/etl.py:main", name="nightly", parallelism={"map": 4}, cores=3, cwd="/tmp")
    assert first["status"] == "queued" and first["name"] == "jobs" and second["name"] == "nightly"
    assert set(first) == {"id", "name", "target", "status", "submitted_at", "started_at", "finished_at",
                          "exit_code", "error"}
    assert [j["id"] for j in service.list_jobs()] == [second["id"], first["id"]]
    assert service.runner.woken == 2
    details = service.job_details(second["id"])
    assert details["parallelism"] == {"map": 4} and details["cores"] == 3 and details["cwd"] == "/tmp"
    assert details["live"] is None and details["summary"] is None
    folder = tmp_path / "jobs" / second["id"]
    folder.mkdir(parents=True)
    (folder / "live.json").write_text(json.dumps({"job_id": second["id"], "status": "running"}))
    assert service.get_job(second["id"])["live"]["status"] == "running"
    assert all(j["status"] in JOB_STATES for j in service.list_jobs())


@pytest.mark.parametrize("kwargs", [{"target": ""}, {"target": 5}, {"target": "a:b", "parallelism": {"map": 0}},
                                    {"target": "a:b", "parallelism": {"../x": 1}},
                                    {"target": "a:b", "parallelism": [1]}, {"target": "a:b", "cores": 0},
                                    {"target": "a:b", "cwd": "rel"}, {"target": "a:b", "name": ""}])
def test_submit_refuses_what_cannot_work(service, kwargs):
    target = kwargs.pop("target")
    with pytest.raises(ValueError):
        service.submit_job(target, **kwargs)
    assert service.list_jobs() == []


@pytest.mark.parametrize("job_id", ["0123abcd", "../../etc", "", 7])
def test_unknown_jobs(service, job_id):
    for call in (service.get_job, service.stop_job, service.list_logs):
        with pytest.raises(UnknownJobError):
            call(job_id)
    with pytest.raises(KeyError):    # UnknownJobError is a KeyError, as the web app expects
        service.read_log(job_id, "driver.log")


def test_read_log_through_the_service_stays_in_the_job_folder(service, tmp_path):
    job = service.submit_job("a:b")
    logs = tmp_path / "jobs" / job["id"] / "logs"
    logs.mkdir(parents=True)
    (logs / "driver.log").write_text("hi\n")
    assert service.list_logs(job["id"]) == ["driver.log"]
    assert service.read_log(job["id"], "driver.log") == ("hi\n", 3)
    with pytest.raises(ValueError):
        service.read_log(job["id"], "../live.json")


# -- the runner's queue, with drivers that never start -------------------------------------------


class ParkedRunner(Runner):
    """A runner whose jobs "run" until the test ends, without processes."""

    async def _run(self, row, running):
        await asyncio.Event().wait()


def _cancel_parked(runner, loop):
    for running in runner.running.values():
        running.task.cancel()
    loop.run_until_complete(asyncio.sleep(0))


def schedule(store, state, *, max_jobs, cores, job_cores):
    loop = asyncio.new_event_loop()
    runner = ParkedRunner(store, state, max_jobs=max_jobs, cores=cores)
    ids = []
    for i, n in enumerate(job_cores):
        ids.append(f"{i:08x}")
        store.insert({"id": ids[-1], "name": "j", "target": "a:b", "status": "queued", "submitted_at": float(i),
                      "cores": n})
    try:
        runner.start(loop)
        started = [job_id for job_id in ids if job_id in runner.running]
        for r in runner.running.values():
            r.task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    return [ids.index(j) for j in started]


@pytest.mark.parametrize("max_jobs, cores, job_cores, started", [
    (1, 64, [2, 2, 2], [0]),            # --max-jobs 1: one at a time
    (2, 64, [2, 2, 2], [0, 1]),         # the third waits
    (3, 4, [3, 2, 1], [0]),             # the second does not fit; FIFO: the third waits behind it
    (3, 4, [8, 1], [0]),                # larger than --cores: runs alone
    (3, 4, [2, 2, 1], [0, 1]),
])
def test_the_queue_starts_jobs_in_order_within_the_limits(tmp_path, max_jobs, cores, job_cores, started):
    store = JobStore(str(tmp_path / "jobs.sqlite"))
    try:
        assert schedule(store, str(tmp_path), max_jobs=max_jobs, cores=cores, job_cores=job_cores) == started
    finally:
        store.close()


def test_a_new_runner_marks_running_rows_lost_and_stops_queued_ones_on_request(tmp_path):
    store = JobStore(str(tmp_path / paths.DB_NAME))
    store.insert({"id": "0000000a", "name": "j", "target": "a:b", "status": "running", "submitted_at": 1.0})
    store.insert({"id": "0000000b", "name": "j", "target": "a:b", "status": "succeeded", "submitted_at": 2.0})
    store.insert({"id": "0000000c", "name": "j", "target": "a:b", "status": "queued", "submitted_at": 3.0})
    loop = asyncio.new_event_loop()
    try:
        runner = ParkedRunner(store, str(tmp_path), max_jobs=1)
        assert runner.start(loop) == ["0000000a"]
        lost = store.get("0000000a")
        assert lost["status"] == "lost" and lost["exit_code"] == 1 and "submit it again" in lost["error"]
        assert store.get("0000000b")["status"] == "succeeded"
        assert list(runner.running) == ["0000000c"]     # the queued job of the old server runs now
        # One slot, taken: the next job waits, and stopping it ends it before it starts.
        store.insert({"id": "0000000d", "name": "j", "target": "a:b", "status": "queued", "submitted_at": 4.0})
        runner.wake()
        assert "0000000d" not in runner.running
        runner.stop("0000000d")
        stopped = store.get("0000000d")
        assert stopped["status"] == "stopped" and stopped["exit_code"] == 130
        _cancel_parked(runner, loop)
    finally:
        loop.close()
        store.close()


@pytest.mark.parametrize("bad", [0, -1])
def test_runner_limits_must_be_positive(tmp_path, bad):
    with pytest.raises(ValueError):
        Runner(None, str(tmp_path), max_jobs=bad)   # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Runner(None, str(tmp_path), cores=bad)      # type: ignore[arg-type]


def test_a_job_with_a_checkpoint_folder_resumes_under_the_next_server_instead_of_being_lost(tmp_path):
    store = JobStore(str(tmp_path / paths.DB_NAME))
    store.insert({"id": "0000000e", "name": "j", "target": "a:b", "status": "running", "submitted_at": 1.0,
                  "started_at": 2.0, "checkpoint_dir": str(tmp_path / "ckpt")})
    store.insert({"id": "0000000f", "name": "j", "target": "a:b", "status": "queued", "submitted_at": 3.0,
                  "checkpoint_dir": str(tmp_path / "ckpt2")})
    loop = asyncio.new_event_loop()
    try:
        runner = ParkedRunner(store, str(tmp_path), max_jobs=2)
        assert runner.start(loop) == []                  # nothing lost: it goes on from its checkpoints
        assert store.get("0000000e")["status"] == "queued" and "0000000e" in runner.running
        resumed = runner.driver_argv(store.get("0000000e"), str(tmp_path / "e"))
        assert resumed[resumed.index("--checkpoint-dir") + 1] == str(tmp_path / "ckpt") and "--resume" in resumed
        fresh = runner.driver_argv(store.get("0000000f"), str(tmp_path / "f"))
        assert "--checkpoint-dir" in fresh and "--resume" not in fresh   # never ran: starts from the beginning
        _cancel_parked(runner, loop)
    finally:
        loop.close()
        store.close()
