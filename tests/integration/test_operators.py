"""What every operator kind computes, on every backend: each case is a small pipeline with a plain-Python
expectation, and each backend must give exactly those records (as multisets: instances interleave).

Once lived in test_inline.py, comparing the inline executor with the process one; comparing every
backend with plain Python says the same and more (a case that is wrong everywhere fails too).
"""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest

from procflow import (
    BatchFunction,
    CoMapFunction,
    FlatMapFunction,
    JoinFunction,
    MapFunction,
    SinkFunction,
    StopSignal,
)
from procflow.runtime.communication.router import stable_hash

from .conftest import NO_RAY

pytestmark = pytest.mark.timeout(60)


class TagIndex(MapFunction):
    def execute(self, record):
        return (self.ctx.parallel_index, record)


class PairJoin(JoinFunction):
    """Symmetric hash join: emits (left, right) whenever a record meets the other side's records."""

    def open(self):
        self.sides = (collections.defaultdict(list), collections.defaultdict(list))

    def execute(self, payload, key, tag):
        self.sides[tag][key].append(payload)
        others = self.sides[1 - tag][key]
        return [(payload, o) if tag == 0 else (o, payload) for o in others]


class TwoWay(CoMapFunction):
    def map0(self, record):
        return ("left", record)

    def map1(self, record):
        return ("right", record * 10)


class KeyedCounter(FlatMapFunction):
    """Counts records per key and emits the counts only at end of input (handle_stop_signal)."""

    def open(self):
        self.counts = collections.Counter()

    def execute(self, record):
        self.counts[self.ctx.get_key()] += 1
        return []

    def handle_stop_signal(self, signal):
        assert isinstance(signal, StopSignal)
        return sorted(self.counts.items())


class FileSink(SinkFunction):
    def __init__(self, directory):
        self.directory = directory

    def open(self):
        self.file = open(os.path.join(self.directory, f"{self.ctx.name}.txt"), "w")

    def execute(self, record):
        self.file.write(f"{record!r}\n")

    def close(self):
        self.file.close()


class Trailer(BatchFunction):
    """A batch source that emits one more record from handle_stop_signal."""

    def __init__(self, n):
        self.n, self.i = n, 0

    def execute(self):
        self.i += 1
        return self.i if self.i <= self.n else None

    def handle_stop_signal(self, signal):
        return ["trailer"]


def fails_on_multiples_of_ten(x):
    if x % 10 == 0:
        raise ValueError(f"bad {x}")
    return x + 1


def _mixed(x):
    """Records of every shape the codec handles: plain, tuples, None, dicts, arrays, objects."""
    kind = x % 5
    if kind == 0:
        return None
    if kind == 1:
        return (x, str(x))
    if kind == 2:
        return {"x": x, "l": [x, x]}
    if kind == 3:
        return np.arange(x % 7, dtype=np.int32)
    return complex(x, 1)   # not msgpack-able: pickled


# Each case: build(env, tmp) -> {label: CollectResult or callable}; EXPECTED[case] -> {label: list}
def case_map(env, tmp):
    return {"out": env.from_batch(range(300)).map(lambda x: x * 2, parallelism=2).collect()}


def case_balance(env, tmp):
    # inline and Ray channels report no progress: balance() is round robin there, with the same records
    return {"out": env.from_batch(range(300)).balance().map(lambda x: x * 2, parallelism=3)
            .balance().filter(lambda x: x % 3, parallelism=2).collect()}


def case_filter(env, tmp):
    return {"out": env.from_batch(range(300)).filter(lambda x: x % 3 == 0, parallelism=3).collect()}


def case_flatmap(env, tmp):
    return {"out": env.from_batch(range(100), parallelism=2).flatmap(lambda x: [x] * (x % 3), parallelism=2)
            .collect()}


def case_keyby_hash(env, tmp):
    stream = env.from_batch(range(200)).keyby(lambda x: x % 11).map(TagIndex, parallelism=3)
    return {"out": stream.collect()}


def case_keyed_stays_keyed(env, tmp):
    stream = (env.from_batch(range(200)).keyby(lambda x: x % 5).map(lambda x: x + 1, parallelism=2)
              .map(TagIndex, parallelism=3))
    return {"out": stream.collect()}


def case_broadcast(env, tmp):
    return {"out": env.from_batch(range(50)).keyby(lambda x: x, strategy="broadcast")
            .map(TagIndex, parallelism=3).collect()}


def case_join(env, tmp):
    left = env.from_batch([(k, f"l{k}") for k in range(30)])
    right = env.from_batch([(k % 15, f"r{k}") for k in range(45)], parallelism=2)
    joined = left.connect(right).keyby(lambda r: r[0]).join(PairJoin, parallelism=3)
    return {"out": joined.collect()}


def case_comap(env, tmp):
    a = env.from_batch(range(40))
    b = env.from_batch(range(25), parallelism=2)
    return {"out": a.connect(b).comap(TwoWay, parallelism=2).collect()}


def case_union_map(env, tmp):
    a = env.from_batch(range(40))
    b = env.from_batch(range(100, 125))
    return {"out": a.connect(b).map(lambda x: -x, parallelism=2).collect()}


def case_reduce_final(env, tmp):
    return {"out": env.from_batch(range(500), parallelism=2).keyby(lambda x: x % 13)
            .reduce(lambda a, b: a + b, parallelism=3).collect()}


def case_reduce_running(env, tmp):
    return {"out": env.from_batch(range(200)).keyby(lambda x: x % 4)
            .reduce(lambda a, b: max(a, b), emit="running", parallelism=2).collect()}


def case_collect_and_sink(env, tmp):
    stream = env.from_batch(range(120)).map(lambda x: x * x, parallelism=2)
    stream.sink(FileSink, tmp, parallelism=3)
    return {"out": stream.collect(), "sink": lambda: _read_lines(tmp)}


def case_mixed_records(env, tmp):
    return {"out": env.from_batch(range(60)).map(_mixed, parallelism=2).collect()}


def case_on_error_skip(env, tmp):
    return {"out": env.from_batch(range(100)).map(fails_on_multiples_of_ten, parallelism=2, on_error="skip")
            .collect()}


def case_on_error_dead_letter(env, tmp):
    return {"out": env.from_batch(range(100)).map(fails_on_multiples_of_ten, parallelism=2,
                                                  on_error="dead_letter").collect(),
            "dead": lambda: [d["record"] for d in env.job.dead_letters]}


def case_handle_stop_signal(env, tmp):
    counted = env.from_batch(range(300), parallelism=2).keyby(lambda x: x % 6).flatmap(KeyedCounter,
                                                                                        parallelism=2)
    return {"out": counted.collect(), "trailer": env.from_batch(Trailer, 5).collect()}


def case_generator_source(env, tmp):
    return {"out": env.from_batch((i * 3 for i in range(100)), parallelism=2).map(TagIndex).collect()}


def case_partitioners(env, tmp):
    ranged = env.from_batch(range(100)).keyby(lambda x: x, strategy=lambda k, n: k * n // 100)
    fanned = env.from_batch(range(30)).keyby(lambda x: x, strategy=lambda k, n: [k % n, (k + 1) % n])
    return {"range": ranged.map(TagIndex, parallelism=4).collect(),
            "fan": fanned.map(TagIndex, parallelism=3).collect()}


def _read_lines(directory):
    lines = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name)) as f:
            lines.extend(f.read().splitlines())
    return lines


EXPECTED = {
    case_map: {"out": [x * 2 for x in range(300)]},
    case_filter: {"out": [x for x in range(300) if x % 3 == 0]},
    case_flatmap: {"out": [x for x in range(100) for _ in range(x % 3)]},
    # the instance is stable_hash(key) % n on every backend, and a key stays with its stream until the
    # next keyby (the +1 map in between keeps it)
    case_keyby_hash: {"out": [(stable_hash(x % 11) % 3, x) for x in range(200)]},
    case_keyed_stays_keyed: {"out": [(stable_hash(x % 5) % 3, x + 1) for x in range(200)]},
    case_broadcast: {"out": [(i, x) for x in range(50) for i in range(3)]},
    case_join: {"out": [((k, f"l{k}"), (k, f"r{j}")) for k in range(30) for j in range(45) if j % 15 == k]},
    case_comap: {"out": [("left", x) for x in range(40)] + [("right", x * 10) for x in range(25)]},
    case_union_map: {"out": [-x for x in [*range(40), *range(100, 125)]]},
    case_reduce_final: {"out": [(k, sum(x for x in range(500) if x % 13 == k)) for k in range(13)]},
    case_reduce_running: {"out": [(x % 4, x) for x in range(200)]},
    case_collect_and_sink: {"out": [x * x for x in range(120)], "sink": [repr(x * x) for x in range(120)]},
    case_mixed_records: {"out": [_mixed(x) for x in range(60)]},
    case_on_error_skip: {"out": [x + 1 for x in range(100) if x % 10]},
    case_on_error_dead_letter: {"out": [x + 1 for x in range(100) if x % 10], "dead": list(range(0, 100, 10))},
    case_handle_stop_signal: {"out": [(k, 50) for k in range(6)], "trailer": [1, 2, 3, 4, 5, "trailer"]},
    case_generator_source: {"out": [(0, i * 3) for i in range(100)]},
    case_balance: {"out": [x * 2 for x in range(300) if (x * 2) % 3]},
    case_partitioners: {"range": [(x * 4 // 100, x) for x in range(100)],
                        "fan": [(i, x) for x in range(30) for i in (x % 3, (x + 1) % 3)]},
}
CASES = list(EXPECTED)


def multiset(records):
    # repr: numpy arrays, dicts and None compare by what they print (an array has no boolean ==)
    return collections.Counter(repr(r) for r in records)


def run_case(case, backend, tmp_path):
    """Runs one case in a fresh environment of `backend`: {label: the records it gave}."""
    tmp = tmp_path / "sink"
    tmp.mkdir()
    env = backend.make_env(f"case-{case.__name__[5:]}")
    handles = case(env, str(tmp))
    env.submit()
    return {label: (h() if callable(h) else h.results()) for label, h in handles.items()}


@pytest.mark.backends(*NO_RAY)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[5:])
def test_case_gives_the_plain_python_result(case, backend, tmp_path):
    got = run_case(case, backend, tmp_path)
    assert got.keys() == EXPECTED[case].keys()
    for label, expected in EXPECTED[case].items():
        assert multiset(got[label]) == multiset(expected), label


# Ray pays ~0.5-1 s per task actor on 2 cores: these cases cover its share of the table (keyed state
# through a chain, a running reduce, every record shape of the codec, dead letters, handle_stop_signal
# with a source's trailer, a sink beside a collect). Plain map/filter/flatmap, hash placement,
# broadcast, join, comap and custom partitioners run on Ray in test_routing.py and test_lifecycle.py.
RAY_CASES = [case_keyed_stays_keyed, case_reduce_running, case_mixed_records, case_on_error_dead_letter,
             case_handle_stop_signal, case_collect_and_sink]


@pytest.mark.backends("ray")
@pytest.mark.parametrize("case", RAY_CASES, ids=lambda c: c.__name__[5:])
def test_case_gives_the_plain_python_result_on_ray(case, backend, tmp_path):
    test_case_gives_the_plain_python_result(case, backend, tmp_path)

@pytest.mark.backends("ray")
def test_a_generator_source_cannot_ship_to_ray(backend):
    """The documented difference: a generator is state of the driver process. Forked tasks inherit it and
    inline runs it in place; a Ray actor (like a spawned process) must receive a pickled copy, and a
    generator cannot be pickled, so the job fails at submit saying so."""
    env = backend.make_env("generator")
    case_generator_source(env, "")
    with pytest.raises(TypeError, match="generator"):
        env.submit()
