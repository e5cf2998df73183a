"""Suite-wide fixtures. The leak check runs after every test: no child process and no shared-memory
segment of this process may outlive a test, except the session's own helpers (multiprocess's resource
tracker, and the one local Ray instance that `ray_session` starts for the tests that run on Ray)."""

from __future__ import annotations

import os
import time

import multiprocess.resource_tracker
import pytest

from procflow.testing import child_pids, mp_helper_pids, own_segments

# Children that belong to the test session, not to a test: the leak check does not count them.
SESSION_HELPERS: set[int] = set()

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
        extra_children = child_pids() - before_children - mp_helper_pids() - SESSION_HELPERS
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


class RaySession:
    """One local Ray instance for this test process (each xdist worker has its own), started at first use.

    Starting Ray takes seconds, so every test that runs on Ray shares it. Its head processes (gcs,
    raylet, ...) are children of this process that live from the first Ray test to the end of the
    session: they are recorded in SESSION_HELPERS, so the per-test leak check stays exact about what a
    test itself started (a task actor is a child of the raylet, never of this process). A test that
    needs Ray down (its own cluster) calls `shutdown()`; the next Ray test starts it again.
    """

    def __init__(self) -> None:
        self.started = False

    def ensure(self) -> None:
        import ray

        if ray.is_initialized():
            return
        before = child_pids()
        # address="local": this machine only, never another host or an instance found through RAY_ADDRESS.
        ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="procflow-tests",
                 log_to_driver=False)
        self.started = True
        SESSION_HELPERS.update(child_pids() - before)

    def shutdown(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False


@pytest.fixture(scope="session")
def ray_session():
    session = RaySession()
    yield session
    session.shutdown()
