"""Small-record throughput on Ray: procflow's RayEnvironment against the same pipeline built by hand on
`ray.util.queue.Queue`, in one run on one local Ray instance.

    procflow:  source actor ─batched push() calls, credits─► map actor ─► sink actor
    by hand:   source actor ─Queue.put─► [queue actor] ─Queue.get─► map actor ─put─► [queue actor] ─get─► sink

Both pipelines are source -> map(x + 1) -> sink over small ints. Each is timed from the moment its actors
are ready until the sink has seen the last record (actor start-up is excluded for both), and reported as
records/s and as per-record overhead (wall time / records). The hand-built one moves each record with one
put and one get, each an actor call on the queue actor, which is how Queue is meant to be used.

    python -m bench.ray_backend            # 1,000,000 vs 10,000 records
    python -m bench.ray_backend --quick    # 200,000 vs 1,500 records
    python -m bench.ray_backend --startup  # start-up of a 4-task pipeline against 4 plain actors (issue 24)

Start-up (`--startup`), on one running, warmed-up Ray instance, each timed STARTUP_RUNS times (median):
  plain actors   4 actors (num_cpus=0, as procflow's) created at once, until each has answered a call;
                 then ray.kill and until each is dead
  procflow       a 4-task job (source -> keyby -> map x2 -> collect: 4 task actors) over 4 records, from
                 submit() until every task is ready (its sources released), and until submit() returned
"""

from __future__ import annotations

import argparse
import statistics
import time

import ray
from ray.util.queue import Queue

from procflow import RayEnvironment

_END = "__end__"


@ray.remote(num_cpus=0)
class QueueSource:
    def ready(self) -> bool:
        return True

    def run(self, out: Queue, n: int) -> None:
        for i in range(n):
            out.put(i)
        out.put(_END)


@ray.remote(num_cpus=0)
class QueueMap:
    def ready(self) -> bool:
        return True

    def run(self, inp: Queue, out: Queue) -> None:
        while True:
            x = inp.get()
            if x == _END:
                out.put(_END)
                return
            out.put(x + 1)


@ray.remote(num_cpus=0)
class QueueSink:
    def ready(self) -> bool:
        return True

    def run(self, inp: Queue) -> int:
        count = 0
        while inp.get() != _END:
            count += 1
        return count


def by_hand(n: int) -> float:
    q1 = Queue(maxsize=1000, actor_options={"num_cpus": 0})
    q2 = Queue(maxsize=1000, actor_options={"num_cpus": 0})
    source, mapper, sink = QueueSource.remote(), QueueMap.remote(), QueueSink.remote()
    ray.get([a.ready.remote() for a in (source, mapper, sink)] + [q1.actor.qsize.remote(), q2.actor.qsize.remote()])
    started = time.perf_counter()
    done = sink.run.remote(q2)
    mapper.run.remote(q1, q2)
    source.run.remote(q1, n)
    count = ray.get(done)
    elapsed = time.perf_counter() - started
    assert count == n, (count, n)
    for actor in (source, mapper, sink):
        ray.kill(actor)
    q1.shutdown()
    q2.shutdown()
    return elapsed


def with_procflow(n: int) -> float:
    env = RayEnvironment("bench-ray", config={"chaining": False})   # the transport, not a chain
    env.from_batch(range(n)).map(lambda x: x + 1).sink(lambda x: None)
    job = env.submit()
    metrics = job.metrics
    env.close()
    assert metrics["sink_0"]["records_in"] == n, metrics
    # Every task stamps `started` once it is ready; the sources are released right after the last one.
    released = max(m["started"] for m in metrics.values())
    return max(m["finished"] for m in metrics.values()) - released


STARTUP_RUNS = 5
STARTUP_TASKS = 4


@ray.remote(num_cpus=0)
class Plain:
    def ready(self) -> bool:
        return True


def plain_actors_startup() -> tuple[float, float]:
    """(seconds until 4 plain actors answered, seconds until they were dead again)."""
    from procflow.backends.ray.backend import wait_until_dead

    started = time.perf_counter()
    actors = [Plain.remote() for _ in range(STARTUP_TASKS)]
    ray.get([a.ready.remote() for a in actors])
    up = time.perf_counter() - started
    for actor in actors:
        ray.kill(actor)
    wait_until_dead({str(i): a for i, a in enumerate(actors)}, 30.0)
    return up, time.perf_counter() - started


def procflow_startup() -> tuple[float, float]:
    """(seconds from submit() until every task was ready, seconds until submit() returned)."""
    env = RayEnvironment("bench-ray-startup")
    try:
        env.from_batch(range(STARTUP_TASKS), parallelism=1).keyby(lambda x: x % 2) \
            .map(lambda x: x + 1, parallelism=2).collect()
        wall, started = time.time(), time.perf_counter()
        job = env.submit()
        total = time.perf_counter() - started
        backend = job._dispatcher.backend
        assert len(backend.actors) == STARTUP_TASKS, sorted(backend.actors)
        # Every task stamps `started` once released, which is once all are ready.
        ready = max(m["started"] for m in job.metrics.values()) - wall
        return ready, total
    finally:
        env.close()


def startup() -> None:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ray.get([Plain.remote().ready.remote() for _ in range(2)])   # Ray's own first start-up, untimed
        rows: dict[str, list[tuple[float, float]]] = {"plain actors": [], "procflow": []}
        for _ in range(STARTUP_RUNS):   # alternated, so that both see the same drift of the machine
            rows["plain actors"].append(plain_actors_startup())
            rows["procflow"].append(procflow_startup())
    finally:
        ray.shutdown()
    print(f"start-up of {STARTUP_TASKS} actors on a running Ray instance, median of {STARTUP_RUNS} "
          "(ready / ready, ran and torn down):")
    for name, runs in rows.items():
        up = statistics.median(r[0] for r in runs)
        total = statistics.median(r[1] for r in runs)
        print(f"  {name:14s} {up:6.2f} s / {total:6.2f} s   (runs: {', '.join(f'{r[0]:.2f}' for r in runs)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer records (seconds instead of a minute)")
    parser.add_argument("--startup", action="store_true", help="start-up only (see the module docstring)")
    args = parser.parse_args()
    if args.startup:
        startup()
        return
    n_procflow, n_queue = (200_000, 1_500) if args.quick else (1_000_000, 10_000)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        t_pf = with_procflow(n_procflow)
        t_q = by_hand(n_queue)
    finally:
        ray.shutdown()
    rate_pf, rate_q = n_procflow / t_pf, n_queue / t_q
    print(f"procflow RayEnvironment : {n_procflow:>9,} records in {t_pf:7.3f} s = {rate_pf:>11,.0f} rec/s, "
          f"{1e6 / rate_pf:8.2f} us/record")
    print(f"ray.util.queue by hand  : {n_queue:>9,} records in {t_q:7.3f} s = {rate_q:>11,.0f} rec/s, "
          f"{1e6 / rate_q:8.2f} us/record")
    print(f"ratio: {rate_pf / rate_q:,.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
