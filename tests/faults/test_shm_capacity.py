"""A job that does not fit in /dev/shm (issue 22 item 9) fails at submit() with ShmCapacityError saying
how much it needs and how to get it, before any task starts and leaving no segment behind. /dev/shm is
faked small (statvfs), never filled."""

from __future__ import annotations

import os

import pytest

from procflow import LocalEnvironment
from procflow.core.errors import ShmCapacityError
from procflow.runtime.communication.shm import SHM_DIR
from procflow.testing import child_pids, own_segments

pytestmark = pytest.mark.timeout(60)

MIB = 1 << 20


@pytest.fixture
def docker_default_shm(monkeypatch):
    """/dev/shm looks like Docker's default: 64 MiB, all of it free."""
    real = os.statvfs

    def statvfs(path):
        st = real(path)
        if os.fspath(path) != SHM_DIR:
            return st
        blocks = 64 * MIB // st.f_frsize
        return os.statvfs_result((st.f_bsize, st.f_frsize, blocks, blocks, blocks, st.f_files, st.f_ffree,
                                  st.f_favail, st.f_flag, st.f_namemax))

    monkeypatch.setattr(os, "statvfs", statvfs)


def nine_tasks(env: LocalEnvironment) -> None:
    env.from_batch(range(100), name="src", parallelism=1).map(lambda r: r, parallelism=4, name="a").map(
        lambda r: r, parallelism=3, name="b").sink(lambda r: None, name="sink")


def test_a_job_too_big_for_dev_shm_fails_before_anything_starts(env_dir, docker_default_shm):
    env = LocalEnvironment("shm", env_dir=env_dir)
    nine_tasks(env)
    children, segments = child_pids(), own_segments()
    with pytest.raises(ShmCapacityError) as info:
        env.submit()
    message = str(info.value)
    assert "needs 77.2 MiB of shared memory in /dev/shm" in message
    assert "only 64.0 MiB of its 64.0 MiB is free" in message
    assert "--shm-size" in message and "config ring_bytes=" in message
    assert env.job is None
    assert child_pids() == children and own_segments() == segments
    [job_dir] = os.listdir(env_dir)
    with open(os.path.join(env_dir, job_dir, "Dispatcher.log")) as f:
        assert "needs 77.2 MiB of shared memory" in f.read()


def test_the_same_job_with_rings_that_fit_runs(env_dir, docker_default_shm):
    env = LocalEnvironment("shm", {"ring_bytes": 1 * MIB}, env_dir=env_dir)
    nine_tasks(env)
    assert env.submit().status == "finished"
