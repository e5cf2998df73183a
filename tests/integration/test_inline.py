"""What only the inline executor has: one deterministic order, everything in the driver's one thread, and
the live exception (pdb.post_mortem works on it) blamed on the right task.

What inline computes, like every backend, is checked by the conformance tests (test_operators.py and the
others that take the `backend` fixture).
"""

from __future__ import annotations

import os
import threading
import traceback

import pytest

from procflow import BaseService, BatchFunction, JobFailedError, LocalEnvironment, MapFunction

pytestmark = pytest.mark.timeout(60)


class TagIndex(MapFunction):
    def execute(self, record):
        return (self.ctx.parallel_index, record)


def test_inline_is_deterministic(tmp_path):
    """Two inline runs give the same records in the same order, even through fan-in and fan-out."""
    runs = []
    for i in range(2):
        with LocalEnvironment("det", executor="inline", env_dir=tmp_path / str(i)) as env:
            a = env.from_batch(range(3000), parallelism=2).flatmap(lambda x: [x, -x], parallelism=3)
            b = env.from_batch(range(500)).map(lambda x: x * 7, parallelism=2)
            out = a.connect(b).map(lambda x: x + 1, parallelism=2).keyby(lambda x: x % 3).map(TagIndex).collect()
            env.submit()
        runs.append(out.results())
    assert runs[0] == runs[1] and len(runs[0]) == 6500


def test_inline_runs_the_whole_job_inside_submit_even_without_autostop():
    """The difference from every other backend: nothing runs beside the driver, so submit(autostop=False)
    returns the finished job (and an unbounded source would never return: the stop tests skip inline)."""
    with LocalEnvironment("nostop", executor="inline") as env:
        result = env.from_batch(range(10)).map(lambda x: x * 2).collect()
        job = env.submit(autostop=False)
        assert job.status == "finished" and not job.running
    assert result.results() == [x * 2 for x in range(10)]


def test_inline_runs_in_the_driver_process():
    seen = []
    with LocalEnvironment("pid", executor="inline") as env:
        env.from_batch(range(5)).map(lambda x: os.getpid(), parallelism=2).sink(seen.append)
        job = env.submit()
    assert seen == [os.getpid()] * 5   # the sink appended to this very list: same process
    assert job.status == "finished"
    assert all(m["pid"] == os.getpid() for m in job.metrics.values())


def test_inline_failure_downstream_of_a_source_is_blamed_on_the_right_task():
    """A map failing while the source is mid-batch (the scheduler runs it inside the source's emit)."""
    with LocalEnvironment("blame", executor="inline") as env:
        env.from_batch(range(5000), name="src").map(lambda x: 1 // (x - 3000), name="div").collect()
        with pytest.raises(JobFailedError) as info:
            env.submit()
    assert info.value.task == "div_0" and info.value.record == "3000"
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_inline_source_failure_names_the_source_record():
    def explode(x):
        if x == 7:
            raise KeyError("seven")
        return x

    class Bad(BatchFunction):
        def __init__(self):
            self.i = 0

        def execute(self):
            self.i += 1
            return explode(self.i)

    with LocalEnvironment("srcfail", executor="inline") as env:
        env.from_batch(Bad).collect()
        with pytest.raises(JobFailedError) as info:
            env.submit()
    assert info.value.task == "batch_0" and "KeyError" in str(info.value)


def test_executor_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"unknown executor 'threads'.*'process', 'inline'"):
        LocalEnvironment("x", executor="threads")
    from procflow.backends.local.process_factory import ProcessFactory

    with pytest.raises(ValueError, match="task_factory= and executor='inline'"):
        LocalEnvironment("x", executor="inline", task_factory=ProcessFactory())


class WhereService(BaseService):
    def process(self, x):
        return os.getpid(), threading.get_ident()


class AsksWhere(MapFunction):
    def execute(self, x):
        future = self.call_service_async("where", x)
        return future.done(), self.call_service("where", x)


def test_inline_services_run_in_the_driver_thread(env_dir):
    """Issue 17: inline, a replica is an object in the driver, called in the calling task's thread (so a
    breakpoint in a service stops the job there); an async call is resolved before it returns."""
    with LocalEnvironment("svc", executor="inline", env_dir=env_dir) as env:
        env.register_service("where", WhereService, parallelism=2)
        result = env.from_batch([1, 2]).map(AsksWhere).collect()
        env.submit()
    assert result.results() == [(True, (os.getpid(), threading.get_ident()))] * 2


class BrokenSetup(BaseService):
    def setup(self):
        raise RuntimeError("model file missing")


def test_inline_service_failure_chains_the_live_exception(env_dir):
    """As for an inline task: pdb.post_mortem() on the job's error lands in the service's own frame."""
    with LocalEnvironment("svc", executor="inline", env_dir=env_dir) as env:
        env.register_service("broken", BrokenSetup)
        env.from_batch([1]).collect()
        with pytest.raises(JobFailedError) as info:
            env.submit()
    assert info.value.task == "broken[0]"
    cause = info.value.__cause__
    assert isinstance(cause, RuntimeError) and str(cause) == "model file missing"
    assert cause.__traceback__ is not None and "setup" in [f.name for f in traceback.extract_tb(cause.__traceback__)]


def test_inline_jobs_are_run_by_the_same_dispatcher(env_dir):
    """Issue 17: the inline backend goes through the one Dispatcher, so its job folder tells the same
    story as a process job's (Dispatcher.log; Error.log with the task's traceback)."""
    with LocalEnvironment("same", executor="inline", env_dir=env_dir) as env:
        env.from_batch(range(50)).map(lambda x: 1 // (x - 40)).collect()
        with pytest.raises(JobFailedError):
            env.submit()
        job_dir = env.job.log_dir
    with open(os.path.join(job_dir, "Dispatcher.log")) as f:
        log = f.read()
    assert "prepared on the inline backend" in log and "sources released" in log
    with open(os.path.join(job_dir, "Error.log")) as f:
        assert "ZeroDivisionError" in f.read()
