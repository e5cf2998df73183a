"""Sources and maps move cheap records in chunks; a slow generator or function must not be held back
by that: each record still leaves within about one flush interval."""

from __future__ import annotations

import statistics
import time
from types import SimpleNamespace

import pytest

from procflow import BatchFunction
from procflow.core.functions import CallableMap
from procflow.runtime.operators.transforms import MapOperator

# Generous for a loaded 2-core CI machine, and far below what hoarding would cost: records that took
# SLOW_S each to produce and waited for a chunk of even 32 would wait about 0.1 s.
LATENCY_BOUND = 0.05
SLOW_S = 0.003


class SlowStamps:
    """An iterable (picklable, unlike a generator) whose items take SLOW_S each to produce."""

    def __init__(self, n):
        self.n = n

    def __iter__(self):
        for _ in range(self.n):
            time.sleep(SLOW_S)           # stands for slow work (a read, a parse), not for synchronisation
            yield time.monotonic()


class SlowStampSource(BatchFunction):
    """The same through a BatchFunction, whose records the source gathers into chunks."""

    def __init__(self, n):
        self.n = n

    def execute(self):
        if self.n == 0:
            return None
        self.n -= 1
        time.sleep(SLOW_S)               # slow work
        return time.monotonic()


def age(stamp):
    return time.monotonic() - stamp       # CLOCK_MONOTONIC is one clock for every process


def slow_stamp(i):
    time.sleep(SLOW_S)                    # slow work
    return time.monotonic()


SLOW_PIPELINES = {
    "iterable source": lambda env: env.from_batch(SlowStamps(100)),
    "batch function": lambda env: env.from_batch(SlowStampSource, 100),
    "map": lambda env: env.from_batch(range(100)).map(slow_stamp),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("slow", list(SLOW_PIPELINES))
def test_a_slow_stage_sends_each_record_promptly(make_env, slow):
    env = make_env()
    out = SLOW_PIPELINES[slow](env).map(age).collect()
    env.submit(autostop=True)
    ages = out.results()
    assert len(ages) == 100
    assert statistics.median(ages) < LATENCY_BOUND, f"records waited {statistics.median(ages):.3f}s"


@pytest.mark.timeout(60)
def test_cheap_records_flow_in_chunks_and_arrive_complete_and_in_order(make_env):
    env = make_env()
    out = env.from_batch(range(50_000)).map(lambda x: x * 2).collect()
    job = env.submit(autostop=True)
    assert out.results() == [x * 2 for x in range(50_000)]      # one map instance: order is kept
    assert job.metrics["map_0"]["records_in"] == job.metrics["map_0"]["records_out"] == 50_000


class RecordingRouter:
    routes_many = True

    def __init__(self):
        self.sent = []

    def route_many(self, records):
        self.sent += records

    def route(self, record, key, keyed):
        raise AssertionError("unkeyed chunks must not be routed record by record")

    fast_route = route


def _fails_at_3(x):
    if x == 3:
        raise ValueError("bad record")
    return x


@pytest.mark.parametrize("kind, function, sent_before_failure", [
    ("map", lambda x: _fails_at_3(x) / 2, [0.0, 1.0, 2.0, 3.0]),
    ("filter", lambda x: _fails_at_3(x) % 4 == 0, [0, 4]),
    ("flatmap", lambda x: [_fails_at_3(x)] * 2, [0, 0, 2, 2, 4, 4, 6, 6]),
    ("sink", _fails_at_3, []),
])
def test_process_many_sends_what_was_done_before_a_failure_and_names_the_failing_record(
        kind, function, sent_before_failure):
    from procflow.core.functions import CallableFilter, CallableFlatMap, CallableSink
    from procflow.runtime.operators.transforms import FilterOperator, FlatMapOperator, SinkOperator

    operator_class, wrapper = {"map": (MapOperator, CallableMap), "filter": (FilterOperator, CallableFilter),
                               "flatmap": (FlatMapOperator, CallableFlatMap),
                               "sink": (SinkOperator, CallableSink)}[kind]
    router = RecordingRouter()
    op = operator_class(wrapper(function), SimpleNamespace(router=router))
    op.open()
    assert op.chunked
    op.process_many([0, 2])
    with pytest.raises(ValueError):
        op.process_many([4, 6, 3, 8])
    assert op.completed == 2                        # records 4 and 6 were done, 3 failed
    assert router.sent == sent_before_failure       # and their results still left


def test_one_huge_flatmap_expansion_leaves_in_bounded_lists():
    from procflow.core.functions import CallableFlatMap
    from procflow.runtime.operators.transforms import FlatMapOperator

    sizes = []
    router = RecordingRouter()
    router.route_many = lambda records: sizes.append(len(records))
    op = FlatMapOperator(CallableFlatMap(range), SimpleNamespace(router=router))
    op.open()
    op.process_many([10_000, 5])
    assert sum(sizes) == 10_005 and max(sizes) <= FlatMapOperator._SEND_AT
