"""Chunk sizing: chunks grow while cheap, shrink when one outlasts the flush interval, and a function
source lets a chunk wait at most HOLD_S for its next record."""

from __future__ import annotations

from types import SimpleNamespace

from procflow import BatchFunction
from procflow.runtime.chunking import CHUNK_MAX, HOLD_S, ChunkSize
from procflow.runtime.operators import source


def test_cheap_chunks_grow_to_the_cap_and_stay_there():
    sizes = ChunkSize(interval=0.001)
    assert sizes.size == 1            # the first record never waits for a chunk
    for _ in range(20):
        sizes.took(1e-6)
    assert sizes.size == CHUNK_MAX


def test_a_chunk_longer_than_the_interval_halves_the_size_down_to_one():
    sizes = ChunkSize(interval=0.001)
    for _ in range(6):
        sizes.took(1e-6)
    assert sizes.size == 64
    sizes.took(0.002)
    assert sizes.size == 32
    for _ in range(10):
        sizes.took(0.002)
    assert sizes.size == 1


def test_a_chunk_between_the_hold_and_one_interval_keeps_the_size():
    sizes = ChunkSize(interval=0.001)
    for _ in range(3):
        sizes.took(1e-6)
    sizes.took(HOLD_S * 2)        # slower than a record should wait, faster than an interval
    assert sizes.size == 8


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class TimedRecords(BatchFunction):
    """A bounded source whose records take `cost` seconds each on a fake clock."""

    def __init__(self, clock, n, cost):
        self.clock, self.left, self.cost = clock, n, cost

    def execute(self):
        if self.left == 0:
            return None
        self.left -= 1
        self.clock.now += self.cost
        return self.left


def run_source(monkeypatch, cost, n=600):
    clock = FakeClock()
    monkeypatch.setattr(source.time, "perf_counter", clock)
    chunks = []
    router = SimpleNamespace(routes_many=True, route_many=lambda records: chunks.append(len(records)))
    function = TimedRecords(clock, n, cost)
    ctx = SimpleNamespace(config={"flush_interval": 0.001}, job_control=SimpleNamespace(stop_requested=False))
    op = source.SourceOperator(function, ctx)
    op.router = router
    assert op._run_function(function, lambda waited=0.0: False, 0.001) == "end of input"
    return chunks


def test_a_function_source_sends_slow_records_one_by_one(monkeypatch):
    chunks = run_source(monkeypatch, cost=HOLD_S * 2)     # a 1 MiB array takes about this long to make
    assert sum(chunks) == 600 and max(chunks) == 1


def test_a_function_source_gathers_cheap_records_into_chunks(monkeypatch):
    chunks = run_source(monkeypatch, cost=1e-7)
    assert sum(chunks) == 600 and max(chunks) == CHUNK_MAX


def run_iterable_source(iterable, parallelism=1, index=0):
    """(records routed, what the router heard was still to come before each chunk)."""
    from procflow.core.functions import IterableBatch

    routed, announced = [], []
    router = SimpleNamespace(routes_many=True, route_many=routed.extend, announce_upcoming=announced.append)
    ctx = SimpleNamespace(config={"flush_interval": 0.001}, parallelism=parallelism, parallel_index=index,
                          job_control=SimpleNamespace(stop_requested=False))
    op = source.SourceOperator(IterableBatch(iterable), ctx)
    op.router = router
    assert op.run(lambda waited=0.0: False) == "end of input"
    return routed, announced


def test_a_source_over_a_sized_input_tells_the_router_how_much_is_still_to_come():
    routed, announced = run_iterable_source(list(range(1000)), parallelism=3, index=1)
    assert routed == list(range(1, 1000, 3))
    assert announced[-1] == 0 and announced == sorted(announced, reverse=True)
    assert announced[0] == 333 - 1            # the first chunk is one record


def test_a_source_over_a_generator_announces_nothing():
    routed, announced = run_iterable_source(x for x in range(100))
    assert routed == list(range(100)) and announced == []


class LengthUnknown(list):
    def __len__(self):
        raise TypeError("no length here")


def test_a_source_whose_input_cannot_tell_its_length_still_sends_everything():
    routed, announced = run_iterable_source(LengthUnknown(range(50)))
    assert routed == list(range(50)) and announced == []
