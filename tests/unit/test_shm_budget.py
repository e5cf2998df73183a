"""/dev/shm capacity (issue 22 item 9), inside one process: segments are committed when created, so a
shortage is an error at once instead of a SIGBUS mid-job; and the budget's error says how much is needed,
how much is free and how to get it."""

from __future__ import annotations

import errno
import os

import pytest

from procflow import BaseService, LocalEnvironment
from procflow.backends.local.backend import LocalBackend
from procflow.core.errors import ShmCapacityError
from procflow.runtime.communication import ring as ringmod
from procflow.runtime.communication.shm import SHM_DIR, SharedSegment, list_segments, segment_name
from procflow.runtime.dispatcher import Dispatcher
from procflow.runtime.shm_budget import ShmBudget, committed

MIB = 1 << 20


def test_a_created_segment_is_committed_not_sparse():
    size = 2 * MIB
    seg = SharedSegment(segment_name("budget", "in"), size, create=True)
    try:
        st = os.stat(os.path.join(SHM_DIR, seg.name))
        # A sparse tmpfs file has no blocks until its pages are touched (and then may SIGBUS).
        assert st.st_blocks * 512 >= size
    finally:
        seg.close()
        seg.unlink()


def test_no_room_to_commit_raises_a_capacity_error_and_leaves_no_file(monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    name = segment_name("budget", "in")
    with pytest.raises(ShmCapacityError) as info:
        SharedSegment(name, 4 * MIB, create=True)
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert "4.0 MiB" in str(info.value) and "--shm-size" in str(info.value)
    assert not os.path.exists(os.path.join(SHM_DIR, name))


def test_a_filesystem_without_fallocate_keeps_the_sparse_segment(monkeypatch):
    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    seg = SharedSegment(segment_name("budget", "in"), MIB, create=True)
    seg.close()
    seg.unlink()


def issue_budget() -> ShmBudget:
    """src -> map x4 -> map x3 -> sink: 9 tasks, 4 + 12 + 3 rings of the default 4 MiB."""
    return ShmBudget(job_bytes=1024, ring_slots=(1, 1, 1, 1, 4, 4, 4, 3), service_bytes=(), ring_bytes=4 * MIB)


def test_the_budget_counts_every_ring_in_whole_pages():
    budget = issue_budget()
    capacity = ringmod.ring_capacity(4 * MIB)
    rings = sum(committed(ringmod.inbox_size(n, capacity)) for n in budget.ring_slots)
    assert budget.total() == rings + committed(1024)
    assert 75 * MIB < budget.total() < 80 * MIB   # 19 rings of 4.06 MiB
    assert ShmBudget(1024, (2,), (MIB + 1,), MIB).total() == (
        committed(ringmod.inbox_size(2, ringmod.ring_capacity(MIB))) + committed(1024) + committed(MIB + 1))


def test_too_little_room_says_how_much_is_needed_and_how_to_get_it():
    budget = issue_budget()
    with pytest.raises(ShmCapacityError) as info:
        budget.check("j1", space=(60 * MIB, 64 * MIB))
    message = str(info.value)
    assert f"job j1 needs {budget.total() / MIB:.1f} MiB of shared memory in /dev/shm" in message
    assert "19 ring(s) of 4.1 MiB (config ring_bytes=4194304)" in message
    assert "only 60.0 MiB of its 64.0 MiB is free; nothing was started" in message
    assert "docker run --shm-size=256m" in message
    # The largest power-of-two ring size that fits: 2 MiB rings need about 39 MiB.
    assert f"config ring_bytes={2 * MIB} needs {budget.total(2 * MIB) / MIB:.1f} MiB" in message
    assert budget.total(2 * MIB) <= 60 * MIB < budget.total()


def test_when_no_ring_size_fits_the_advice_is_the_mp_queue():
    budget = ShmBudget(job_bytes=1024, ring_slots=(1,) * 200, service_bytes=(), ring_bytes=MIB)
    with pytest.raises(ShmCapacityError, match="use queue='mp'"):
        budget.check("j2", space=(64 << 10, 64 * MIB))


def test_enough_room_passes():
    issue_budget().check("j3", space=(200 * MIB, 256 * MIB))


class Echo(BaseService):
    def process(self, x):
        return x


def test_the_budget_matches_what_prepare_creates(env_dir):
    # Rings of tasks and services alike: an estimate that undercounts would let a job pass the check and
    # then fail (now with ENOSPC) while creating its segments.
    env = LocalEnvironment("budget", {"ring_bytes": 64 << 10}, env_dir=env_dir)
    env.register_service("echo", Echo, parallelism=2)
    env.from_batch(range(10)).map(lambda r: r, parallelism=3).keyby(lambda r: r).map(
        lambda r: r, parallelism=2).sink(lambda r: None)
    backend = LocalBackend(env.task_factory)
    dispatcher = Dispatcher(env.compile(), config=env.config, env_dir=env.env_dir, backend=backend,
                            collectors={}, services=env.services)
    try:
        dispatcher.prepare()
        # the tasks with rings in: a chain's members are fed by call (the source, map and keyby chain)
        budget = backend.shm_budget([n for n in dispatcher.graph.heads() if n.in_edges], env.services)
        created = [os.stat(os.path.join(SHM_DIR, name)).st_size for name in list_segments(dispatcher.job_id)]
        assert budget.total() == sum(map(committed, created))
    finally:
        dispatcher.cleanup()
        dispatcher.close_log()
