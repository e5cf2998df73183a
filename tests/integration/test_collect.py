"""collect(): where it has nothing to decide the driver runs it, fed by the upstream tasks directly."""

from __future__ import annotations

import os

import numpy as np
import pytest

from procflow import JobFailedError, SinkFunction

pytestmark = pytest.mark.timeout(60)


def test_a_plain_collect_needs_no_process_and_loses_nothing(make_env, mode):
    env = make_env(mode)
    result = env.from_batch(range(5000)).map(lambda x: x * 3, parallelism=2).collect()
    job = env.submit()
    assert sorted(result.results()) == [x * 3 for x in range(5000)]
    collect = job.metrics["collect_0"]
    assert collect["pid"] == os.getpid() and collect["records_in"] == collect["processed_count"] == 5000
    assert collect["finished"] >= collect["started"] > 0


def test_one_upstream_instance_keeps_its_order(make_env, mode):
    env = make_env(mode)
    result = env.from_batch(range(3000)).map(lambda x: -x).collect()
    env.submit()
    assert result.results() == [-x for x in range(3000)]


def test_a_keyed_collect_keeps_its_task(make_env):
    # The key selector is user code that runs on the way in; its errors must name their record.
    env = make_env()
    result = env.from_batch(range(100)).keyby(lambda x: x % 3).collect()
    job = env.submit()
    assert sorted(result.results()) == list(range(100))
    assert job.metrics["collect_0"]["pid"] not in (None, os.getpid())


class Discard(SinkFunction):
    def execute(self, record):
        pass


def test_a_task_feeding_a_sink_and_a_collect_ships_arrays_and_plain_records(make_env, mode):
    # Several consumers: the task encodes each record once and every channel gets the bytes.
    env = make_env(mode)
    stream = env.from_batch(range(40)).map(
        lambda i: np.full((i % 5 + 1, 300), i, dtype=np.int16) if i % 2 else {"i": i}, parallelism=2)
    stream.sink(Discard)
    result = stream.collect()
    env.submit()
    got = result.results()
    arrays = sorted((r for r in got if isinstance(r, np.ndarray)), key=lambda a: int(a[0, 0]))
    assert sorted(r["i"] for r in got if isinstance(r, dict)) == list(range(0, 40, 2))
    assert [int(a[0, 0]) for a in arrays] == list(range(1, 40, 2))
    assert all(a.shape == (int(a[0, 0]) % 5 + 1, 300) and a.dtype == np.int16 for a in arrays)


def test_a_record_that_cannot_reach_the_driver_fails_the_job_naming_it(make_env):
    env = make_env()
    env.from_batch(range(3)).map(lambda x: (i for i in range(x)) if x == 1 else x).collect()
    with pytest.raises(JobFailedError, match=r"map_0.*generator.*cannot be shipped to the driver"):
        env.submit()
