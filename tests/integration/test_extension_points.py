"""Extension points (issue 9): a user TaskFactory (local), and on every backend: custom partitioners,
routing info, processed_count, handle_stop_signal, and the keyed reduce (checked against a plain Python
fold). A range partitioner is one of test_operators.py's cases."""

from __future__ import annotations

import collections
import os
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from procflow import FlatMapFunction, JobFailedError, LocalEnvironment, MapFunction, TaskFactory
from procflow.backends.local.process_factory import ProcessFactory

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from examples.wordcount import build as build_wordcount  # noqa: E402
from examples.wordcount import generate_lines  # noqa: E402

from .conftest import NO_RAY  # noqa: E402

pytestmark = pytest.mark.timeout(60)


class TagIndex(MapFunction):
    def execute(self, record):
        return (self.ctx.parallel_index, record)


# -- TaskFactory ---------------------------------------------------------------------------------------

class RecordingFactory:
    """A user factory: wraps the process factory and remembers what it started (no mp_context)."""

    start_method = "fork"

    def __init__(self):
        self._inner = ProcessFactory("fork")
        self.started: list[str] = []

    def control_pipe(self):
        return self._inner.control_pipe()

    def start(self, name, target, args):
        self.started.append(name)
        return self._inner.start(name, target, args)


@pytest.mark.parametrize("queue", ["shm", "mp"])
def test_user_task_factory_runs_every_task(queue, tmp_path):
    factory = RecordingFactory()
    assert isinstance(factory, TaskFactory)
    with LocalEnvironment("factory", {"queue": queue}, task_factory=factory, env_dir=tmp_path) as env:
        out = env.from_batch(range(100)).map(lambda x: x + 1, parallelism=2).collect()
        job = env.submit()
    assert sorted(out.results()) == list(range(1, 101))
    # collect_0 has nothing to decide, so the map tasks ship to the driver and it needs no process; the
    # source follows the map's parallelism and each instance runs with its map (a chain): the factory
    # starts one process per chain, named by its head, and the metrics keep a row per operator instance
    assert sorted(factory.started) == ["batch_0", "batch_1"]
    assert sorted(job.metrics) == ["batch_0", "batch_1", "collect_0", "map_0", "map_1"]
    assert job.metrics["collect_0"]["pid"] == os.getpid()


def test_a_task_factory_missing_members_is_refused():
    class NoStart:
        start_method = "fork"

        def control_pipe(self):
            raise AssertionError

    with pytest.raises(TypeError, match=r"task_factory must implement .*TaskFactory; NoStart lacks start"):
        LocalEnvironment("x", task_factory=NoStart())


# -- custom partitioners -------------------------------------------------------------------------------

def test_fan_out_partitioner_sends_to_two_instances(backend):
    class Neighbours:   # a partitioner object, not only a function
        def __call__(self, key, n):
            return [key % n, (key + 1) % n]

    env = backend.make_env("fan")
    result = (env.from_batch(range(60)).keyby(lambda x: x, strategy=Neighbours())
              .map(TagIndex, parallelism=3).collect())
    env.submit()
    where = collections.defaultdict(set)
    for index, x in result.results():
        where[x].add(index)
    assert len(result.results()) == 120
    assert dict(where) == {x: {x % 3, (x + 1) % 3} for x in range(60)}


@pytest.mark.backends(*NO_RAY)
@pytest.mark.parametrize("returned, shown", [(5, "returned 5"), ("a", "returned 'a'"), (None, "returned None"),
                                             ([], r"returned \[\]"), ([0, 9], r"returned \[0, 9\]"),
                                             (True, "returned True")])
def test_bad_partitioner_return_value_is_named(backend, returned, shown):
    def broken(key, n):
        return returned

    env = backend.make_env("badpart")
    env.from_batch(range(10), name="src").keyby(lambda x: x, strategy=broken).map(TagIndex, parallelism=2)
    with pytest.raises(JobFailedError, match=rf"partitioner .*broken {shown} for key 0; it must return an "
                                             r"index in 0\.\.1") as info:
        env.submit()
    assert info.value.task == "src_0"


def test_unknown_strategy_is_refused_before_running():
    with LocalEnvironment("x") as env:
        with pytest.raises(ValueError, match="unknown strategy 'range'"):
            env.from_batch([1]).keyby(lambda x: x, strategy="range")


# -- routing info, processed_count, handle_stop_signal -------------------------------------------------

class Inspect(FlatMapFunction):
    """Emits nothing per record; at end of input, what the task knows about its outputs and counts."""

    def execute(self, record):
        return [record]

    def handle_stop_signal(self, signal):
        return [{"task": self.ctx.name, "routing": self.ctx.get_routing_info(),
                 "connections": self.ctx.router.get_connections_info(),
                 "processed": self.ctx.processed_count, "signal": type(signal).__name__}]


def test_routing_info_and_processed_count(backend):
    env = backend.make_env("routing")
    # one source instance, round robin: a channel to each flatmap instance
    inspected = env.from_batch(range(10), parallelism=1).round_robin().flatmap(Inspect, parallelism=2,
                                                                              name="inspect")
    inspected.keyby(lambda r: 0).map(lambda r: r, parallelism=3, name="hashed")
    reports = inspected.collect(name="out")
    job = env.submit()
    infos = [r for r in reports.results() if isinstance(r, dict)]
    assert sorted(i["task"] for i in infos) == ["inspect_0", "inspect_1"]
    queue_ids = []
    for info in infos:
        assert info["signal"] == "StopSignal"
        assert info["processed"] == 5
        assert info["routing"] == info["connections"]
        hashed, out = info["routing"]
        assert (hashed["target"], hashed["strategy"], hashed["instances"]) == ("hashed", "hash", 3)
        assert (out["target"], out["strategy"], out["instances"]) == ("out", "balance", 1)
        assert len(hashed["queue_ids"]) == 3 and len(out["queue_ids"]) == 1
        queue_ids += hashed["queue_ids"] + out["queue_ids"]
    assert len(set(queue_ids)) == 8    # one channel per (upstream, downstream) instance pair
    metrics = job.metrics
    assert metrics["batch_0"]["processed_count"] == 10
    assert metrics["inspect_0"]["processed_count"] == metrics["inspect_1"]["processed_count"] == 5
    assert sum(metrics[f"hashed_{i}"]["processed_count"] for i in range(3)) == 12   # 10 records + 2 reports
    assert all(m["processed_count"] == m["records_in"] for name, m in metrics.items() if name != "batch_0")


# -- keyed reduce ----------------------------------------------------------------------------------------

def _fold(fn, pairs):
    state: dict = {}
    for key, value in pairs:
        state[key] = fn(state[key], value) if key in state else value
    return state


def _running(fn, pairs):
    state: dict = {}
    out = []
    for key, value in pairs:
        state[key] = fn(state[key], value) if key in state else value
        out.append((key, state[key]))
    return out


def ordered_fold(acc, value):
    """Not commutative: also checks that a key's records are folded in their order."""
    return (acc * 31 + value) % 1_000_003


_settings = settings(max_examples=6, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.mark.backends(*NO_RAY)
@_settings
@given(pairs=st.lists(st.tuples(st.integers(-3, 6), st.integers(-1000, 1000)), max_size=150),
       parallelism=st.integers(1, 4), running=st.booleans())
def test_keyed_reduce_equals_a_python_fold(backend, pairs, parallelism, running):
    # One environment per example, closed at its end (the fixture's own closes only at the test's end).
    with tempfile.TemporaryDirectory() as tmp, backend.make_env("reduce", env_dir=tmp) as env:
        stream = env.from_batch(pairs).keyby(lambda p: p[0]).map(lambda p: p[1], parallelism=parallelism)
        # ordered_fold is not associative: no combiner (it would fold partials, not records)
        result = stream.reduce(ordered_fold, parallelism=parallelism, combine=False,
                               emit="running" if running else "final").collect()
        env.submit()
    got = result.results()
    if running:
        assert collections.Counter(got) == collections.Counter(_running(ordered_fold, pairs))
    else:
        assert len(got) == len({k for k, _ in pairs})   # one record per key
        assert dict(got) == _fold(ordered_fold, pairs)


def test_wordcount_example_equals_counter(backend):
    lines = generate_lines(3000)
    env = backend.make_env("wordcount")
    result = build_wordcount(env, lines, parallelism=3)
    env.submit()
    got = result.results()
    expected = collections.Counter(w for line in lines for w in line.lower().split())
    assert len(got) == len(expected)          # exactly one (word, count) per word
    assert dict(got) == dict(expected)


def test_reduce_errors_name_what_is_wrong():
    with LocalEnvironment("x") as env:
        stream = env.from_batch(range(3))
        with pytest.raises(ValueError, match=r"reduce\(\) needs a keyed stream: call .keyby\(selector\) first"):
            stream.reduce(lambda a, b: a + b)
        with pytest.raises(ValueError, match=r"reduce\(\) needs a keyed stream"):
            stream.keyby(lambda x: x, strategy="broadcast").reduce(lambda a, b: a + b)
        with pytest.raises(ValueError, match="emit must be 'final' or 'running', got 'each'"):
            stream.keyby(lambda x: x).reduce(lambda a, b: a + b, emit="each")
