"""A reader killed while it holds a split claim's lock leaves the other readers free to claim: the lock
is a POSIX record lock on the job segment file, which the kernel drops when its holder dies (a lock word
in shared memory would stay taken, and every other source instance would hang on its next claim)."""

from __future__ import annotations

import fcntl
import os
import signal

import multiprocess
import pytest

from procflow.runtime.communication.shm import SHM_DIR, segment_name
from procflow.runtime.job_control import JobControl

pytestmark = pytest.mark.timeout(30)


def hold_the_claim_lock(name: str, offset: int, ready) -> None:
    """In a child: take slot 0's claim lock, as a claim does, say so, and never let go."""
    fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX, 8, offset, os.SEEK_SET)
    ready.send("locked")
    ready.recv()   # blocks until the parent kills us


def test_a_reader_killed_inside_a_claim_does_not_block_the_others():
    name = segment_name("t", "job")
    control = JobControl.create(name, 2, (3,))
    offset = control._slots[0].cursor
    parent_end, child_end = multiprocess.get_context("fork").Pipe()
    child = multiprocess.get_context("fork").Process(target=hold_the_claim_lock, args=(name, offset, child_end))
    child.start()
    try:
        assert parent_end.recv() == "locked"
        probe = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
        try:
            with pytest.raises(OSError):   # held: a claim now would wait for the child
                fcntl.lockf(probe, fcntl.LOCK_EX | fcntl.LOCK_NB, 8, offset, os.SEEK_SET)
        finally:
            os.close(probe)
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert child.exitcode == -signal.SIGKILL
        assert [control.claim_split(0, 1) for _ in range(4)] == [0, 1, 2, None]   # not blocked
    finally:
        if child.is_alive():
            child.kill()
            child.join(5)
        parent_end.close()
        child_end.close()
        control.close()
        control.segment.unlink()
