"""Slabs (large arrays on shm edges, slabs.py) after a task was killed: the job fails and names the task,
and no segment is left behind, though the producer that made the slabs never cleaned up (the autouse
leak fixture checks /dev/shm after each test; these tests also check while the driver still runs)."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from procflow import BatchFunction, JobFailedError, LocalEnvironment, SinkFunction
from procflow.runtime.communication.slabs import SLAB_MIN
from procflow.testing import own_segments

pytestmark = pytest.mark.timeout(60)
BIG = 2 * SLAB_MIN // 8


class ArraysThenDie(BatchFunction):
    """`before` large arrays (made into slabs), then SIGKILL: no close(), no cleanup of its own."""

    def __init__(self, before: int) -> None:
        self.before = before

    def open(self) -> None:
        self.i = 0

    def execute(self):
        if self.i == self.before:
            self.ctx.router.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        self.i += 1
        return np.full(BIG, float(self.i))


class KeepThenDie(SinkFunction):
    """Keeps what it receives (pinning slabs) and dies at the `at`-th array."""

    def __init__(self, at: int) -> None:
        self.at = at

    def open(self) -> None:
        self.kept: list = []

    def execute(self, record) -> None:
        self.kept.append(record)
        if len(self.kept) == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


class Arrays(BatchFunction):
    def __init__(self, count: int) -> None:
        self.count = count

    def open(self) -> None:
        self.i = 0

    def execute(self):
        if self.i == self.count:
            return None
        self.i += 1
        return np.full(BIG, float(self.i))


def test_a_killed_producer_leaves_no_slab_behind(env_dir):
    with LocalEnvironment("slabs", {"queue": "shm"}, env_dir=env_dir) as env:
        env.from_batch(ArraysThenDie, 20).sink(lambda a: None)
        with pytest.raises(JobFailedError, match="SIGKILL") as info:
            env.submit()
        assert info.value.task == "batch_0"
        assert own_segments() == set()


def test_a_consumer_killed_while_its_producer_waits_for_slabs_fails_the_job_cleanly(env_dir):
    # The sink keeps every array, then dies: its producer may be waiting for a slab that will never be
    # freed. The driver must still fail the job and stop that producer.
    with LocalEnvironment("slabs", {"queue": "shm", "ring_bytes": 256 << 10}, env_dir=env_dir) as env:
        env.from_batch(Arrays, 10_000).sink(KeepThenDie, 8)
        with pytest.raises(JobFailedError, match="SIGKILL") as info:
            env.submit()
        assert info.value.task == "sink_0"
        assert own_segments() == set()
