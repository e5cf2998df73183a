"""Issue 24: procflow jobs interleaved with plain Ray task and actor jobs in one Ray session.

The bench's mix of Ray jobs failed procflow-on-Ray twice with `GetTimeoutError: ... getting the actor
handle ... GCS server is dead or under high load`. That error comes only from a by-name actor lookup
(`ray.get_actor`), a synchronous GCS request: the service clients looked every replica up by name, and
each job returned while the actors it had killed were still dying beside the next job's. Now every handle
travels from the driver (channel.peer) and a job ends once its actors are dead; these tests hold both.
"""

from __future__ import annotations

import time

import pytest

from procflow import BaseService, MapFunction, RayEnvironment

ray = pytest.importorskip("ray")

JOBS = 30


@pytest.fixture
def ray_instance(ray_session):
    ray_session.ensure()


class Double(BaseService):
    def process(self, x):
        return 2 * x


class ViaService(MapFunction):
    def execute(self, x):
        return self.call_service("double", x)


def negate(x):
    return -x


def square(x):
    return x * x


class Total:
    """A plain Ray actor, created and killed between procflow jobs."""

    def __init__(self) -> None:
        self.total = 0

    def add(self, x: int) -> int:
        self.total += x
        return self.total


def named_actors(prefix: str) -> set[str]:
    """The live named actors of this Ray instance whose name starts with `prefix` (a GCS listing)."""
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)}


def procflow_job(i: int, env_dir) -> tuple[str, list, list]:
    """One small procflow job (job id, results, expected), the kinds taking turns: a chain on one actor,
    a keyed job over three actors, a job calling a service replica."""
    with RayEnvironment(f"mixed{i}", env_dir=env_dir) as env:
        if i % 5 == 2:
            env.register_service("double", Double)
            result = env.from_batch(range(30)).map(ViaService).collect()
            want = [2 * x for x in range(30)]
        elif i % 5 == 4:
            result = (env.from_batch(range(200), parallelism=1).keyby(lambda x: x % 7)
                      .map(negate, parallelism=2).collect())
            want = [-x for x in range(200)]
        else:
            result = env.from_batch(range(100)).map(square).collect()
            want = [x * x for x in range(100)]
        job = env.submit()
    return job.job_id, sorted(result.results()), sorted(want)


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_procflow_jobs_between_plain_ray_jobs(ray_instance, env_dir):
    """30 procflow jobs, each followed by a plain Ray task job and a plain actor job: every result exact,
    no GCS timeout, and each procflow job's actors dead by the time it returned."""
    remote_square = ray.remote(square)
    remote_total = ray.remote(Total)
    started = time.monotonic()
    for i in range(JOBS):
        job_id, got, want = procflow_job(i, env_dir)
        assert got == want, f"job {i}"
        # Dead, not only asked to die: nothing of the job competes with what runs next.
        assert named_actors(f"procflow-{job_id}-") == set(), f"job {i} left actors behind"
        assert ray.get([remote_square.remote(k) for k in range(20)]) == [k * k for k in range(20)]
        actor = remote_total.remote()
        assert ray.get([actor.add.remote(k) for k in range(5)]) == [0, 1, 3, 6, 10]
        ray.kill(actor)
    # Not a timing assertion: a note for whoever reads the log of a slow run.
    print(f"{JOBS} procflow jobs and {2 * JOBS} plain Ray jobs in {time.monotonic() - started:.1f} s")


class AskTwice(MapFunction):
    """Calls its service twice per record: the replica's own handle is used, never a name lookup."""

    def execute(self, x):
        return self.call_service("double", self.call_service("double", x))


class Quadruple(BaseService):
    def process(self, x):
        return self.call_service("double", self.call_service("double", x))


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_no_actor_is_looked_up_by_name(ray_instance, env_dir):
    """Tasks and replicas (a service calling a service) reach each other through the handles the driver
    handed over: with the by-name lookup broken in a task actor, its service calls still work."""
    with RayEnvironment("no-lookups", env_dir=env_dir) as env:
        env.register_service("double", Double)
        env.register_service("quadruple", Quadruple)
        result = (env.from_batch(range(40), parallelism=1).keyby(lambda x: x % 3)
                  .map(AskTwice, parallelism=2).map(Deny).collect())
        env.submit()
    assert sorted(result.results()) == [4 * x for x in range(40)]


class Deny(MapFunction):
    """Checks, inside the task actor, that ray.get_actor is never needed: it is replaced by a function
    that fails, and a service call to a replica this actor has not called before still works."""

    def open(self):
        def refuse(*args, **kwargs):
            raise AssertionError("ray.get_actor called on a procflow path")

        ray.get_actor = refuse

    def execute(self, x):
        assert self.call_service("quadruple", 1) == 4
        return x
