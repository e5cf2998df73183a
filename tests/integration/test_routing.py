"""Partitioning seen from inside the tasks, on every backend: hash, round-robin, broadcast, balance,
custom; join and comap. Plus what only the local backend shows: hash seeds under spawn and across runs,
and balance() following the consumers' progress."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict

import numpy as np
import pytest

from procflow import BatchFunction, CoMapFunction, JobFailedError, JoinFunction, MapFunction
from procflow.runtime.communication.router import stable_hash

from .conftest import CORE, NO_RAY, SPAWN

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.timeout(60)

WORDS = ["", "a", "b", "key", "é", "zz", "0", "hello world"]


class WhereAmI(MapFunction):
    """(record, this instance, the record's partition key)."""

    def execute(self, record):
        return record, self.ctx.parallel_index, self.ctx.get_key()


class Tagged(BatchFunction):
    """Emits (instance index, i) for i < count."""

    def __init__(self, count):
        self.count = count

    def open(self):
        self.i = 0

    def execute(self):
        if self.i == self.count:
            return None
        self.i += 1
        return self.ctx.parallel_index, self.i


def hash_placement(env, keys, parallelism=3):
    records = [(k, i) for i in range(20) for k in keys]
    result = (env.from_batch(records, parallelism=2).keyby(lambda r: r[0])
              .map(WhereAmI, parallelism=parallelism).collect())
    env.submit()
    placement: dict = {}
    for record, index, key in result.results():
        assert key == record[0] and type(key) is type(record[0])
        assert placement.setdefault(repr(key), index) == index, f"key {key!r} reached two instances"
    assert len(result.results()) == len(records)
    return placement


@pytest.mark.backends(*CORE, *SPAWN)
def test_hash_sends_a_key_to_one_instance_on_every_backend(backend):
    """keyby(hash): the instance is stable_hash(key) % n on every backend and start method."""
    keys = WORDS + [0, False, (), None, 7, (1, "x"), -5, 3.5, b"raw"]
    placement = hash_placement(backend.make_env(), keys)
    assert placement == {repr(k): stable_hash(k) % 3 for k in keys}
    assert len(set(placement.values())) > 1


@pytest.mark.backends(*NO_RAY)
def test_falsy_keys_are_keys(backend):
    env = backend.make_env()
    res = env.from_batch([0, "", ()] * 30).keyby(lambda r: r).map(WhereAmI, parallelism=4).collect()
    env.submit()
    by_key = defaultdict(set)
    for record, index, key in res.results():
        assert key == record and type(key) is type(record)
        by_key[repr(key)].add(index)
    assert {k: len(v) for k, v in by_key.items()} == {"0": 1, "''": 1, "()": 1}
    assert by_key["0"] == {stable_hash(0) % 4}


# Keys whose pickle follows the process's hash seed (a frozenset lists its members in salted order).
SET_KEYS = [frozenset({f"w{i}", f"x{i}", f"y{i}", f"z{i}"}) for i in range(10)]


def test_set_keys_reach_one_instance_under_spawn(make_env, monkeypatch):
    """Issue 22 item 4: under spawn every process draws its own hash seed, and the two source instances
    hashed a frozenset key's pickle, so one key reached several instances (12 groups for 10 keys)."""
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)   # each spawned process draws its own seed
    env = make_env(("shm", "spawn"))
    records = [(k, i) for i in range(6) for k in SET_KEYS]
    result = (env.from_batch(records, parallelism=2).keyby(lambda r: r[0])
              .reduce(lambda a, b: (a[0], a[1] + b[1]), parallelism=3).collect())
    env.submit()
    totals = sorted(total for _, (_, total) in result.results())
    assert len(result.results()) == len(SET_KEYS), "a key was reduced on more than one instance"
    assert totals == [15] * len(SET_KEYS)
    # and each key reaches the instance the driver computes (a set's repr is not canonical: by value)
    env = make_env(("shm", "spawn"))
    placed = (env.from_batch(records, parallelism=2).keyby(lambda r: r[0])
              .map(WhereAmI, parallelism=3).collect())
    env.submit()
    assert {(record[0], index) for record, index, _ in placed.results()} == \
        {(k, stable_hash(k) % 3) for k in SET_KEYS}


@pytest.mark.backends(*NO_RAY)
def test_keys_equal_in_python_are_one_group(backend):
    """Issue 22 item 5: 1, 1.0, True and np.int64(1) are one dict key; they were three groups at
    parallelism 4 and one at parallelism 1."""
    ones = [1, 1.0, True, np.int64(1)]
    env = backend.make_env()
    result = (env.from_batch([ones[i % 4] for i in range(40)], parallelism=2).keyby(lambda r: r)
              .reduce(lambda a, b: a + b, parallelism=4).collect())
    env.submit()
    assert len(result.results()) == 1
    ((key, total),) = result.results()
    assert key == 1 and total == 40
    placement = hash_placement(backend.make_env(), ones, parallelism=4)
    assert set(placement.values()) == {stable_hash(1) % 4}


class Opaque:
    """A key type with no stable hash: its default hash and equality follow the object's identity."""


@pytest.mark.backends(*NO_RAY)
def test_a_key_without_a_stable_hash_fails_the_job_at_the_first_record(backend):
    env = backend.make_env()
    (env.from_batch(range(50)).keyby(lambda r: Opaque())
     .map(WhereAmI, parallelism=2, name="place").collect())
    with pytest.raises(JobFailedError, match=r"operator 'place' by key: cannot hash-partition by a key of "
                                             r"type .*Opaque") as info:
        env.submit()
    assert info.value.record == "0"


_RUN = """
import json, sys
from procflow import LocalEnvironment
sys.path.insert(0, {tests!r})
from integration.test_routing import WORDS, hash_placement
if __name__ == "__main__":
    with LocalEnvironment("hashrun", start_method=sys.argv[1], env_dir={env_dir!r}) as env:
        print(json.dumps(hash_placement(env, WORDS)))
"""


@pytest.mark.timeout(120)
def test_hash_placement_is_the_same_in_separate_runs(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_RUN.format(tests=os.path.join(ROOT, "tests"), env_dir=str(tmp_path / "env")))
    placements = []
    for seed, method in (("1", "fork"), ("999", "fork")):
        out = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": ROOT}, timeout=100)
        assert out.returncode == 0, out.stderr[-3000:]
        placements.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert placements[0] == placements[1]
    assert placements[0] == {repr(k): stable_hash(k) % 3 for k in WORDS}


def test_round_robin_is_even_per_upstream_instance(backend):
    env = backend.make_env()
    result = env.from_batch(Tagged, 1001, parallelism=2).round_robin().map(WhereAmI, parallelism=3).collect()
    env.submit()
    counts = Counter((record[0], index) for record, index, _ in result.results())
    for upstream in (0, 1):
        per = [counts[(upstream, d)] for d in range(3)]
        assert sum(per) == 1001 and max(per) - min(per) <= 1, per
    assert all(key is None for _, _, key in result.results())


class SlowOnInstanceZero(MapFunction):
    """Instance 0 takes 2 ms a record (slow work, not synchronisation); the others take none."""

    def execute(self, record):
        if self.ctx.parallel_index == 0:
            time.sleep(0.002)
        return record, self.ctx.parallel_index


def test_balance_sends_more_records_to_the_instance_that_works_faster(make_env):
    env = make_env()
    result = env.from_batch(range(600)).balance().map(SlowOnInstanceZero, parallelism=2).collect()
    job = env.submit()
    assert sorted(r for r, _ in result.results()) == list(range(600))     # each record exactly once
    per = Counter(index for _, index in result.results())
    # round robin would give the slow instance 300 records (0.6 s of sleeping): balanced, it gets
    # about its first credit's worth while the fast one takes the rest
    assert per[0] < 150 and per[0] + per[1] == 600, per
    assert job.metrics["map_0"]["records_in"] == per[0]


class HeldUntilTheOtherIsNearlyDone(MapFunction):
    """Instance 0 holds its first record until instance 1 has handled `threshold` records (an event
    both inherited at fork), so instance 0 takes nothing meanwhile; a deadline ends the hold where the
    other never gets that many (round robin: half the records each)."""

    def __init__(self, event, threshold):
        self.event, self.threshold, self.handled = event, threshold, 0

    def execute(self, record):
        self.handled += 1
        if self.ctx.parallel_index == 0 and self.handled == 1:
            self.event.wait(10)
        elif self.ctx.parallel_index == 1 and self.handled == self.threshold:
            self.event.set()
        return record, self.ctx.parallel_index


def test_by_default_an_instance_that_is_held_up_gets_fewer_records(make_env):
    # Issue 19: dynamic distribution is the default for an unkeyed fan-out; no balance() here.
    held = multiprocessing.get_context("fork").Event()
    env = make_env()
    # One source instance (parallelism=1) fanning out to two: the default edge, not a chain.
    result = env.from_batch(range(400), parallelism=1).map(HeldUntilTheOtherIsNearlyDone, held, 360,
                                                           parallelism=2).collect()
    job = env.submit()
    assert held.is_set()
    assert sorted(r for r, _ in result.results()) == list(range(400))     # each record exactly once
    per = Counter(index for _, index in result.results())
    # round robin would give each 200: the held instance takes a few credits' worth, then a share of
    # the last 40
    assert per[0] < 100 and job.metrics["map_0"]["records_in"] == per[0], per


@pytest.mark.backends(*NO_RAY)
def test_balance_keeps_every_record_through_fan_in_and_per_record_routing(backend):
    # two balancing upstream instances into three, and a flatmap whose outputs (tuples of keys
    # carried by nobody) go record by record where needed; mp channels fall back to round robin
    env = backend.make_env()
    result = (env.from_batch(Tagged, 500, parallelism=2).balance()
              .flatmap(lambda r: [r, r], parallelism=3).balance().map(WhereAmI, parallelism=2).collect())
    env.submit()
    records = sorted(record for record, _, _ in result.results())
    assert records == sorted([(u, i) for u in (0, 1) for i in range(1, 501)] * 2)


def test_balance_keeps_every_record_and_is_round_robin_without_progress_reports(backend):
    env = backend.make_env()
    out = env.from_batch(range(300)).balance().map(WhereAmI, parallelism=3).collect()
    env.submit()
    assert sorted(r for r, _, _ in out.results()) == list(range(300))
    if not backend.reports_progress:   # inline and Ray channels report no consumer progress: round robin
        assert Counter(i for _, i, _ in out.results()) == {0: 100, 1: 100, 2: 100}


def test_balance_refuses_a_keyed_stream(make_env):
    env = make_env()
    with pytest.raises(ValueError, match="balance"):
        env.from_batch(range(3)).keyby(lambda r: r).balance()


def test_broadcast_reaches_every_instance(backend):
    env = backend.make_env()
    result = (env.from_batch(range(100)).keyby(lambda r: r, strategy="broadcast")
              .map(WhereAmI, parallelism=3).collect())
    env.submit()
    per_instance = defaultdict(list)
    for record, index, _ in result.results():
        per_instance[index].append(record)
    assert sorted(per_instance) == [0, 1, 2]
    for records in per_instance.values():
        assert sorted(records) == list(range(100))


def _to_last(key, n):
    return n - 1


def _pairs(key, n):
    return [0, 2] if key % 2 else [1]


def _bad(key, n):
    return n


def test_custom_partitioners(backend):
    env = backend.make_env()
    one = env.from_batch(range(10)).keyby(lambda r: r, strategy=_to_last).map(WhereAmI, parallelism=3).collect()
    many = env.from_batch(range(10)).keyby(lambda r: r, strategy=_pairs).map(WhereAmI, parallelism=3).collect()
    env.submit()
    assert {index for _, index, _ in one.results()} == {2} and len(one.results()) == 10
    got = Counter((r, i) for r, i, _ in many.results())
    assert got == Counter({(r, i): 1 for r in range(10) for i in _pairs(r, 3)})


@pytest.mark.backends(*NO_RAY)
def test_custom_partitioner_out_of_range_fails_the_job(backend):
    env = backend.make_env()
    env.from_batch(range(10)).keyby(lambda r: r, strategy=_bad).map(WhereAmI, parallelism=2).collect()
    with pytest.raises(JobFailedError, match="0..1"):
        env.submit()


class HashJoin(JoinFunction):
    """Symmetric hash join; at end of input it reports how many records it saw from each side."""

    def open(self):
        self.sides = ({}, {})
        self.seen = [0, 0]

    def execute(self, payload, key, tag):
        self.seen[tag] += 1
        self.sides[tag].setdefault(key, []).append(payload)
        other = self.sides[1 - tag].get(key, [])
        return [(key, payload, o) if tag == 0 else (key, o, payload) for o in other]

    def handle_stop_signal(self, signal):
        return [("seen", self.ctx.parallel_index, tuple(self.seen))]


def test_join_of_two_keyed_sources_is_exact_and_waits_for_both(backend):
    orders = [(i % 50, f"order{i}") for i in range(3000)]            # a long input...
    users = [(k, f"user{k}") for k in range(0, 60, 3)]                # ...and a short one that ends first
    env = backend.make_env()
    left = env.from_batch(orders, parallelism=2)
    right = env.from_batch(users)
    result = left.connect(right).keyby([lambda o: o[0], lambda u: u[0]]).join(HashJoin, parallelism=2).collect()
    env.submit()
    rows = result.results()
    joined = sorted(r for r in rows if r[0] != "seen")
    expected = sorted((o[0], o, u) for o in orders for u in users if o[0] == u[0])
    assert joined == expected
    seen = [r[2] for r in rows if r[0] == "seen"]
    assert len(seen) == 2
    # every instance saw its whole share of both inputs before it ended
    assert sum(s[0] for s in seen) == len(orders) and sum(s[1] for s in seen) == len(users)


class Sides(CoMapFunction):
    def map0(self, record):
        return ("left", record, self.ctx.parallel_index)

    def map1(self, record):
        return ("right", record, self.ctx.parallel_index)


def test_comap_calls_map0_and_map1_by_input(backend):
    env = backend.make_env()
    a = env.from_batch(range(100))
    b = env.from_batch([f"s{i}" for i in range(50)], parallelism=2)
    result = a.connect(b).comap(Sides, parallelism=2).collect()
    env.submit()
    rows = result.results()
    assert sorted(r for side, r, _ in rows if side == "left") == list(range(100))
    assert sorted(r for side, r, _ in rows if side == "right") == sorted(f"s{i}" for i in range(50))
    assert {i for _, _, i in rows} == {0, 1}


@pytest.mark.backends(*NO_RAY)
def test_connected_map_is_a_union(backend):
    env = backend.make_env()
    a, b = env.from_batch([1, 2]), env.from_batch([3])
    result = a.connect(b).map(lambda x: x * 10).collect()
    env.submit()
    assert sorted(result.results()) == [10, 20, 30]


def test_a_held_up_instance_of_a_chained_source_reads_fewer_splits(make_env):
    # Issue 19, the pipeline as users write it: the source follows the map's parallelism and shares its
    # task, so no edge distributes anything; the split enumerator does (pull), and the instance that is
    # held up reads only the split it took first (400 records in 8 splits of 50).
    held = multiprocessing.get_context("fork").Event()
    env = make_env()
    result = env.from_batch(range(400)).map(HeldUntilTheOtherIsNearlyDone, held, 300, parallelism=2).collect()
    job = env.submit()
    assert held.is_set()
    assert sorted(r for r, _ in result.results()) == list(range(400))
    per = Counter(index for _, index in result.results())
    assert per[0] <= 100 and job.metrics["map_0"]["records_in"] == per[0], per
