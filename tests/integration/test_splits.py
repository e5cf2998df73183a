"""Split sources on every backend: each split read by exactly one instance, once; pull, so a fast reader
takes more splits than a slow one; the driver sees who read what; progress from the plan's total; and
from_batch over in-memory sequences (numpy arrays through shared memory under spawn)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from procflow import JobFailedError
from procflow.core.splits import BYTES, Split, SplitSource
from procflow.io.sequence import SequenceSource
from procflow.runtime.shared_arrays import SharedArrayRef

from .conftest import LOCAL, NO_RAY

pytestmark = pytest.mark.timeout(120)


class Numbered(SplitSource):
    """`n_splits` splits of `per_split` records each; a record says which instance read it, and from
    which split. With `slow` set, that instance takes `slow` seconds over each split (its workload)."""

    def __init__(self, n_splits: int, per_split: int = 3, slow: float = 0.0, unit: str = "records"):
        self.n_splits, self.per_split, self.slow, self.unit = n_splits, per_split, slow, unit

    def plan_splits(self, parallelism):
        return [Split(i, (i * self.per_split, (i + 1) * self.per_split), self.per_split)
                for i in range(self.n_splits)]

    def read_split(self, split):
        if self.slow and self.ctx.parallel_index == 0:
            time.sleep(self.slow)   # the slow reader's work, not synchronisation
        start, stop = split.descriptor
        return ((value, split.index, self.ctx.parallel_index) for value in range(start, stop))


def run(env, source, parallelism):
    result = env.from_batch(source, parallelism=parallelism, name="src").collect()
    job = env.submit()
    return result.results(), job


@pytest.mark.backends(*NO_RAY)
@pytest.mark.parametrize("parallelism", range(1, 8))
def test_every_split_is_read_by_exactly_one_instance_once(backend, parallelism):
    env = backend.make_env()
    records, job = run(env, Numbered(23), parallelism)
    assert sorted(v for v, _, _ in records) == list(range(23 * 3))     # every record, once
    readers = {}
    for _, split, instance in records:
        readers.setdefault(split, set()).add(instance)
    assert all(len(r) == 1 for r in readers.values()) and len(readers) == 23
    owners = job.split_assignments()["src"]
    assert owners == [next(iter(readers[i])) for i in range(23)]          # the driver saw the same
    rows = [m for name, m in job.metrics.items() if m["operator"] == "src"]
    assert sum(m["units_done"] for m in rows) == 23 * 3


def test_split_sources_on_every_backend(backend):
    env = backend.make_env()
    records, job = run(env, Numbered(10), 3)
    assert sorted(v for v, _, _ in records) == list(range(30))
    owners = job.split_assignments()["src"]
    assert sorted(owners) == sorted(owners) and None not in owners and set(owners) <= {0, 1, 2}
    assert job.progress() == {"unit": "records", "total": 30, "done": 30, "percent": 100.0,
                              "rate": pytest.approx(30 / job.elapsed), "eta_s": 0.0}


@pytest.mark.backends(*LOCAL, "ray")
def test_a_fast_reader_takes_more_splits_than_a_slow_one(backend):
    """Instance 0 spends 0.5 s on each split it reads, instance 1 nothing: pulling, instance 1 takes the
    splits while instance 0 works through its first; a fixed share would have given each 10. (Instance 0
    reads 6 or more only if instance 1 sat descheduled for 2.5 s: the margin for a loaded machine.)"""
    env = backend.make_env()
    records, job = run(env, Numbered(20, slow=0.5), 2)
    owners = job.split_assignments()["src"]
    assert sorted(v for v, _, _ in records) == list(range(60))
    assert owners.count(1) >= 14, owners   # (all 20 where instance 0 started late)


@pytest.mark.backends(*NO_RAY)
def test_an_empty_plan_ends_the_source_at_once(backend):
    env = backend.make_env()
    records, job = run(env, Numbered(0), 3)
    assert records == [] and job.split_assignments() == {"src": []}
    assert job.progress()["total"] == 0 and job.progress()["percent"] == 100.0


@pytest.mark.backends(*NO_RAY)
def test_progress_in_bytes_from_the_plan(backend):
    env = backend.make_env()
    records, job = run(env, Numbered(8, per_split=5, unit=BYTES), 2)
    progress = job.progress()
    assert (progress["unit"], progress["total"], progress["done"], progress["percent"]) == (BYTES, 40, 40, 100.0)
    assert job.summary()["progress"]["total"] == 40


def test_progress_bar_shows_the_plan_total(backend, capsys):
    env = backend.make_env(progress=True)
    env.from_batch(Numbered(4, per_split=2 ** 18, unit=BYTES), parallelism=2).collect()
    env.submit()
    line = capsys.readouterr().err.strip().split("\r")[-1]
    assert "100%" in line and "1.0 MiB/1.0 MiB" in line and line.endswith("done"), line


class DiesReading(SplitSource):
    """Whichever instance claims split 5 is killed (SIGKILL) while reading it, after emitting a record."""

    def plan_splits(self, parallelism):
        return [Split(i, i, 1) for i in range(12)]

    def read_split(self, split):
        import os
        import signal

        yield split.index
        if split.index == 5:
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.backends(*LOCAL)
def test_a_reader_killed_mid_job_fails_the_job_cleanly(backend):
    env = backend.make_env()
    env.from_batch(DiesReading(), parallelism=3, name="src").collect()
    with pytest.raises(JobFailedError, match=r"task src_\d \(pid \d+\) .*SIGKILL"):
        env.submit()
    owners = env.job.split_assignments()["src"]
    assert owners[5] is not None      # the driver knows who had the split that was lost
    # no process and no segment is left: the autouse leak check


@pytest.mark.backends(*NO_RAY, "local-shm-spawn", "ray")
@pytest.mark.parametrize("data", [list(range(50)), tuple(range(7)), range(0, 100, 7)], ids=["list", "tuple", "range"])
def test_from_batch_over_a_sequence_in_parallel(backend, data):
    env = backend.make_env()
    result = env.from_batch(data, parallelism=3).map(lambda x: x * 2).collect()
    env.submit()
    assert sorted(result.results()) == sorted(x * 2 for x in data)


@pytest.mark.backends(*NO_RAY)
def test_from_batch_keeps_order_with_one_instance(backend):
    env = backend.make_env()
    result = env.from_batch(list(range(5000))).collect()
    env.submit()
    assert result.results() == list(range(5000))


class Probe(SequenceSource):
    """Reports, per split, what the task holds as its input: writeable or not, and its type."""

    def read_split(self, split):
        start, stop = split.descriptor
        yield int(self.data[start:stop].sum()), bool(self.data.flags.writeable), type(self.data).__name__


@pytest.mark.backends("local-shm", "local-shm-spawn", "local-mp-spawn")
def test_a_numpy_array_under_spawn_goes_through_shared_memory(backend, tmp_path):
    rows = np.arange(3000, dtype=np.int64).reshape(1000, 3)
    memmap = np.memmap(tmp_path / "rows.bin", np.int64, mode="w+", shape=(200, 3))
    memmap[:] = np.arange(600).reshape(200, 3)
    memmap.flush()
    env = backend.make_env()
    arr = env.from_batch(rows, parallelism=3, name="arr").map(lambda r: int(r.sum())).collect()
    held = env.from_batch(Probe, rows, parallelism=2, name="held").collect()
    mm = env.from_batch(Probe, memmap, parallelism=2, name="mm").collect()
    job = env.submit()
    spawned = backend.spec.start_method == "spawn"
    assert sorted(arr.results()) == sorted(int(r.sum()) for r in rows)
    assert sum(s for s, _, _ in held.results()) == int(rows.sum())
    # A spawned task reads a read-only copy in shared memory; a forked one the user's own array.
    assert {(w, t) for _, w, t in held.results()} == {(not spawned, "ndarray")}
    assert sum(s for s, _, _ in mm.results()) == int(memmap.sum())
    assert {t for _, _, t in mm.results()} == {"memmap"}     # reopened from its file, never copied
    if spawned:   # one copy for all the instances of a source
        shipped = job._dispatcher.functions["arr_0"].data
        assert isinstance(shipped, SharedArrayRef) and shipped is job._dispatcher.functions["arr_2"].data
