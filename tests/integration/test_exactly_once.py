"""Exactly once, per-edge order and total order, over random chains of map/filter/flatmap/keyby.

Every stage stamps its output with (task name, sequence number) and checks, on input, that the stamps of
each upstream task only increase: records from one upstream instance to one downstream instance keep
their order. A stage that sees an out-of-order record raises, which fails the job. On every backend: the random
search on the local ones and inline (Ray would pay seconds of actor start-up per example), the fixed
chain and the edge cases on Ray too.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from procflow import BatchFunction, FilterFunction, FlatMapFunction, MapFunction
from procflow.testing import child_pids, own_segments

from .conftest import CORE, NO_RAY, SPAWN, assert_no_leaks

MAPS = {
    "affine": lambda v: v * 3 + 1,
    "half": lambda v: v // 2,
    "neg": lambda v: -v,
}
FILTERS = {
    "not3": lambda v: v % 3 != 0,
    "even": lambda v: v % 2 == 0,
    "small": lambda v: abs(v) < 700,
}
FLATMAPS = {
    "dup_odd": lambda v: [v, v + 1] if v % 2 else [],
    "rep": lambda v: [v] * (v % 3),
    "one": lambda v: (v,),
}
KEYS = {
    "mod5": lambda v: v % 5,
    "ident": lambda v: v,
    "zero": lambda v: 0,          # one falsy key for everything
    "parity_str": lambda v: "" if v % 2 == 0 else "odd",
}


class _Stamps:
    def open(self):
        self._last: dict = {}
        self._seq = 0

    def check(self, record):
        value, origin, seq = record
        if seq <= self._last.get(origin, 0):
            raise AssertionError(f"{self.ctx.name}: record {record} from {origin} arrived out of order "
                                 f"(after seq {self._last[origin]})")
        self._last[origin] = seq
        return value

    def stamp(self, value):
        self._seq += 1
        return [value, self.ctx.name, self._seq]


class StampedBatch(BatchFunction):
    """Instance i of n emits values[i::n], stamped; None ends the batch."""

    def __init__(self, values):
        self.values = values

    def open(self):
        self._it = iter(self.values[self.ctx.parallel_index::self.ctx.parallelism])
        self._seq = 0

    def execute(self):
        for v in self._it:
            self._seq += 1
            return [v, self.ctx.name, self._seq]
        return None


class CheckedMap(_Stamps, MapFunction):
    def __init__(self, fn):
        self.fn = fn

    def execute(self, record):
        return self.stamp(MAPS[self.fn](self.check(record)))


class CheckedFilter(_Stamps, FilterFunction):
    def __init__(self, fn):
        self.fn = fn

    def execute(self, record):
        keep = FILTERS[self.fn](self.check(record))
        if keep:   # the filter forwards this very object: restamp it as this task's output
            self._seq += 1
            record[1], record[2] = self.ctx.name, self._seq
        return keep


class CheckedFlatMap(_Stamps, FlatMapFunction):
    def __init__(self, fn):
        self.fn = fn

    def execute(self, record):
        return [self.stamp(v) for v in FLATMAPS[self.fn](self.check(record))]


def build(env, values, source_parallelism, ops):
    stream = env.from_batch(StampedBatch, values, parallelism=source_parallelism)
    for op, fn, arg in ops:
        if op == "map":
            stream = stream.map(CheckedMap, fn, parallelism=arg)
        elif op == "filter":
            stream = stream.filter(CheckedFilter, fn, parallelism=arg)
        elif op == "flatmap":
            stream = stream.flatmap(CheckedFlatMap, fn, parallelism=arg)
        else:
            key = KEYS[fn]
            stream = stream.keyby(lambda r, key=key: key(r[0]), strategy=arg)
    return stream.collect()


def evaluate(values, ops):
    """The same pipeline in plain Python, one record at a time."""
    out = list(values)
    for op, fn, _ in ops:
        if op == "map":
            out = [MAPS[fn](v) for v in out]
        elif op == "filter":
            out = [v for v in out if FILTERS[fn](v)]
        elif op == "flatmap":
            out = [w for v in out for w in FLATMAPS[fn](v)]
    return out


def check_result(records, values, ops, ordered):
    expected = evaluate(values, ops)
    got = [r[0] for r in records]
    assert len(got) == len(expected)
    assert Counter(got) == Counter(expected)
    last: dict = {}
    for _, origin, seq in records:          # per-edge order into the collect task
        assert seq > last.get(origin, 0)
        last[origin] = seq
    if ordered:
        assert got == expected


parallelism = st.integers(1, 4)
op = st.one_of(
    st.tuples(st.just("map"), st.sampled_from(sorted(MAPS)), parallelism),
    st.tuples(st.just("filter"), st.sampled_from(sorted(FILTERS)), parallelism),
    st.tuples(st.just("flatmap"), st.sampled_from(sorted(FLATMAPS)), parallelism),
    st.tuples(st.just("keyby"), st.sampled_from(sorted(KEYS)), st.sampled_from(["hash", "round_robin"])),
)


@pytest.mark.timeout(240)
@pytest.mark.backends(*NO_RAY)
@settings(max_examples=15, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(n=st.integers(0, 5000), seed=st.integers(0, 2**16), source_parallelism=parallelism,
       ops=st.lists(op, max_size=4), all_ones=st.booleans())
def test_random_chains_deliver_exactly_once(backend, n, seed, source_parallelism, ops, all_ones):
    if all_ones:   # parallelism 1 everywhere: the whole order must be kept
        source_parallelism = 1
        ops = [(o, f, 1 if o != "keyby" else a) for o, f, a in ops]
    rng = random.Random(seed)
    values = [rng.randrange(-1000, 1000) for _ in range(n)]
    children, segments = child_pids(), own_segments()
    env = backend.make_env()
    result = build(env, values, source_parallelism, ops)
    job = env.submit()
    assert job.status == "finished"
    ordered = source_parallelism == 1 and all(o == "keyby" or a == 1 for o, _, a in ops)
    check_result(result.results(), values, ops, ordered)
    env.close()
    assert_no_leaks(children, segments)


CHAIN = [("map", "affine", 2), ("keyby", "mod5", "hash"), ("flatmap", "dup_odd", 1), ("filter", "not3", 2),
         ("keyby", "ident", "round_robin"), ("map", "half", 1)]


@pytest.mark.timeout(60)
@pytest.mark.backends(*CORE, *SPAWN)
def test_a_fixed_chain_delivers_exactly_once(backend):
    values = list(range(-2000, 3000))
    random.Random(3).shuffle(values)
    env = backend.make_env()
    result = build(env, values, 1, CHAIN)
    env.submit()
    check_result(result.results(), values, CHAIN, ordered=False)


@pytest.mark.timeout(60)
def test_parallelism_one_keeps_the_total_order(backend):
    values = list(range(5_000))
    random.Random(4).shuffle(values)
    ops = [(o, f, 1 if o != "keyby" else a) for o, f, a in CHAIN]
    env = backend.make_env()
    result = build(env, values, 1, ops)
    env.submit()
    check_result(result.results(), values, ops, ordered=True)


class NoneThenMore(BatchFunction):
    def __init__(self):
        self.items = iter([1, 2, None, 3])

    def execute(self):
        return next(self.items)


@pytest.mark.timeout(60)
def test_from_batch_keeps_none_as_data_and_batch_function_none_ends(backend):
    env = backend.make_env()
    data = [None, 0, None, "", (), None]
    listed = env.from_batch(data).collect()
    ended = env.from_batch(NoneThenMore).collect()
    env.submit()
    assert listed.results() == data
    assert ended.results() == [1, 2]


@pytest.mark.timeout(60)
def test_empty_source_finishes(backend):
    env = backend.make_env()
    result = env.from_batch([]).map(lambda x: x, parallelism=3).collect()
    job = env.submit()
    assert result.results() == [] and job.status == "finished"
