"""Split plans and claims in one process: planning checks, the job segment's claim cursors, the in-process
cursors, index-range splits of in-memory inputs, progress totals, and numpy inputs shipped for spawn."""

from __future__ import annotations

import os
import pickle
import re
import time

import numpy as np
import pytest

from procflow import CoMapFunction, LocalEnvironment
from procflow.core.functions import IterableBatch
from procflow.core.splits import BYTES, RECORDS, Split, SplitSource
from procflow.io.sequence import SPLITS_PER_INSTANCE, SequenceSource
from procflow.runtime.communication.shm import SharedSegment, segment_name
from procflow.runtime.completion import Completion, Stage
from procflow.runtime.job_control import FIELDS, JobControl
from procflow.runtime.progress import Total, progress_total, render
from procflow.runtime.shared_arrays import MemmapRef, SharedArrayRef, share_arrays
from procflow.runtime.split_plan import SplitCursors, SplitPlan, plan_one


class Planned(SplitSource):
    def __init__(self, splits=None, fail=None, unit=RECORDS):
        self.splits, self.fail, self.unit = splits, fail, unit

    def plan_splits(self, parallelism):
        if self.fail is not None:
            raise self.fail
        return self.splits

    def read_split(self, split):
        return iter(())


def test_a_plan_is_checked_and_knows_its_total():
    plan = plan_one("src", Planned([Split(0, "a", 3), Split(1, "b", 4)]), 2, 0)
    assert (plan.total, len(plan), plan.units_from(1), plan.units_from(2), plan.unit) == (7, 2, 4, 0, RECORDS)
    assert plan_one("src", Planned([]), 2, 1).total == 0   # an empty plan is a source that ends at once


@pytest.mark.parametrize(("planned", "message"), [
    (Planned(fail=FileNotFoundError("no such file: x.txt")),
     "operator 'src' (Planned.plan_splits(2)) failed before the job started: FileNotFoundError: no such file"),
    (Planned("abc"), "returned str; it must return a list of Split"),
    (Planned([(0, 1)]), "item 0 is a tuple, not a Split"),
    (Planned([Split(1, "a", 1)]), "split 0 has index 1; number the splits 0..n-1"),
    (Planned([Split(0, "a", -1)]), "split 0 has size -1"),
    (Planned([], unit="lines"), "unit must be one of ('records', 'bytes'), got 'lines'"),
])
def test_a_plan_that_cannot_work_fails_naming_the_operator(planned, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        plan_one("src", planned, 2, 0)


def test_a_failing_plan_fails_submit_before_anything_starts(env_dir):
    with LocalEnvironment("plan", env_dir=env_dir) as env:
        env.from_batch(Planned(fail=OSError("disk gone"))).collect()
        with pytest.raises(ValueError, match="operator 'batch'.*OSError: disk gone") as info:
            env.submit()
        assert isinstance(info.value.__cause__, OSError)
        assert env.job is None
    assert not os.path.isdir(env_dir) or not os.listdir(env_dir)   # not even a job folder


def claims_of(control, slot, instances, rounds):
    """Claim round-robin among `instances` until none is left; -> [(instance, index)]."""
    got = []
    for _ in range(rounds):
        for instance, handle in instances:
            index = handle.claim_split(slot, instance)
            if index is not None:
                got.append((instance, index))
    return got


def test_job_segment_claims_hand_out_each_split_once_across_attached_handles():
    name = segment_name("t", "job")
    owner = JobControl.create(name, 3, (5, 0, 2))
    other = JobControl.attach(name, 3)    # what a task process maps
    try:
        assert owner.counters.shape == (3, len(FIELDS))
        got = claims_of(owner, 0, [(0, owner), (1, other), (2, other)], 3)
        assert sorted(i for _, i in got) == [0, 1, 2, 3, 4]
        assert other.claim_split(0, 1) is None and owner.splits_claimed(0) == 5
        assert owner.split_owners(0) == [instance for instance, _ in sorted(got, key=lambda g: g[1])]
        assert other.claim_split(1, 0) is None and owner.split_owners(1) == []   # an empty plan
        assert owner.split_owners(2) == [None, None] and other.claim_split(2, 2) == 0
        assert owner.split_owners(2) == [2, None] and owner.splits_claimed(2) == 1
    finally:
        other.close()
        owner.close()
        owner.segment.unlink()
    assert owner.split_owners(0) is None   # closed: nothing to read


def test_a_claim_costs_microseconds():
    """One claim is two fcntl calls and a few stores; measured here so a regression shows (the budget is
    generous: claims happen once per split, which takes far longer to read)."""
    n = 2000
    name = segment_name("t", "job")
    control = JobControl.create(name, 1, (n,))
    try:
        started = time.perf_counter()
        for i in range(n):
            assert control.claim_split(0, 0) == i
        per_claim = (time.perf_counter() - started) / n
    finally:
        control.close()
        control.segment.unlink()
    print(f"claim: {per_claim * 1e6:.1f} us")
    assert per_claim < 200e-6


def test_in_process_cursors():
    cursors = SplitCursors((3, 1))
    assert [cursors.claim_split(0, i % 2) for i in range(4)] == [0, 1, 2, None]
    assert cursors.split_owners(0) == [0, 1, 0] and cursors.splits_claimed(0) == 3
    assert cursors.split_owners(1) == [None] and cursors.claim_split(1, 5) == 0


@pytest.mark.parametrize("data", [list(range(103)), tuple(range(9)), range(5, 50, 3), np.arange(40).reshape(20, 2),
                                  [], [None, 0, None]])
@pytest.mark.parametrize("parallelism", [1, 2, 3, 7])
def test_index_ranges_cover_the_input_once_in_order(data, parallelism):
    source = SequenceSource(data)
    splits = source.plan_splits(parallelism)
    assert len(splits) == min(len(data), SPLITS_PER_INSTANCE * parallelism)
    assert [s.index for s in splits] == list(range(len(splits)))
    read = [item for split in splits for item in source.read_split(split)]
    expected = list(data)
    assert len(read) == len(expected) and all(np.array_equal(a, b) for a, b in zip(read, expected))
    assert [s.size for s in splits] == [len(list(source.read_split(s))) for s in splits]
    sizes = [s.size for s in splits]
    assert not sizes or max(sizes) - min(sizes) <= 1     # even ranges


def test_from_batch_splits_sequences_and_keeps_generators_on_the_single_reader_path():
    with LocalEnvironment("kinds") as env:
        env.from_batch([1, 2], name="list").collect()
        env.from_batch(np.zeros(3), name="array").collect()
        env.from_batch((x for x in range(3)), name="gen").collect()
        env.from_batch({1, 2}, name="set").collect()
        targets = {t.name: t.function.target for t in env.compile().transformations.values() if not t.inputs}
    assert targets == {"list": SequenceSource, "array": SequenceSource, "gen": IterableBatch, "set": IterableBatch}


def test_progress_total_from_plans_and_sized_inputs():
    with LocalEnvironment("total") as env:
        env.from_batch(range(10)).collect()
        graph = env.compile()
    assert progress_total(graph) == Total(10, RECORDS)
    with LocalEnvironment("bytes") as env:
        env.from_batch(Planned(), name="files").collect()
        graph = env.compile()
    assert progress_total(graph) is None          # a split source's size is known from its plan only
    plan = SplitPlan("files", 0, BYTES, (Split(0, "a", 2**20), Split(1, "b", 2**20)))
    assert progress_total(graph, {"files": plan}) == Total(2**21, BYTES)
    with LocalEnvironment("mixed") as env:
        env.from_batch(Planned(), name="files").connect(env.from_batch([1])).comap(Both).collect()
        graph = env.compile()
    assert progress_total(graph, {"files": plan}) is None   # bytes plus records: no one total
    line = render(2**20, 2**21, 2.0, unit=BYTES)
    assert " 50%" in line and "1.0 MiB/2.0 MiB" in line and "512.0 KiB/s" in line and "ETA 0:02" in line


def test_units_done_scale_with_the_records_the_pipeline_has_finished():
    c = Completion([Stage("src", ()), Stage("map", (("src", 1),))])
    rows = {"src_0": {"operator": "src", "records_in": 0, "records_out": 100, "units_done": 1000.0},
            "src_1": {"operator": "src", "records_in": 0, "records_out": 100, "units_done": 3000.0},
            "map_0": {"operator": "map", "records_in": 50, "records_out": 50}}
    assert c.units(rows) == 4000 * 50 / 200    # a quarter of the emitted records done
    rows["map_0"]["records_in"] = 200
    assert c.units(rows) == 4000


class Both(CoMapFunction):
    def map0(self, x):
        return x

    def map1(self, x):
        return x


@pytest.fixture
def segments():
    made: list[SharedSegment] = []

    def make(role, size):
        seg = SharedSegment(segment_name("t", role), size, create=True)
        made.append(seg)
        return seg

    yield make
    for seg in made:
        seg.close()
        seg.unlink()


def test_arrays_for_spawn_go_through_shared_memory_once(segments, tmp_path):
    array = np.arange(12, dtype=np.int32).reshape(4, 3)
    first, second = SequenceSource(array), SequenceSource(array)   # two instances of one source
    memmap = np.memmap(tmp_path / "m.bin", np.float64, mode="w+", shape=(5, 2))
    memmap[:] = 7.0
    memmap.flush()
    mapped = SequenceSource(memmap)
    share_arrays([first, second, mapped, SequenceSource([1, 2])], segments)
    assert isinstance(first.data, SharedArrayRef) and first.data is second.data   # copied once
    assert isinstance(mapped.data, MemmapRef)                                      # reopened, not copied
    assert len(pickle.dumps(first)) < 400 and len(pickle.dumps(mapped)) < 400
    shipped = pickle.loads(pickle.dumps(first))
    assert np.array_equal(shipped.data, array) and not shipped.data.flags.writeable
    reopened = pickle.loads(pickle.dumps(mapped))
    assert isinstance(reopened.data, np.memmap) and np.array_equal(reopened.data, memmap)
    del shipped, reopened


class SlowClaims(SplitCursors):
    """In-process cursors whose claims take as long as a remote call on a loaded machine."""

    def __init__(self, counts, delay):
        super().__init__(counts)
        self.delay = delay
        self.counters = np.zeros((1, len(FIELDS)))

    def claim_split(self, slot, instance):
        time.sleep(self.delay)
        return super().claim_split(slot, instance)


class Ranges(SplitSource):
    def plan_splits(self, parallelism):
        return [Split(i, (i * 10, i * 10 + 10), 10) for i in range(3)]

    def read_split(self, split):
        return iter(range(*split.descriptor))


def test_the_time_a_split_claim_takes_is_reported_as_waiting_not_work():
    from types import SimpleNamespace

    from procflow.runtime.operators.source import SplitReader

    plan = plan_one("src", Ranges(), 1, 0)
    ctx = SimpleNamespace(splits=plan, parallel_index=0, parallelism=1, task_slot=0,
                          job_control=SlowClaims([len(plan)], delay=0.01))
    waits = []
    reader = SplitReader(Ranges(), ctx, waits.append)
    assert list(reader.records()) == list(range(30))
    assert len(waits) == 4                 # three splits, and the claim that found none left
    assert all(w >= 0.01 for w in waits)
