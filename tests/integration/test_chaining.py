"""Operator chaining (issue 19): operators joined by a forward edge run in one task and pass records by
call. Results must not depend on it, on any backend; what users see per operator (metrics, errors, the
order of open and close) must stay as if each had its own task.
"""

from __future__ import annotations

import collections
import os
import time

import numpy as np
import pytest

from procflow import CoMapFunction, FlatMapFunction, JobFailedError, MapFunction, SinkFunction
from procflow.core.splits import Split, SplitSource

from .conftest import CORE, NO_RAY, SPAWN
from .test_operators import CASES, EXPECTED, multiset

pytestmark = pytest.mark.timeout(120)


class Numbers(SplitSource):
    """range(n) in index-range splits: a splittable source, whose parallelism follows its map's."""

    def __init__(self, n: int, splits: int = 8) -> None:
        self.n = n
        self.splits = splits

    def plan_splits(self, parallelism):
        bounds = [self.n * i // self.splits for i in range(self.splits + 1)]
        return [Split(i, (bounds[i], bounds[i + 1]), bounds[i + 1] - bounds[i]) for i in range(self.splits)]

    def read_split(self, split):
        return range(*split.descriptor)


def _double(x):
    return 2 * x


def _odd_tens(x):
    return (x // 10) % 2 == 1


class ToFiles(SinkFunction):
    """Each instance writes its records, one repr a line, to its own file in `folder`."""

    def __init__(self, folder):
        self.folder = folder

    def open(self):
        self.file = open(os.path.join(self.folder, f"part-{self.ctx.parallel_index}"), "w")

    def execute(self, record):
        self.file.write(f"{record!r}\n")

    def close(self):
        self.file.close()


def read_parts(folder):
    lines = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as f:
            lines += f.read().split("\n")[:-1]
    return lines


class CountAtEnd(FlatMapFunction):
    """Counts per key, emits the counts at end of input: records that leave during finish."""

    def open(self):
        self.counts = collections.Counter()

    def execute(self, record):
        self.counts[record % 5] += 1
        return [record]

    def handle_stop_signal(self, signal):
        return [("count", k, n) for k, n in sorted(self.counts.items())]


def chain_map_filter_flatmap_collect(env, folder):
    stream = (env.from_batch(Numbers, 3000).map(_double, parallelism=3).filter(_odd_tens, parallelism=3)
              .flatmap(lambda x: [x, -x], parallelism=3))
    return {"out": stream.collect(parallelism=3)}


def chain_sink_tail(env, folder):
    env.from_batch(Numbers, 2000).map(_double, parallelism=2).sink(ToFiles, folder, parallelism=2)
    return {"sink": lambda: read_parts(folder)}


def chain_emits_at_end_into_the_next_member(env, folder):
    stream = env.from_batch(range(500)).flatmap(CountAtEnd).map(lambda r: r if isinstance(r, tuple) else r + 1)
    return {"out": stream.collect()}


def chain_skips_and_dead_letters_in_the_middle(env, folder):
    def fragile(x):
        if x % 7 == 0:
            raise ValueError(x)
        return x

    def brittle(x):
        if x % 11 == 0:
            raise ValueError(x)
        return x

    stream = (env.from_batch(Numbers, 700).map(fragile, parallelism=2, on_error="skip")
              .map(brittle, parallelism=2, on_error="dead_letter").map(_double, parallelism=2))
    return {"out": stream.collect()}


def chain_before_a_shuffle_and_after_it(env, folder):
    stream = (env.from_batch(Numbers, 1000).map(_double, parallelism=2).keyby(lambda x: x % 3)
              .reduce(lambda a, b: a + b, parallelism=2))
    return {"out": stream.map(lambda kv: (kv[0], kv[1] * 10), parallelism=2).collect()}


def chain_arrays(env, folder):
    stream = env.from_batch(range(40)).map(lambda i: np.full(1000, i, dtype=np.int32)).map(lambda a: a * 2)
    return {"out": stream.map(lambda a: (int(a[0]), int(a.sum()))).collect()}


def chain_two_chains_meet_in_a_comap(env, folder):
    left = env.from_batch(Numbers, 300).map(_double, parallelism=2)
    right = env.from_batch(range(50)).map(lambda x: x + 1)
    return {"out": left.connect(right).comap(TwoWay, parallelism=2).collect()}


class TwoWay(CoMapFunction):
    def map0(self, record):
        return ("left", record)

    def map1(self, record):
        return ("right", record)


CHAINED = {
    chain_map_filter_flatmap_collect: {"out": [y for x in range(3000) if _odd_tens(2 * x) for y in (2 * x, -2 * x)]},
    chain_sink_tail: {"sink": [repr(2 * x) for x in range(2000)]},
    chain_emits_at_end_into_the_next_member: {"out": [x + 1 for x in range(500)]
                                              + [("count", k, 100) for k in range(5)]},
    chain_skips_and_dead_letters_in_the_middle: {"out": [2 * x for x in range(700) if x % 7 and x % 11]},
    chain_before_a_shuffle_and_after_it: {"out": [(k, 10 * sum(2 * x for x in range(1000) if (2 * x) % 3 == k))
                                                  for k in range(3)]},
    chain_arrays: {"out": [(2 * i, 2 * i * 1000) for i in range(40)]},
    chain_two_chains_meet_in_a_comap: {"out": [("left", 2 * x) for x in range(300)]
                                       + [("right", x + 1) for x in range(50)]},
}


def run_case(case, backend, tmp_path, chaining):
    out = tmp_path / f"{case.__name__}-{chaining}"
    out.mkdir()
    env = backend.make_env(f"chain-{case.__name__}", chaining=chaining)
    handles = case(env, str(out))
    chains = [c for c in env.compile().chains.values() if len(c) > 1]
    env.submit()
    return {label: (h() if callable(h) else h.results()) for label, h in handles.items()}, chains


@pytest.mark.backends(*NO_RAY)
@pytest.mark.parametrize("case", list(CHAINED), ids=lambda c: c.__name__)
def test_chained_operators_give_the_same_records_with_chaining_on_and_off(case, backend, tmp_path):
    for chaining in (True, False):
        got, chains = run_case(case, backend, tmp_path, chaining)
        assert bool(chains) == chaining, chains   # each case does chain, and only when asked to
        for label, expected in CHAINED[case].items():
            assert multiset(got[label]) == multiset(expected), (chaining, label)


@pytest.mark.backends(*NO_RAY)
def test_the_operator_table_gives_the_plain_python_result_with_chaining_off(backend, tmp_path):
    """test_operators.py runs its table with chaining on (the default); here, off."""
    for case in CASES:
        got, chains = run_case(case, backend, tmp_path, False)
        assert not chains
        for label, expected in EXPECTED[case].items():
            assert multiset(got[label]) == multiset(expected), (case.__name__, label)


RAY_CHAINED = [chain_map_filter_flatmap_collect, chain_emits_at_end_into_the_next_member,
               chain_skips_and_dead_letters_in_the_middle]


@pytest.mark.backends("ray")
@pytest.mark.parametrize("case", RAY_CHAINED, ids=lambda c: c.__name__)
def test_chained_operators_give_the_same_records_on_ray(case, backend, tmp_path):
    test_chained_operators_give_the_same_records_with_chaining_on_and_off(case, backend, tmp_path)


@pytest.mark.backends(*CORE, *SPAWN)
def test_a_splittable_source_follows_its_map_and_each_chain_is_one_task(backend):
    env = backend.make_env("follow")
    result = (env.from_batch(Numbers, 10_000).map(_double, parallelism=2).filter(_odd_tens, parallelism=2)
              .collect(parallelism=2))
    assert env.compile().chains["batch_0"] == ("batch_0", "map_0", "filter_0", "collect_0")
    job = env.submit()
    expected = [2 * x for x in range(10_000) if _odd_tens(2 * x)]
    assert sorted(result.results()) == expected
    m = job.metrics
    for i in (0, 1):   # one pid per chain; every operator keeps its own row
        assert m[f"batch_{i}"]["pid"] == m[f"map_{i}"]["pid"] == m[f"filter_{i}"]["pid"] == m[f"collect_{i}"]["pid"]
        assert m[f"map_{i}"]["records_in"] == m[f"batch_{i}"]["records_out"] == m[f"map_{i}"]["records_out"]
        assert m[f"filter_{i}"]["records_in"] == m[f"map_{i}"]["records_out"]
        assert m[f"collect_{i}"]["records_in"] == m[f"filter_{i}"]["records_out"]
    assert m["batch_0"]["records_out"] + m["batch_1"]["records_out"] == 10_000
    assert m["collect_0"]["records_in"] + m["collect_1"]["records_in"] == len(expected)
    if not backend.in_driver:
        assert m["batch_0"]["pid"] != m["batch_1"]["pid"]
    assert job.summary()["source_records"] == 10_000


@pytest.mark.backends(*NO_RAY)
def test_a_source_whose_parallelism_was_given_keeps_it(backend):
    env = backend.make_env("given")
    result = env.from_batch(Numbers, 1000, parallelism=1).map(_double, parallelism=2).collect()
    graph = env.compile()
    assert [n for n in graph.nodes if n.startswith("batch")] == ["batch_0"]
    assert all(len(chain) == 1 for chain in graph.chains.values())
    job = env.submit()
    assert sorted(result.results()) == [2 * x for x in range(1000)]
    assert job.metrics["batch_0"]["records_out"] == 1000


def _nap(x):
    time.sleep(0.002)
    return x


@pytest.mark.backends("local-shm", "inline", "ray")
def test_busy_time_is_measured_per_operator_inside_a_chain(backend):
    env = backend.make_env("busy")
    env.from_batch(range(150)).map(lambda x: x).map(_nap, name="slow").map(lambda x: x, name="fast").collect()
    assert env.compile().chains["batch_0"] == ("batch_0", "map_0", "slow_0", "fast_0")
    job = env.submit()
    m = job.metrics
    assert m["slow_0"]["busy_s"] >= 150 * 0.002 * 0.9
    # the time spent in the slow operator is its own, not its neighbours'
    assert m["map_0"]["busy_s"] < m["slow_0"]["busy_s"] / 4
    assert m["fast_0"]["busy_s"] < m["slow_0"]["busy_s"] / 4
    assert m["batch_0"]["busy_s"] < m["slow_0"]["busy_s"] / 4


class FailOn(MapFunction):
    def __init__(self, bad):
        self.bad = bad

    def execute(self, record):
        if record == self.bad:
            raise ValueError(f"cannot handle {record}")
        return record


def test_a_failure_inside_a_chain_names_its_operator_and_record(backend):
    env = backend.make_env("fails")
    (env.from_batch(range(5000)).map(lambda x: x, name="before", on_error="skip")
     .map(FailOn, 1234, name="failing").map(lambda x: x, name="after").collect())
    assert env.compile().chains["batch_0"] == ("batch_0", "before_0", "failing_0", "after_0")
    with pytest.raises(JobFailedError) as info:
        env.submit()
    err = info.value
    # not the source, nor the operator before it (whose on_error="skip" must not swallow it)
    assert err.task == "failing_0" and "task failing_0" in str(err)
    assert err.record == "1234" and "FailOn" in str(err) and err.error_type == "ValueError"
    assert "cannot handle 1234" in err.remote_traceback
    assert env.job.metrics["before_0"]["errors"] == 0


class Closing(MapFunction):
    """Writes `open <name>` / `close <name>` lines: the order of the hooks across a chain."""

    def __init__(self, path, fail_close=False):
        self.path = path
        self.fail_close = fail_close

    def _log(self, what):
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{what} {self.ctx.name}\n".encode())
        finally:
            os.close(fd)

    def open(self):
        self._log("open")

    def execute(self, record):
        return record

    def close(self):
        self._log("close")
        if self.fail_close:
            raise RuntimeError("cannot close")


def test_a_chains_functions_open_and_close_in_chain_order(backend, tmp_path):
    path = str(tmp_path / "hooks")
    env = backend.make_env("order")
    result = (env.from_batch(range(100)).map(Closing, path, name="a").map(Closing, path, name="b")
              .map(Closing, path, name="c").collect())
    env.submit()
    assert sorted(result.results()) == list(range(100))
    with open(path) as f:
        assert f.read().split("\n")[:-1] == ["open a_0", "open b_0", "open c_0",
                                             "close a_0", "close b_0", "close c_0"]


def test_a_failing_close_inside_a_chain_names_its_operator(backend, tmp_path):
    env = backend.make_env("close-fails")
    path = str(tmp_path / "hooks")
    (env.from_batch(range(10)).map(Closing, path, name="a").map(Closing, path, True, name="b")
     .map(Closing, path, name="c").collect())
    with pytest.raises(JobFailedError, match="cannot close") as info:
        env.submit()
    assert info.value.task == "b_0"


@pytest.mark.backends(*NO_RAY)
def test_the_escape_hatches_split_chains(backend):
    def build(env, hatch):
        mapped = env.from_batch(Numbers, 2000).map(_double, parallelism=2)
        stream = mapped.filter(_odd_tens, parallelism=2)
        if hatch == "start_new_chain":
            stream.start_new_chain()
        elif hatch == "disable_chaining":
            mapped.disable_chaining()
        return stream.map(lambda x: x + 1, parallelism=2, name="last").collect()

    expected = sorted(2 * x + 1 for x in range(2000) if _odd_tens(2 * x))
    for hatch, chaining, chain in [
            ("start_new_chain", True, ("batch_0", "map_0")),
            ("disable_chaining", True, ("batch_0",)),
            (None, False, ("batch_0",))]:
        env = backend.make_env(f"hatch-{hatch}", chaining=chaining)
        result = build(env, hatch)
        graph = env.compile()
        assert graph.chain("batch_0") == chain, hatch
        job = env.submit()
        assert sorted(result.results()) == expected, hatch
        if not backend.in_driver:
            assert job.metrics["batch_0"]["pid"] != job.metrics["filter_0"]["pid"], hatch
