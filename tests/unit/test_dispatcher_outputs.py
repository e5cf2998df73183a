"""The Dispatcher's hooks for committed outputs (core/committed_output.py), through the scripted backend
of test_dispatcher.py (no task starts): staged before any task starts, committed after every task has
ended when the job finished, removed when it failed or was stopped; a failed commit fails the job."""

from __future__ import annotations

from typing import Any

import pytest

from procflow import LocalEnvironment, SinkFunction
from procflow.core.enums import ControlRequest, JobStatus
from procflow.runtime.control import ErrorReport, Failed
from procflow.runtime.dispatcher import Dispatcher
from tests.unit.test_dispatcher import ScriptedBackend, ready_all, stop_all

CALLS: list[Any] = []   # the backend's calls and the hooks', in one order


class Recorded(SinkFunction):
    fail_commit = False

    def execute(self, record: Any) -> None:
        pass

    def prepare_output(self, job_id: str, parallelism: int) -> None:
        CALLS.append(f"prepare_output({parallelism})")

    def commit_output(self) -> None:
        CALLS.append("commit_output")
        if self.fail_commit:
            raise OSError("disk full")

    def abort_output(self) -> None:
        CALLS.append("abort_output")


class FailsToCommit(Recorded):
    fail_commit = True


class Counted(SinkFunction):
    """An ordinary sink: counts its constructions (every one in this process: nothing starts)."""

    built = 0

    def __init__(self) -> None:
        type(self).built += 1

    def execute(self, record: Any) -> None:
        pass


def run(script, env_dir: str, sink: type = Recorded, stop: bool = False) -> Dispatcher:
    CALLS.clear()
    env = LocalEnvironment("outputs", env_dir=env_dir)
    stream = env.from_batch([1, 2, 3])
    stream.sink(sink, parallelism=3, name="out")
    stream.sink(Counted, parallelism=2, name="plain")
    backend = ScriptedBackend(script)
    backend.calls = CALLS
    dispatcher = Dispatcher(env.compile(), config=env.config, env_dir=env.env_dir, backend=backend,
                            collectors=env._collectors)
    dispatcher.prepare()
    if stop:
        dispatcher.request(ControlRequest.STOP)
    dispatcher.start()
    return dispatcher


def test_staged_before_any_task_and_committed_after_every_task_has_ended(env_dir):
    dispatcher = run(lambda b: [ready_all(b), stop_all(b)], env_dir)
    assert dispatcher.manager.status is JobStatus.FINISHED
    assert CALLS.index("prepare_output(3)") < CALLS.index("open_job") < CALLS.index("start")
    assert CALLS[CALLS.index("stop_tasks(failed=False)"):][:2] == ["stop_tasks(failed=False)", "commit_output"]
    assert "abort_output" not in CALLS


def test_a_failed_job_removes_its_output(env_dir):
    report = ErrorReport("out_0", 7, "sink", None, "ValueError", "bad", "tb")
    dispatcher = run(lambda b: [ready_all(b), [Failed(report)]], env_dir)
    assert dispatcher.manager.status is JobStatus.FAILED
    assert "commit_output" not in CALLS and CALLS.count("abort_output") == 1


def test_a_stopped_job_removes_its_output(env_dir):
    dispatcher = run(lambda b: [ready_all(b), stop_all(b)], env_dir, stop=True)
    assert dispatcher.manager.status is JobStatus.STOPPED
    assert "commit_output" not in CALLS and CALLS.count("abort_output") == 1


def test_a_failed_commit_fails_the_job_naming_the_sink_and_removes_the_staging(env_dir):
    dispatcher = run(lambda b: [ready_all(b), stop_all(b)], env_dir, sink=FailsToCommit)
    assert dispatcher.manager.status is JobStatus.FAILED
    assert "committing the output of out failed: OSError: disk full" in str(dispatcher.manager.failure)
    assert isinstance(dispatcher.manager.failure.__cause__, OSError)
    assert CALLS[-5:-3] == ["commit_output", "abort_output"]


def test_a_prepare_that_raises_refuses_the_job_and_is_aborted(env_dir):
    class Refuses(Recorded):
        def prepare_output(self, job_id: str, parallelism: int) -> None:
            CALLS.append("prepare_output")
            raise FileExistsError("not empty")

    env = LocalEnvironment("outputs", env_dir=env_dir)
    env.from_batch([1]).sink(Refuses)
    CALLS.clear()
    backend = ScriptedBackend(lambda b: [])
    backend.calls = CALLS
    dispatcher = Dispatcher(env.compile(), config=env.config, env_dir=env.env_dir, backend=backend,
                            collectors={})
    with pytest.raises(FileExistsError, match="not empty"):   # as BaseEnvironment._launch prepares
        dispatcher.prepare_or_clean_up()
    assert "open_job" not in CALLS and "start" not in CALLS
    assert CALLS[:3] == ["bind", "preflight", "prepare_output"] and "abort_output" in CALLS


def test_other_sinks_are_not_built_in_the_driver_for_the_purpose(env_dir):
    Counted.built = 0
    run(lambda b: [ready_all(b), stop_all(b)], env_dir)
    assert Counted.built == 2   # one per task (the dispatcher builds the tasks' functions), none more
