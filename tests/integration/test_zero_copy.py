"""Zero-copy arrays through whole jobs: what users keep stays intact while rings wrap many times.

On a shm edge an array of at least SLAB_MIN bytes arrives as a read-only view on the slab it travelled
in (slabs.py). The rules under test (issue 19): a record the user keeps (a sink's list, a map passing its
input on) or the runtime keeps (a reduce's state, collect) still holds what was sent after hundreds of
arrays followed it through a small ring; results are the same on every backend.
"""

from __future__ import annotations

import numpy as np
import pytest

from procflow import BatchFunction, JobFailedError, SinkFunction
from procflow.runtime.communication.slabs import SLAB_MIN

# A few arrays fill the ring: 400 of them wrap it hundreds of times. Chaining off: every operator in a
# task of its own, so that each array crosses a channel (chained, a source hands its arrays on by call).
RING = {"ring_bytes": 256 << 10, "chaining": False}
BIG = 2 * SLAB_MIN // 8            # float64 elements: 128 KiB, travels in a slab on shm
SMALL = 1024                       # 8 KiB: travels in the ring, copied
N = 400


def expected(i: int, n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64) + i * 1000.0


class Arrays(BatchFunction):
    """`count` arrays; array i is arange(n) + 1000 i, so any byte from a later array shows."""

    def __init__(self, count: int, n: int) -> None:
        self.count, self.n = count, n

    def open(self) -> None:
        self.i = 0

    def execute(self):
        if self.i == self.count:
            return None
        self.i += 1
        return expected(self.i - 1, self.n)


class KeepAll(SinkFunction):
    """Stores every array it receives; at close() checks them all against what was sent."""

    def __init__(self, count: int, n: int) -> None:
        self.count, self.n = count, n

    def open(self) -> None:
        self.kept: list = []

    def execute(self, record) -> None:
        self.kept.append(record)

    def close(self) -> None:
        ids = sorted(int(a[0] // 1000) for a in self.kept)
        if ids != list(range(self.count)):
            raise AssertionError(f"kept arrays {ids[:10]}... are not the {self.count} sent")
        for a in self.kept:
            if not np.array_equal(a, expected(int(a[0] // 1000), self.n)):
                raise AssertionError(f"array {int(a[0] // 1000)} changed after its call returned")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [BIG, SMALL], ids=["slab", "ring"])
@pytest.mark.backends("local-shm", "local-shm-spawn", "local-mp", "inline")
def test_a_sink_that_keeps_every_array_sees_them_intact_at_close(backend, n):
    env = backend.make_env(**RING)
    env.from_batch(Arrays, N, n).sink(KeepAll, N, n)
    env.submit()   # a changed array fails the job from close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [BIG, SMALL], ids=["slab", "ring"])
def test_a_map_that_returns_its_input_array_delivers_what_was_sent(backend, n):
    env = backend.make_env(**RING)
    passed_on = env.from_batch(Arrays, N, n).map(lambda a: a)
    passed_on.sink(KeepAll, N, n)
    result = passed_on.collect()
    env.submit()
    got = sorted(result.results(), key=lambda a: a[0])
    assert len(got) == N
    for i, a in enumerate(got):
        assert np.array_equal(a, expected(i, n)), i


def keep_largest(acc, x):
    return acc if acc[0] >= x[0] else x


def add_in_place(acc, x):
    acc += x       # the state must be a writable copy, not the received (read-only) view
    return acc


@pytest.mark.timeout(120)
@pytest.mark.backends("local-shm", "local-shm-spawn", "local-mp", "inline")
def test_a_reduce_that_keeps_arrays_in_its_state_gives_the_right_answer(backend):
    env = backend.make_env(**RING)
    arrays = env.from_batch(Arrays, N, BIG).keyby(lambda a: int(a[0] // 1000) % 3)
    largest = arrays.reduce(keep_largest).collect()
    total = arrays.reduce(add_in_place).collect()
    env.submit()
    want_largest = {k: expected(max(i for i in range(N) if i % 3 == k), BIG) for k in range(3)}
    got = dict(largest.results())
    assert sorted(got) == [0, 1, 2]
    for k, a in got.items():
        assert np.array_equal(a, want_largest[k]), k
    sums = dict(total.results())
    for k in range(3):
        want = sum(expected(i, BIG) for i in range(N) if i % 3 == k)
        assert np.array_equal(sums[k], want), k


def flags(a):
    return a.nbytes, a.flags.writeable


@pytest.mark.timeout(60)
@pytest.mark.backends("local-shm", "local-shm-spawn")
def test_on_shm_a_large_array_arrives_read_only_and_a_small_one_as_a_writable_copy(backend):
    env = backend.make_env()
    # disable_chaining: the map in a task of its own, fed over a channel (chained, it gets the source's arrays)
    result = env.from_batch([np.zeros(BIG), np.zeros(SMALL)]).map(flags).disable_chaining().collect()
    env.submit()
    assert sorted(result.results()) == [(SMALL * 8, True), (BIG * 8, False)]


def write_into(a):
    a[0] = 1.0
    return a


@pytest.mark.timeout(60)
@pytest.mark.backends("local-shm")
def test_writing_into_a_received_view_fails_the_job_and_says_so(backend):
    env = backend.make_env()
    env.from_batch([np.zeros(BIG)]).map(write_into).disable_chaining().collect()
    with pytest.raises(JobFailedError, match="read-only"):
        env.submit()
