"""collect(), on every backend: where it has nothing to decide the driver runs it, fed by the upstream
tasks directly; a keyed collect keeps its task."""

from __future__ import annotations

import os

import numpy as np
import pytest

from procflow import JobFailedError, SinkFunction

pytestmark = pytest.mark.timeout(60)


def test_a_plain_collect_needs_no_process_and_loses_nothing(backend):
    env = backend.make_env()
    result = env.from_batch(range(5000)).map(lambda x: x * 3, parallelism=2).collect()
    job = env.submit()
    assert sorted(result.results()) == [x * 3 for x in range(5000)]
    collect = job.metrics["collect_0"]
    assert collect["pid"] == os.getpid() and collect["records_in"] == collect["processed_count"] == 5000
    assert collect["finished"] >= collect["started"] > 0


def test_one_upstream_instance_keeps_its_order(backend):
    env = backend.make_env()
    result = env.from_batch(range(3000)).map(lambda x: -x).collect()
    env.submit()
    assert result.results() == [-x for x in range(3000)]


def test_a_plain_collect_runs_in_the_driver_and_a_keyed_one_in_a_task(backend):
    # Nothing to decide: no task (on Ray, no actor: seconds of start-up on a small machine) and the
    # upstream tasks ship to the driver. A keyed input runs its selector in a collect task: the key
    # selector is user code that runs on the way in, and its errors must name their record.
    env = backend.make_env()
    stream = env.from_batch(range(300)).map(lambda x: x + 1, parallelism=2)
    plain = stream.collect()
    keyed = stream.keyby(lambda x: x % 3).collect()
    job = env.submit()
    assert sorted(plain.results()) == sorted(keyed.results()) == list(range(1, 301))
    metrics = job.metrics
    assert metrics["collect_0"]["pid"] == os.getpid() and metrics["collect_0"]["records_in"] == 300
    assert metrics["collect2_0"]["records_in"] == 300
    ops = job.summary()["operators"]
    if backend.in_driver:   # inline: every task is in the driver, and no task's CPU share is measured
        assert metrics["collect2_0"]["pid"] == os.getpid()
        assert ops["collect"]["cpu_pct"] is None and ops["collect2"]["cpu_pct"] is None
    else:
        assert metrics["collect2_0"]["pid"] not in (None, os.getpid())
        # The driver times its storing of the plain collect's records, so its CPU share is a number.
        assert isinstance(ops["collect"]["cpu_pct"], float) and isinstance(ops["collect2"]["cpu_pct"], float)


class Discard(SinkFunction):
    def execute(self, record):
        pass


def test_a_task_feeding_a_sink_and_a_collect_ships_arrays_and_plain_records(backend):
    # Several consumers: the task encodes each record once and every channel gets the bytes.
    env = backend.make_env()
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


def test_a_record_that_cannot_reach_the_driver_fails_the_job_naming_it(backend):
    env = backend.make_env()
    env.from_batch(range(3)).map(lambda x: (i for i in range(x)) if x == 1 else x).collect()
    with pytest.raises(JobFailedError, match=r"map_0.*generator") as info:
        env.submit()
    assert info.value.task == "map_0" and "generator object" in info.value.record
    if backend.in_driver:   # inline ships nothing: the encoder of its in-driver channel names the record
        assert "cannot encode record of type generator" in str(info.value)
    else:
        assert "cannot be shipped to the driver" in str(info.value)
