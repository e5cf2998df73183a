"""Suite-wide fixtures. The leak check runs after every test: no child process and no shared-memory
segment of this process may outlive a test."""

from __future__ import annotations

import os
import time

import multiprocess.resource_tracker
import pytest

from procflow.testing import child_pids, mp_helper_pids, own_segments

# A spawn job starts multiprocess's resource tracker, a helper process that lives as long as the
# interpreter by design. Start it up front so the leak check counts it as already there.
multiprocess.resource_tracker.ensure_running()


@pytest.fixture(scope="session", autouse=True)
def _resource_tracker():
    """Start multiprocess's resource tracker once, up front.

    The first spawn-started child makes `multiprocess` launch its resource tracker: one helper process
    per driver that lives as long as the driver. Started here, it counts as already there, so the leak
    check below sees only what a test itself left behind.
    """
    from multiprocess import resource_tracker

    resource_tracker.ensure_running()
    yield


@pytest.fixture(autouse=True)
def no_leaks():
    before_children = child_pids()
    before_segments = own_segments()
    yield
    deadline = time.monotonic() + 10
    delay = 0.01
    while True:
        extra_children = child_pids() - before_children - mp_helper_pids()
        extra_segments = own_segments() - before_segments
        if not extra_children and not extra_segments:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(delay)  # polling OS state with backoff, not synchronisation
        delay = min(delay * 2, 0.2)
    for pid in extra_children:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    pytest.fail(f"test leaked child processes {sorted(extra_children)} and/or shared-memory "
                f"segments {sorted(extra_segments)}")


@pytest.fixture
def env_dir(tmp_path):
    return str(tmp_path / "env")
