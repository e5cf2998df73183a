"""The Ray backend against the local one: the same pipelines give the same results, key -> instance
included, plus what only Ray has (a dead actor, numpy through the object store).

One local Ray instance (num_cpus=2, this machine only) serves this whole module: starting Ray takes
seconds. It is module-scoped, so it starts before the first test's leak-check snapshot (its gcs/raylet
processes are children of this process and so count as "before") and is shut down after the last test's
leak check. Under pytest-xdist each worker that runs tests of this module starts its own instance.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from procflow import (
    CoMapFunction,
    JobFailedError,
    JoinFunction,
    LocalEnvironment,
    MapFunction,
    RayEnvironment,
    SourceFunction,
)
from procflow.runtime.communication.router import stable_hash

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="procflow-tests",
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module", params=["local", pytest.param("ray", marks=pytest.mark.ray)])
def backend(request):
    # Module scope, like ray_instance: both must exist before the per-test leak check takes its snapshot.
    if request.param == "ray":
        request.getfixturevalue("ray_instance")
    return request.param


@pytest.fixture
def make_env(backend, env_dir):
    envs = []

    def make(name: str = "conformance", **config):
        env = (RayEnvironment if backend == "ray" else LocalEnvironment)(
            name, config or None, env_dir=env_dir)
        envs.append(env)
        return env

    make.backend = backend
    yield make
    for env in envs:
        env.close()


# -- functions (module level, so that both backends can ship them) -----------------------------------

class WhereAmI(MapFunction):
    """(record, parallel index of this instance)"""

    def execute(self, record):
        return (record, self.ctx.parallel_index)


class PairJoin(JoinFunction):
    def open(self):
        self.seen = ({}, {})

    def execute(self, payload, key, tag):
        self.seen[tag].setdefault(key, []).append(payload)
        return [(key, payload, other) if tag == 0 else (key, other, payload)
                for other in self.seen[1 - tag].get(key, [])]


class Tag(CoMapFunction):
    def map0(self, record):
        return ("left", record)

    def map1(self, record):
        return ("right", record)


def fail_on_13(x):
    if x == 13:
        raise ValueError("thirteen is unlucky")
    return x


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


# -- conformance ---------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_map_filter_flatmap(make_env):
    env = make_env()
    words = (env.from_batch(["a b", "c", "", "d e f"] * 25)
             .flatmap(str.split, parallelism=2)
             .filter(lambda w: w != "c")
             .map(str.upper, parallelism=2))
    result = words.collect()
    env.submit()
    assert sorted(result.results()) == sorted(["A", "B", "D", "E", "F"] * 25)


def _nap(x):
    time.sleep(0.004)   # waits, burns no CPU
    return x


def test_task_metrics_report_the_task_threads_cpu_time(make_env):
    env = make_env()
    env.from_batch(range(50)).map(_nap).collect()
    job = env.submit()
    row = job.metrics["map_0"]
    assert row["busy_s"] >= 50 * 0.004 * 0.9
    assert 0 < row["cpu_s"] < row["busy_s"] / 4


def test_a_plain_collect_runs_in_the_driver_and_a_keyed_one_in_a_task(make_env):
    # Nothing to decide: no task (on Ray, no actor: seconds of start-up on a small machine) and the
    # upstream tasks ship to the driver; a keyed input runs its selector in a collect task.
    env = make_env()
    stream = env.from_batch(range(300)).map(lambda x: x + 1, parallelism=2)
    plain = stream.collect()
    keyed = stream.keyby(lambda x: x % 3).collect()
    job = env.submit()
    assert sorted(plain.results()) == sorted(keyed.results()) == list(range(1, 301))
    metrics = job.metrics
    assert metrics["collect_0"]["pid"] == os.getpid() and metrics["collect_0"]["records_in"] == 300
    assert metrics["collect2_0"]["pid"] != os.getpid() and metrics["collect2_0"]["records_in"] == 300
    # The driver times its storing of the plain collect's records, so its CPU share is a number.
    ops = job.summary()["operators"]
    assert isinstance(ops["collect"]["cpu_pct"], float) and isinstance(ops["collect2"]["cpu_pct"], float)


@pytest.mark.timeout(60)
def test_same_key_reaches_the_same_instance_as_local(make_env):
    """keyby(hash): the instance is stable_hash(key) % n on every backend (the local param checks that
    the local backend follows the formula too), and every record arrives once."""
    env = make_env()
    keys = ["alpha", "beta", "", 0, 1, -5, None, (1, 2), b"raw", 3.5] * 20
    where = env.from_batch(keys).keyby(lambda k: k).map(WhereAmI, parallelism=3).collect()
    env.submit()
    got = where.results()
    assert len(got) == len(keys)
    for key, index in got:
        assert index == stable_hash(key) % 3, key


@pytest.mark.timeout(60)
def test_broadcast_and_round_robin(make_env):
    env = make_env()
    source = env.from_batch(range(300))
    rr = source.map(WhereAmI, parallelism=3).collect()
    bc = source.keyby(lambda x: x, strategy="broadcast").map(WhereAmI, parallelism=3, name="bc").collect()
    env.submit()
    rr_counts = np.bincount([i for _, i in rr.results()], minlength=3)
    assert rr_counts.tolist() == [100, 100, 100]
    assert sorted(r for r, _ in rr.results()) == list(range(300))
    assert sorted(bc.results()) == sorted((x, i) for x in range(300) for i in range(3))


def test_balance_keeps_every_record_and_is_round_robin_on_ray(make_env):
    env = make_env()
    out = env.from_batch(range(300)).balance().map(WhereAmI, parallelism=3).collect()
    env.submit()
    assert sorted(r for r, _ in out.results()) == list(range(300))
    if make_env.backend == "ray":   # Ray channels report no consumer progress: round robin there
        assert np.bincount([i for _, i in out.results()], minlength=3).tolist() == [100, 100, 100]


@pytest.mark.timeout(60)
def test_join_and_comap(make_env):
    env = make_env()
    left = env.from_batch([(k, f"L{k}") for k in range(20)])
    right = env.from_batch([(k % 10, f"R{k}") for k in range(20)])
    joined = (left.connect(right).keyby(lambda r: r[0])
              .join(PairJoin, parallelism=2).collect())
    tagged = env.from_batch(range(5)).connect(env.from_batch(["x", "y"])).comap(Tag, parallelism=2).collect()
    env.submit()
    expected = sorted((k % 10, (k % 10, f"L{k % 10}"), (k % 10, f"R{k}")) for k in range(20))
    assert sorted(joined.results()) == expected
    assert sorted(tagged.results()) == sorted([("left", i) for i in range(5)] + [("right", c) for c in "xy"])


@pytest.mark.timeout(60)
def test_user_exception_fails_the_job_naming_task_and_record(make_env):
    env = make_env()
    env.from_batch(range(50)).map(fail_on_13, name="unlucky").collect()
    with pytest.raises(JobFailedError) as info:
        env.submit()
    err = info.value
    assert err.task == "unlucky_0"
    assert err.record == "13"
    assert "ValueError: thirteen is unlucky" in str(err)
    assert "fail_on_13" in err.remote_traceback


@pytest.mark.timeout(60)
def test_stop_drains_an_unbounded_source(make_env):
    env = make_env()
    result = env.from_source(Endless).map(lambda x: x * 2, parallelism=2).collect()
    job = env.submit(autostop=False)
    env.stop(timeout=30)
    assert job.status == "stopped"
    got = sorted(result.results())
    emitted = job.metrics["source_0"]["records_out"]
    assert got == [2 * i for i in range(1, emitted + 1)]   # nothing lost, nothing duplicated


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
    assert info.value.task == "dies_0"
    assert "died" in str(info.value)


@pytest.mark.ray
def test_register_service_is_not_there_yet(env_dir):
    with pytest.raises(NotImplementedError, match="Ray backend"):
        RayEnvironment("svc", env_dir=env_dir).register_service("s", object)


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
