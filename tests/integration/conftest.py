"""Backend fixtures: every behaviour runs on both channel kinds, and a subset also under spawn."""

from __future__ import annotations

import time

import pytest

from procflow import LocalEnvironment
from procflow.testing import child_pids, own_segments

FORK_MODES = [("shm", "fork"), ("mp", "fork")]
SPAWN_MODES = [("shm", "spawn"), ("mp", "spawn")]


def _ids(modes):
    return [f"{q}-{m}" for q, m in modes]


@pytest.fixture(params=FORK_MODES, ids=_ids(FORK_MODES))
def mode(request):
    """(queue kind, start method): the fast matrix most tests run on."""
    return request.param


@pytest.fixture(params=FORK_MODES + SPAWN_MODES, ids=_ids(FORK_MODES + SPAWN_MODES))
def any_mode(request):
    """The full matrix, spawn included (slower: for the behaviours where spawn can differ)."""
    return request.param


@pytest.fixture
def make_env(env_dir):
    """make_env(mode, **config) -> a LocalEnvironment that is closed after the test."""
    envs: list = []

    def make(mode=("shm", "fork"), name="test", **config):
        queue, start_method = mode
        env = LocalEnvironment(name, config={"queue": queue, **config}, start_method=start_method,
                               env_dir=env_dir)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


def wait_for(predicate, timeout=10.0, what="condition"):
    """Deadline loop with backoff, for observing OS state (a file written, a process gone)."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def assert_no_leaks(children_before, segments_before, timeout=10.0):
    """The autouse fixture's check, for tests that run many jobs (hypothesis) inside one test call."""
    wait_for(lambda: not (child_pids() - children_before) and not (own_segments() - segments_before),
             timeout, "child processes and segments to be gone")
