"""Jobs end to end: lifecycle hooks, stop, failures, metrics (on every backend, through the `backend`
fixture), and what the local backend's processes add: parallelism, start methods, validation before any
process starts, the driver's gc state."""

from __future__ import annotations

import gc
import os
import sys
import threading
import time

import pytest

from procflow import (
    CoMapFunction,
    JobFailedError,
    MapFunction,
    SinkFunction,
    SourceFunction,
)
from procflow.backends.local.process_factory import ProcessFactory
from procflow.core.errors import RemoteTraceback
from procflow.testing import child_pids

from .conftest import CONCURRENT, CORE, NO_RAY, SPAWN, wait_for

pytestmark = pytest.mark.timeout(60)


class SlowSink(SinkFunction):
    """Writes what it received to a file at close(): proof that it drained everything."""

    def __init__(self, path):
        self.path = path

    def open(self):
        self.got = []

    def execute(self, record):
        time.sleep(0.0005)      # a slow consumer, not synchronisation
        self.got.append(record)

    def close(self):
        with open(f"{self.path}.{self.ctx.parallel_index}", "w") as f:
            f.write(" ".join(map(str, self.got)))


def test_a_slow_sink_behind_a_parallel_map_receives_every_record(backend, tmp_path):
    env = backend.make_env()
    env.from_batch(range(1000)).map(lambda x: x + 1, parallelism=3).sink(SlowSink, str(tmp_path / "sink"))
    env.submit()
    got = [int(x) for x in (tmp_path / "sink.0").read_text().split()]
    assert sorted(got) == list(range(1, 1001))


class Burn(MapFunction):
    def execute(self, record):
        started = time.monotonic()
        x = 0
        while time.monotonic() - started < 0.4:   # CPU-bound, holds the GIL
            for i in range(1000):
                x += i
        return os.getpid(), started, time.monotonic()


def test_cpu_bound_tasks_run_in_parallel_processes(make_env, mode):
    env = make_env(mode)
    result = env.from_batch(range(4)).map(Burn, parallelism=2).collect()
    env.submit()
    rows = result.results()
    pids = {pid for pid, _, _ in rows}
    assert len(pids) == 2 and os.getpid() not in pids
    by_pid = {pid: [(a, b) for p, a, b in rows if p == pid] for pid in pids}
    a, b = by_pid.values()
    assert any(s1 < e2 and s2 < e1 for s1, e1 in a for s2, e2 in b), "busy intervals never overlapped"


class ModulesImportedInTask(MapFunction):
    """Which procflow modules a task process imported after it was forked from the driver."""

    def __init__(self):
        self.driver_modules = {m for m in sys.modules if m.startswith("procflow")}

    def execute(self, record):
        return sorted(m for m in sys.modules if m.startswith("procflow") and m not in self.driver_modules)


def test_a_forked_task_starts_with_the_runtime_already_loaded(make_env, mode):
    # Importing the task loop and operators in every child cost 5-35 ms per task on 2 cores (more
    # where bytecode is not cached), most of a short job's start-up.
    env = make_env(mode)
    result = env.from_batch([0]).map(ModulesImportedInTask).collect()
    env.submit()
    assert result.results() == [[]]


class Endless(SourceFunction):
    """Ten records, then nothing for ever (it backs off); never ends by itself."""

    def open(self):
        self.i = 0

    def execute(self):
        if self.i < 10:
            self.i += 1
            return self.i
        return None


@pytest.mark.backends(*CONCURRENT)
def test_autostop_false_runs_until_env_stop(backend):
    env = backend.make_env()
    result = env.from_source(Endless).map(lambda x: x * 2, parallelism=2).collect()
    job = env.submit(autostop=False)
    assert job.status == "running" and job.running
    with pytest.raises(TimeoutError):
        job.wait(0.3)        # it does not end on its own
    assert job.status == "running"
    env.stop()
    assert job.status == "stopped" and not job.running
    assert sorted(result.results()) == [2 * i for i in range(1, 11)]   # what was in flight drained
    assert job.wait(1) is job


class Counting(SourceFunction):
    """1, 2, 3, ... for ever, as fast as it can."""

    def open(self):
        self.n = 0

    def execute(self):
        self.n += 1
        return self.n


@pytest.mark.backends(*CONCURRENT)
def test_stop_drains_an_unbounded_source(backend):
    env = backend.make_env()
    result = env.from_source(Counting).map(lambda x: x * 2, parallelism=2).collect()
    job = env.submit(autostop=False)
    env.stop(timeout=30)
    assert job.status == "stopped"
    got = sorted(result.results())
    emitted = job.metrics["source_0"]["records_out"]
    assert got == [2 * i for i in range(1, emitted + 1)]   # nothing lost, nothing duplicated


class FailOn(MapFunction):
    def __init__(self, bad):
        self.bad = bad

    def execute(self, record):
        if record == self.bad:
            raise ValueError(f"cannot handle {record}")
        return record


@pytest.mark.backends(*CORE, *SPAWN)
def test_an_exception_fails_the_job_naming_task_and_record(backend):
    env = backend.make_env()
    env.from_batch(range(100_000)).map(FailOn, 1234, parallelism=2).collect()
    started = time.monotonic()
    with pytest.raises(JobFailedError) as info:
        env.submit()
    elapsed = time.monotonic() - started
    err = info.value
    assert err.task in ("map_0", "map_1") and err.task in str(err)
    assert err.record == "1234" and "1234" in str(err)
    assert err.error_type == "ValueError" and "FailOn" in str(err)
    assert "cannot handle 1234" in err.remote_traceback and "in execute" in err.remote_traceback
    assert "cannot handle 1234" in str(err.__cause__)
    if backend.in_driver:   # the live exception, so that pdb.post_mortem works on it
        assert isinstance(err.__cause__, ValueError) and err.__cause__.__traceback__ is not None
    else:
        assert isinstance(err.__cause__, RemoteTraceback)
    assert env.job.status == "failed"
    # spawn pays for starting interpreters first, Ray for starting actors
    limit = {"local-shm-spawn": 10, "local-mp-spawn": 10, "ray": 30}.get(backend.name, 5)
    assert elapsed < limit, f"failure took {elapsed:.1f}s to surface"


def test_an_exception_in_open_or_a_source_fails_the_job(backend):
    class BadOpen(MapFunction):
        def open(self):
            raise RuntimeError("no model file")

        def execute(self, record):
            return record

    def broken_source():
        raise KeyError("gone")

    env = backend.make_env()
    env.from_batch([1]).map(BadOpen).collect()
    with pytest.raises(JobFailedError, match="no model file"):
        env.submit()
    env2 = backend.make_env()
    env2.from_source(broken_source).collect()
    with pytest.raises(JobFailedError, match="gone"):
        env2.submit()


class CountingFactory(ProcessFactory):
    def __init__(self, start_method="fork"):
        super().__init__(start_method)
        self.started = 0

    def start(self, name, target, args):
        self.started += 1
        return super().start(name, target, args)


class OnlyMap0(CoMapFunction):
    def map0(self, record):
        return record


def _bad_graphs():
    def join_one_input(env):
        a, b, c = env.from_batch([1]), env.from_batch([2]), env.from_batch([3])
        a.connect(b, c).keyby(lambda x: x).join(lambda p, k, t: [p])

    def join_unkeyed(env):
        env.from_batch([1]).connect(env.from_batch([2])).join(lambda p, k, t: [p])

    def comap_missing_map1(env):
        env.from_batch([1]).connect(env.from_batch([2])).comap(OnlyMap0).collect()

    def empty(env):
        pass

    return [join_one_input, join_unkeyed, comap_missing_map1, empty]


@pytest.mark.parametrize("build", _bad_graphs(), ids=lambda f: f.__name__)
def test_a_graph_that_cannot_work_fails_before_any_process_starts(env_dir, build):
    from procflow import LocalEnvironment

    factory = CountingFactory()
    children = child_pids()
    with LocalEnvironment("bad", env_dir=env_dir, task_factory=factory) as env:
        build(env)
        with pytest.raises(ValueError):
            env.submit()
    assert factory.started == 0 and child_pids() == children


@pytest.mark.parametrize("bad", [0, -1, "2", 1.5])
def test_bad_parallelism_fails_before_any_process_starts(env_dir, bad):
    from procflow import LocalEnvironment

    factory = CountingFactory()
    with LocalEnvironment("bad", env_dir=env_dir, task_factory=factory) as env:
        with pytest.raises((ValueError, TypeError)):
            env.from_batch([1]).map(lambda x: x, parallelism=bad)
        with pytest.raises(TypeError):
            env.from_batch([1]).map(None)
    assert factory.started == 0


class HoldsALock(MapFunction):
    def __init__(self):
        self.gen = (i for i in range(3))     # a generator cannot be pickled, not even by dill

    def execute(self, record):
        return record


def test_an_unpicklable_function_under_spawn_fails_before_start(env_dir):
    from procflow import LocalEnvironment

    factory = CountingFactory("spawn")
    children = child_pids()
    with LocalEnvironment("bad", env_dir=env_dir, start_method="spawn", task_factory=factory) as env:
        env.from_batch([1, 2]).map(HoldsALock).collect()
        with pytest.raises(TypeError, match="cannot be shipped") as info:
            env.submit()
    assert "map" in str(info.value) and "open()" in str(info.value)
    assert factory.started == 0 and child_pids() == children


class Lifecycle(MapFunction):
    def __init__(self, path):
        self.path = path

    def open(self):
        ctx = self.ctx
        self._log(f"open {os.getpid()} {ctx.parallel_index} {ctx.parallelism} {ctx.name}")

    def execute(self, record):
        return record, os.getpid(), self.ctx.parallel_index, self.ctx.parallelism

    def close(self):
        self._log(f"close {os.getpid()} {self.ctx.parallel_index}")

    def _log(self, line):
        with open(self.path, "a") as f:
            f.write(line + "\n")


@pytest.mark.backends(*CORE, *SPAWN)
def test_open_and_close_run_in_the_task_process_with_its_context(backend, tmp_path):
    path = tmp_path / "hooks"
    env = backend.make_env()
    result = env.from_batch(range(20)).map(Lifecycle, str(path), parallelism=2).collect()
    env.submit()
    lines = sorted(path.read_text().split("\n")[:-1])
    opens = [line.split() for line in lines if line.startswith("open")]
    closes = [line.split() for line in lines if line.startswith("close")]
    assert len(opens) == 2 and len(closes) == 2
    pids = {int(o[1]) for o in opens}
    if backend.in_driver:
        assert pids == {os.getpid()}    # inline: every instance in the driver itself
    else:                               # one process (or Ray actor) per instance
        assert os.getpid() not in pids and len(pids) == 2
    assert {(int(o[2]), int(o[3]), o[4]) for o in opens} == {(0, 2, "map_0"), (1, 2, "map_1")}
    assert {int(c[1]) for c in closes} == pids
    rows = result.results()
    assert sorted(r for r, *_ in rows) == list(range(20))
    assert {(pid, idx, n) for _, pid, idx, n in rows} <= {(int(o[1]), int(o[2]), 2) for o in opens}


# Not on Ray: print() there writes to the task actor's stdout, which goes to Ray's worker logs (and to the
# driver only with log_to_driver), not to this process's stdout.
@pytest.mark.backends(*NO_RAY)
def test_sink_returns_the_same_stream_and_print_writes_to_stdout(backend, capfd):
    env = backend.make_env()
    stream = env.from_batch(["alpha", "beta"])
    assert stream.sink(lambda r: None) is stream
    assert stream.print(prefix="rec: ") is stream
    result = stream.map(str.upper).collect()
    env.submit()
    out = capfd.readouterr().out
    assert "rec: alpha\n" in out and "rec: beta\n" in out
    assert sorted(result.results()) == ["ALPHA", "BETA"]


def test_metrics_count_records_in_and_out_exactly(backend):
    env = backend.make_env()
    (env.from_batch(range(1000), parallelism=1).round_robin().filter(lambda x: x % 2 == 0, parallelism=2)
     .flatmap(lambda x: [x, x], parallelism=1).collect())
    job = env.submit()
    m = job.metrics
    assert m["batch_0"]["records_out"] == 1000 and m["batch_0"]["records_in"] == 0
    assert m["batch_0"]["processed_count"] == 1000
    assert m["filter_0"]["records_in"] + m["filter_1"]["records_in"] == 1000
    assert m["filter_0"]["records_in"] == 500      # round-robin from one source
    assert m["filter_0"]["records_out"] + m["filter_1"]["records_out"] == 500
    assert m["flatmap_0"]["records_in"] == 500 and m["flatmap_0"]["records_out"] == 1000
    assert m["collect_0"]["records_in"] == m["collect_0"]["processed_count"] == 1000
    assert m["collect_0"]["pid"] == os.getpid()     # nothing to decide there: it runs in the driver
    assert job.summary()["source_records"] == 1000
    ops = job.summary()["operators"]
    if backend.in_driver:
        assert all(row["pid"] == os.getpid() for row in m.values())
        # every task ran in the driver's one thread: none reports that thread's CPU as its own...
        assert all(row["cpu_s"] == 0 for row in m.values())
        # ...so summaries say "not measured" (None, as Job.summary documents), rather than 0 %.
        assert all(op["cpu_pct"] is None for op in ops.values())
    else:
        assert all(row["pid"] not in (None, os.getpid()) for name, row in m.items() if name != "collect_0")
        assert all(isinstance(op["cpu_pct"], float) for op in ops.values())


def _nap(x):
    time.sleep(0.004)   # waits, burns no CPU
    return x


@pytest.mark.backends("local-shm", "ray")
def test_task_metrics_report_the_task_threads_cpu_time(backend):
    # A task's cpu_s is its own thread's CPU time, not the process's (a Ray actor shares its process
    # with Ray's threads); a sleeping map is busy but burns almost none.
    env = backend.make_env()
    env.from_batch(range(50)).map(_nap).collect()
    job = env.submit()
    row = job.metrics["map_0"]
    assert row["busy_s"] >= 50 * 0.004 * 0.9
    assert 0 < row["cpu_s"] < row["busy_s"] / 4


@pytest.mark.backends(*CONCURRENT)
def test_metrics_are_live_while_the_job_runs(backend):
    env = backend.make_env()
    env.from_source(Endless).map(lambda x: x).collect()
    job = env.submit(autostop=False)
    wait_for(lambda: job.metrics["collect_0"]["records_in"] == 10, what="live counters to reach 10")
    env.stop()
    assert job.metrics["map_0"]["records_out"] == 10


@pytest.mark.backends(*CONCURRENT)
def test_env_close_stops_a_running_job(backend):
    env = backend.make_env()
    env.from_source(Endless).collect()
    job = env.submit(autostop=False)
    closer = threading.Thread(target=env.close)
    closer.start()
    closer.join(30)
    assert not closer.is_alive() and job.status == "stopped"


class FinalisedWhere:
    """Cyclic garbage with a finaliser: only the cycle collector frees it, and it notes which process."""

    def __init__(self, path):
        self.path = path
        self.cycle = self

    def __del__(self):
        with open(self.path, "a") as f:
            f.write(f"{os.getpid()}\n")


def collect_garbage(record):
    gc.collect()
    return record


def test_the_drivers_garbage_is_never_finalised_in_a_task(make_env, tmp_path):
    # A Ray ObjectRef or actor handle finalised in a forked task spoke to the cluster over the driver's
    # connections and hung the driver's next Ray call for 60 s.
    path = tmp_path / "finalised"
    env = make_env()
    env.from_batch(range(4)).map(collect_garbage, parallelism=2).collect()
    gc.disable()
    try:
        FinalisedWhere(str(path))      # garbage from here on, but not yet collected
        env.submit()
    finally:
        gc.enable()
    gc.collect()
    assert path.read_text().split() == [str(os.getpid())]


@pytest.mark.timeout(120)
def test_jobs_submitted_from_several_threads_keep_gc_and_logs_apart(make_env):
    # Each job pauses the driver's collector while it forks: interleaved, a job that read "off" (paused
    # by another) could leave it off for good.
    envs = [make_env() for _ in range(4)]
    for env in envs:
        env.from_batch(range(4)).map(collect_garbage, parallelism=2).collect()
    threads = [threading.Thread(target=env.submit) for env in envs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert gc.isenabled()
    # ... and each job's Dispatcher.log holds its own lines only (they once shared one logger).
    jobs = [env.job for env in envs]
    for job in jobs:
        with open(os.path.join(job.log_dir, "Dispatcher.log")) as f:
            text = f.read()
        assert f"job {job.job_id} finished" in text
        assert not any(other.job_id in text for other in jobs if other is not job)


def test_a_job_leaves_the_drivers_own_gc_state_as_it_was(make_env):
    # A user who gc.freeze()s before forking workers of their own keeps those objects frozen, and a
    # driver with gc on or off finds it so after the job.
    env = make_env()
    env.from_batch(range(4)).map(collect_garbage, parallelism=2).collect()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        env.submit()
        assert gc.get_freeze_count() >= frozen and gc.isenabled()
    finally:
        gc.unfreeze()


def double(record):
    return 2 * record


@pytest.mark.timeout(120)
@pytest.mark.parametrize("queue", ["shm", "mp"])
def test_a_job_runs_under_forkserver(make_env, queue):
    # Issue 22.7: under forkserver a task's parent is the fork server, not the driver, and every task
    # took that for "the driver died" and exited at once.
    env = make_env((queue, "forkserver"))
    result = env.from_batch(range(1000)).map(double, parallelism=2).collect()
    env.submit()
    assert sorted(result.results()) == [2 * i for i in range(1000)]
    assert env.job.status == "finished"


def test_a_job_submitted_from_a_thread_outlives_that_thread(make_env):
    # Issue 22.8: the kernel's parent-death signal follows the thread that forked, so every task was
    # SIGKILLed when the submitting thread ended.
    from procflow.testing import Endless, wait_until

    env = make_env()
    env.from_source(Endless).map(lambda r: r, parallelism=2).sink(lambda r: None, name="sink")
    submitted = []
    thread = threading.Thread(target=lambda: submitted.append(env.submit(autostop=False)))
    thread.start()
    thread.join(30)
    assert not thread.is_alive() and submitted
    job = submitted[0]
    # The thread has ended: records keep flowing (observed on the live counters, not synchronised on).
    seen = job.metrics["sink_0"]["records_in"]
    assert wait_until(lambda: job.metrics["sink_0"]["records_in"] > seen + 1000, 20), job.failure
    assert job.status == "running"
    env.stop()
    assert job.status == "stopped"
