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
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer records (seconds instead of a minute)")
    args = parser.parse_args()
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
