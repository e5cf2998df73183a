"""What only the Ray backend has: numpy arrays through the object store with credit backpressure, a dead
actor, killing a job's actors, and its own configuration errors.

What Ray computes, like every backend, is checked by the conformance tests (the `backend` fixture's ray
runs). They and these share the session's one local Ray instance (tests/conftest.py `ray_session`, this
machine only): starting Ray takes seconds.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from procflow import BaseService, JobFailedError, MapFunction, RayEnvironment, SourceFunction

from .conftest import wait_for

ray = pytest.importorskip("ray")


@pytest.fixture
def ray_instance(ray_session):
    ray_session.ensure()


def die_on_7(x):
    if x == 7:
        os._exit(3)
    return x


class Endless(SourceFunction):
    def open(self):
        self.n = 0

    def execute(self):
        self.n += 1
        return self.n


# -- Ray only ------------------------------------------------------------------------------------

@pytest.mark.ray
@pytest.mark.timeout(60)
def test_numpy_arrays_and_backpressure(ray_instance, env_dir):
    # 2 MB arrays go through the object store; credits=1 forces the producer to wait on every batch.
    with RayEnvironment("arrays", env_dir=env_dir, credits=1) as env:
        sums = (env.from_batch(range(12)).map(lambda i: np.full(1 << 18, i, dtype=np.float64))
                .map(lambda a: (int(a[0]), float(a.sum())), parallelism=2).collect())
        env.submit()
    assert sorted(sums.results()) == [(i, float(i * (1 << 18))) for i in range(12)]


@pytest.mark.ray
@pytest.mark.timeout(60)
def test_dead_actor_fails_the_job(ray_instance, env_dir):
    with RayEnvironment("dead", env_dir=env_dir) as env:
        env.from_batch(range(20)).map(die_on_7, name="dies").collect()
        with pytest.raises(JobFailedError) as info:
            env.submit()
    # source and map share an actor (a chain), whose counters die with it: the error names the actor's
    # task, and the operators it ran
    assert info.value.task == "batch_0"
    assert "died" in str(info.value) and "which ran the chain batch_0 -> dies_0" in str(info.value)


class ActorName(BaseService):
    def process(self, x):
        return ray.get_runtime_context().get_actor_name()


class AsksActor(MapFunction):
    def execute(self, x):
        return self.call_service("named", x)


@pytest.mark.ray
@pytest.mark.timeout(60)
def test_service_replicas_are_named_actors_of_the_job_killed_at_cleanup(ray_instance, env_dir):
    """Issue 17: each replica is an actor named like the job's task actors, in the job's namespace, and
    none outlives the job."""
    with RayEnvironment("svc", env_dir=env_dir) as env:
        env.register_service("named", ActorName, parallelism=2)
        result = env.from_batch(range(4)).map(AsksActor, parallelism=2).collect()
        job = env.submit()
        names = {f"procflow-{job.job_id}-named[{i}]" for i in range(2)}
        assert set(result.results()) == names
        assert job.service_metrics["named"]["calls"] == 4

        def gone(name):
            try:
                ray.get_actor(name, namespace=env.namespace)
            except ValueError:
                return True
            return False

        for name in names:
            wait_for(lambda name=name: gone(name), timeout=20, what=f"actor {name} to be gone")


@pytest.mark.ray
def test_queue_kind_must_be_ray(env_dir):
    with pytest.raises(ValueError, match="LocalEnvironment"):
        RayEnvironment("q", {"queue": "shm"}, env_dir=env_dir)


@pytest.mark.ray
@pytest.mark.timeout(60)
def test_kill_ends_the_job_and_every_actor(ray_instance, env_dir):
    import time

    with RayEnvironment("killed", env_dir=env_dir) as env:
        env.from_source(Endless).map(lambda x: x, parallelism=2).collect()
        job = env.submit(autostop=False)
        deadline = time.monotonic() + 30
        while job.metrics["source_0"]["records_out"] == 0:   # live counters, read from the actors
            assert time.monotonic() < deadline, "the source never emitted"
            time.sleep(0.05)
        names = [job._dispatcher.backend.actor_name(t) for t in job.metrics]
        job.kill("test")
        assert job.status == "killed"
        with pytest.raises(JobFailedError, match="killed: test"):
            job.wait()
    deadline = time.monotonic() + 30
    alive = set(names)
    while alive:   # ray.kill is asynchronous: observe the actors go, with a deadline
        for name in list(alive):
            try:
                ray.get_actor(name, namespace=env.namespace)
            except ValueError:
                alive.discard(name)
        assert time.monotonic() < deadline, f"actors still alive: {alive}"
        time.sleep(0.1)
