"""Back-pressure: a fast source feeding a slow sink must not pile records up in memory.

The source emits 16 KiB records as fast as it can; the sink sleeps `--sleep-ms` per record. A sampler
thread in the driver reads the RSS of every descendant process from /proc every 50 ms. With bounded
channels the RSS series stay flat: the source blocks on a full ring instead of buffering.

For contrast the same producer/consumer pair runs over an unbounded multiprocessing.Queue, whose
producer keeps every unsent record in its own memory.

Reported per contender: each process's RSS growth (peak minus its first sample); a contender is
"flat" when no process grew more than 16 MiB. The whole series is saved in the json for plotting.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import struct
import sys
import tempfile
import threading
import time
from typing import Any

from bench import common

try:  # the module must import (peers only) when procflow is missing or broken
    from procflow import BatchFunction, SinkFunction
except Exception:
    BatchFunction = SinkFunction = object

CTX = multiprocessing.get_context("fork")
RECORD = 16 * 1024
_I64 = struct.Struct("<q")
_FILL = b"\xab" * (RECORD - 8)
FLAT_LIMIT_MB = 16.0
JOB_TIMEOUT = 300.0


def make(i: int) -> bytes:
    return _I64.pack(i) + _FILL


class SlowCounter:
    """The sink's work: sleep, then count and checksum (shared by both contenders)."""

    def __init__(self, sleep_s: float) -> None:
        self.sleep_s, self.count, self.id_sum, self.nbytes = sleep_s, 0, 0, 0

    def add(self, r: bytes) -> None:
        time.sleep(self.sleep_s)
        self.count += 1
        self.id_sum += _I64.unpack_from(r, 0)[0]
        self.nbytes += len(r)

    def summary(self) -> dict:
        return {"count": self.count, "id_sum": self.id_sum, "nbytes": self.nbytes}


def check(contender: str, n: int, s: dict) -> None:
    common.verify(contender, "record count", s["count"], n)
    common.verify(contender, "id checksum", s["id_sum"], n * (n - 1) // 2)
    common.verify(contender, "byte total", s["nbytes"], n * RECORD)


class Sampler(threading.Thread):
    """Samples the RSS (MiB) of every descendant of this process until stopped."""

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.interval, self.samples, self._stop_evt = interval, [], threading.Event()
        self.t0 = time.perf_counter()

    def run(self) -> None:
        while not self._stop_evt.is_set():
            t = time.perf_counter() - self.t0
            # A process that is exiting reports 0 pages; skip it rather than plot a false drop.
            rss = {pid: kb / 1024 for pid in common.child_pids() if (kb := common.rss_kb(pid))}
            self.samples.append((t, rss))
            self._stop_evt.wait(self.interval)

    def stop(self) -> list:
        self._stop_evt.set()
        self.join()
        return self.samples


def summarize(samples: list, roles: dict[int, str]) -> dict:
    """Per-process series and growth: peak RSS minus the process's first sample.

    Filling a bounded ring touches its pages once, so bounded channels grow by at most their capacity;
    an unbounded buffer grows with the backlog.
    """
    series: dict[int, list] = {}
    for t, rss in samples:
        for pid, mb in rss.items():
            series.setdefault(pid, []).append((round(t, 3), round(mb, 2)))
    out, worst = {}, 0.0
    for pid, pts in series.items():
        if len(pts) < 5:
            continue  # short-lived helpers (e.g. a forkserver probe) say nothing about steady state
        growth = max(mb for _, mb in pts) - pts[0][1]
        worst = max(worst, growth)
        out[str(pid)] = {"role": roles.get(pid, "?"), "growth_mb": round(growth, 2), "series": pts}
    return {"processes": out, "max_growth_mb": round(worst, 2), "flat": worst <= FLAT_LIMIT_MB}


# -- procflow ------------------------------------------------------------------------------------------

class FastSource(BatchFunction):
    def __init__(self, n: int, pid_path: str) -> None:
        self.n, self.pid_path = n, pid_path

    def open(self) -> None:
        with open(self.pid_path, "a") as f:
            f.write(f"{os.getpid()} source\n")
        self.i = 0

    def execute(self):
        if self.i >= self.n:
            return None
        self.i += 1
        return make(self.i - 1)


class SlowSink(SinkFunction):
    def __init__(self, sleep_s: float, pid_path: str, out_path: str) -> None:
        self.sleep_s, self.pid_path, self.out_path = sleep_s, pid_path, out_path

    def open(self) -> None:
        with open(self.pid_path, "a") as f:
            f.write(f"{os.getpid()} sink\n")
        self.counter = SlowCounter(self.sleep_s)

    def execute(self, record) -> None:
        self.counter.add(record)

    def close(self) -> None:
        with open(self.out_path, "w") as f:
            json.dump(self.counter.summary(), f)


def run_procflow(queue: str, n: int, sleep_s: float) -> dict:
    import procflow

    tmp = tempfile.mkdtemp(prefix="procflow_bench_")
    pid_path, out_path = os.path.join(tmp, "pids"), os.path.join(tmp, "out.json")
    sampler = Sampler()
    env = procflow.LocalEnvironment(f"bench_memory_{queue}", config={"queue": queue, "chaining": False})
    try:
        env.from_batch(FastSource, n, pid_path).sink(SlowSink, sleep_s, pid_path, out_path)
        sampler.start()
        common.submit_with_watchdog(env, JOB_TIMEOUT)
    finally:
        samples = sampler.stop()
        env.close()
    try:
        with open(out_path) as f:
            check(f"procflow-{queue}", n, json.load(f))
        with open(pid_path) as f:
            roles = {int(p): r for p, r in (line.split() for line in f)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summarize(samples, roles)


# -- unbounded mp.Queue contrast ----------------------------------------------------------------------

def _q_producer(q, n):
    time.sleep(0.2)  # a head start for the sampler, so it sees the producer's RSS before the backlog
    for i in range(n):
        q.put(make(i))
    q.put(None)
    q.close()
    q.join_thread()


def _q_consumer(q, res, sleep_s):
    c = SlowCounter(sleep_s)
    while (r := q.get()) is not None:
        c.add(r)
    res.send(c.summary())


def run_mp_queue(n: int, sleep_s: float) -> dict:
    q = CTX.Queue()  # unbounded, as multiprocessing.Queue() is by default
    res_r, res_w = CTX.Pipe(duplex=False)
    prod = CTX.Process(target=_q_producer, args=(q, n), daemon=True)
    cons = CTX.Process(target=_q_consumer, args=(q, res_w, sleep_s), daemon=True)
    sampler = Sampler()
    sampler.start()
    try:
        cons.start()
        prod.start()
        summary = res_r.recv() if res_r.poll(JOB_TIMEOUT) else None
    finally:
        for p in (prod, cons):
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
        samples = sampler.stop()
    if summary is None:
        raise RuntimeError("mp.Queue consumer did not report")
    check("mp.Queue", n, summary)
    return summarize(samples, {prod.pid: "producer", cons.pid: "consumer"})


def main(argv: list[str] | None = None) -> dict:
    parser = common.base_parser("python -m bench.memory", __doc__, default_runs=1)
    parser.add_argument("--n", type=int, default=None, help="records (default 6000, 2000 with --quick)")
    parser.add_argument("--sleep-ms", type=float, default=0.5, help="sink sleep per record (default 0.5)")
    args = parser.parse_args(argv)
    n = args.n or (2000 if args.quick else 6000)
    sleep_s = args.sleep_ms / 1000
    shm_before = common.shm_entries()

    procflow_mod, why = common.import_procflow()
    doc: dict[str, Any] = {"params": {"n": n, "record_bytes": RECORD, "sleep_ms": args.sleep_ms,
                                      "quick": args.quick, "flat_limit_mb": FLAT_LIMIT_MB},
                           "contenders": {}, "skipped": {}, "failed": {}}
    plan = [("mp.Queue (unbounded)", lambda: run_mp_queue(n, sleep_s))]
    if procflow_mod is None:
        doc["skipped"]["procflow"] = why
        print(f"NOTE: procflow contenders skipped ({why})")
    else:
        plan = [("procflow-shm", lambda: run_procflow("shm", n, sleep_s)),
                ("procflow-mp", lambda: run_procflow("mp", n, sleep_s)), *plan]
    for name, fn in plan:
        print(f"  {name} ...", flush=True)
        try:
            doc["contenders"][name] = fn()
        except common.VerificationError:
            raise
        except Exception as exc:
            doc["failed"][name] = f"{type(exc).__name__}: {exc}"
            print(f"  {name}: FAILED: {exc}")
    rows = []
    for name, r in doc["contenders"].items():
        peak = max((max(mb for _, mb in p["series"]) for p in r["processes"].values()), default=None)
        rows.append([name, len(r["processes"]), peak, r["max_growth_mb"], r["flat"]])
    common.print_table(f"fast source -> slow sink, {n} x {RECORD // 1024} KiB, sink sleeps {args.sleep_ms} ms",
                       ["contender", "procs", "peak RSS MiB", "growth MiB", "flat"], rows)
    doc["leaks"] = common.leak_report(shm_before)
    if not args.no_save:
        common.write_result("memory", doc)
    return doc


if __name__ == "__main__":
    main(sys.argv[1:])
