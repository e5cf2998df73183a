"""Backend fixtures.

`backend` is the conformance fixture: a test that takes it runs once per backend, and builds its
environments with `backend.make_env(name, **config)`. What runs where, and why:

- local-shm, local-mp: LocalEnvironment, one forked process per task, over shared-memory rings or
  multiprocessing queues. Every conformance test runs on both.
- inline: LocalEnvironment(executor="inline"), the whole graph in the driver. Every conformance test.
- ray: RayEnvironment on the session's one local Ray instance (tests/conftest.py `ray_session`, this
  machine only). Marked `ray` (`make test-fast` leaves it out) and skipped where ray is not installed.
  A Ray job costs 1.5-5 s of actor start-up on 2 cores against ~0.1 s locally, so a test that is one
  of many variations of a behaviour (a hypothesis search, a table of cases or of bad values) names the
  backends it runs on with `@pytest.mark.backends(...)`, keeping Ray for the one or two cases per
  behaviour family that cover it. Every family (operator results, routing, keyed state, exactly-once,
  stop, collect, errors, metrics, services) has Ray cases.
- local-shm-spawn, local-mp-spawn: the same under the spawn start method, only where a test asks for
  them with `backends(*ALL_LOCAL, ...)`: behaviours where a fresh interpreter per task can differ
  (hash seeds, pickling of functions).

Where a behaviour genuinely differs, the test asserts the difference (through `in_driver`,
`reports_progress`): inline runs every task in the driver and measures no CPU share; balance() is round
robin on inline and Ray, whose channels report no consumer progress; inline runs the whole job inside
submit(), so the stop tests (an unbounded source) run on CONCURRENT, the backends where
submit(autostop=False) returns while the job runs.

What runs on Ray, by family: operator results (6 of test_operators' cases), hash placement, round robin,
broadcast, balance, custom partitioners, join, comap (test_routing); the fixed exactly-once chain,
total order, empty and None-carrying sources (test_exactly_once); collect placement and order
(test_collect); hooks, stop, failures, metrics (test_lifecycle); routing info, partitioner objects, the
word count (test_extension_points); bytes-like records; a second submit. Not on Ray: the hypothesis
searches, the tables of bad values, and print() (it goes to the actor's log there).

Services run on every backend (issue 17): test_services.py runs on all four, and asserts where a
backend genuinely differs (inline: calls run in the driver's thread, one at a time; see its docstring).

`@pytest.mark.xfail_on(name, reason)` marks a known defect of one backend that a conformance test found:
a strict xfail of that run, so the fix turns it into a failure that asks for the mark's removal.

`mode` / `make_env` remain for tests of the local backend's own parts (rings, start
methods, process lifecycle): they build LocalEnvironments only.
"""

from __future__ import annotations

import enum
import importlib.util
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from procflow import LocalEnvironment
from procflow.testing import child_pids, own_segments

# -- the conformance fixture -------------------------------------------------------------------------


class Kind(enum.Enum):
    LOCAL = "local"      # LocalEnvironment: one OS process per task
    INLINE = "inline"    # LocalEnvironment(executor="inline"): every task in the driver
    RAY = "ray"          # RayEnvironment: one actor per task


@dataclass(frozen=True)
class BackendSpec:
    name: str
    kind: Kind
    queue: str | None = None        # local only: the channel kind
    start_method: str = "fork"      # local only


SPECS = {spec.name: spec for spec in (
    BackendSpec("local-shm", Kind.LOCAL, "shm"),
    BackendSpec("local-mp", Kind.LOCAL, "mp"),
    BackendSpec("inline", Kind.INLINE),
    BackendSpec("ray", Kind.RAY),
    BackendSpec("local-shm-spawn", Kind.LOCAL, "shm", "spawn"),
    BackendSpec("local-mp-spawn", Kind.LOCAL, "mp", "spawn"),
)}
LOCAL = ("local-shm", "local-mp")
SPAWN = ("local-shm-spawn", "local-mp-spawn")
CORE = (*LOCAL, "inline", "ray")        # the default: every backend once
NO_RAY = (*LOCAL, "inline")
# Where submit(autostop=False) returns while the job runs, so that a test can stop it: inline runs the
# whole job inside submit() (test_inline.py pins that), so an unbounded source never returns there.
CONCURRENT = (*LOCAL, "ray")
ALL_LOCAL = (*LOCAL, *SPAWN)
HAVE_RAY = importlib.util.find_spec("ray") is not None


def pytest_configure(config):
    config.addinivalue_line("markers", "backends(*names): run a `backend` test on these backends only "
                                       f"(names: {', '.join(SPECS)}); default {', '.join(CORE)}")
    config.addinivalue_line("markers", "xfail_on(name, reason): a known defect of one backend, found by a "
                                       "conformance test: a strict xfail of that backend's run")


def pytest_generate_tests(metafunc):
    if "backend" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("backends")
    names = marker.args if marker else CORE
    unknown = set(names) - set(SPECS)
    if unknown:
        raise ValueError(f"{metafunc.definition.nodeid}: unknown backend(s) {sorted(unknown)}; "
                         f"the backends are {list(SPECS)}")
    known_defects = {m.args[0]: m.args[1] for m in metafunc.definition.iter_markers("xfail_on")}
    params = []
    for name in names:
        marks: list[Any] = []
        if SPECS[name].kind is Kind.RAY:
            marks += [pytest.mark.ray, pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed")]
        if name in known_defects:
            marks.append(pytest.mark.xfail(strict=True, reason=known_defects[name]))
        params.append(pytest.param(name, id=name, marks=marks))
    metafunc.parametrize("backend", params, indirect=True)


@dataclass
class Backend:
    """What a conformance test knows of the backend it runs on, and how it makes environments there."""

    spec: BackendSpec
    env_dir: str
    envs: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def in_driver(self) -> bool:
        """Every task runs in the driver process (inline)."""
        return self.spec.kind is Kind.INLINE

    @property
    def reports_progress(self) -> bool:
        """Channels report the consumers' progress, so balance() follows it (local); else round robin."""
        return self.spec.kind is Kind.LOCAL

    def make_env(self, name: str = "test", *, env_dir: str | None = None, **config):
        """An environment of this backend (closed after the test, if the test has not closed it);
        `config` is the environment's config, `env_dir` its log folder (default: the test's)."""
        env_dir = env_dir or self.env_dir
        if self.spec.kind is Kind.RAY:
            from procflow import RayEnvironment

            env = RayEnvironment(name, config or None, env_dir=env_dir)
        elif self.spec.kind is Kind.INLINE:
            env = LocalEnvironment(name, config or None, env_dir=env_dir, executor="inline")
        else:
            env = LocalEnvironment(name, {"queue": self.spec.queue, **config}, env_dir=env_dir,
                                   start_method=self.spec.start_method)
        self.envs.append(env)
        return env


@pytest.fixture
def backend(request, env_dir):
    """The backend this run of a conformance test is on (parametrised by pytest_generate_tests above)."""
    spec = SPECS[request.param]
    if spec.kind is Kind.RAY:
        request.getfixturevalue("ray_session").ensure()
    handle = Backend(spec, env_dir)
    yield handle
    for env in handle.envs:
        env.close()


# -- the local backend's own fixtures ----------------------------------------------------------------

FORK_MODES = [("shm", "fork"), ("mp", "fork")]


def _ids(modes):
    return [f"{q}-{m}" for q, m in modes]


@pytest.fixture(params=FORK_MODES, ids=_ids(FORK_MODES))
def mode(request):
    """(queue kind, start method) of the local backend, for tests of its own parts."""
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


def wait_for(predicate, timeout=30.0, what="condition"):
    """Deadline loop with backoff, for observing OS state (a file written, a process gone). The deadline
    is generous: Ray actors took over 10 s to start on a CI machine loaded by the parallel suite."""
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
