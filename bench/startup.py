"""Start-up cost and memory per task process.

1. Start-up + tear-down: build, submit and close an empty 16-task pipeline
   (from_batch([]) -> map, parallelism 15 -> collect), timed end to end. Context row: creating and
   joining a 16-process multiprocessing.Pool. Target: procflow < 0.5 s with fork.
2. Memory per task: a 16-task pipeline (1 source, 14 maps, 1 sink) is left running
   (submit(autostop=False)); each task's open() appends its pid to a file, and the driver reads
   Pss/Rss/private memory from /proc/<pid>/smaps_rollup. PSS splits pages shared after fork fairly
   between the processes that share them, so it is the honest "cost of one more task". Context row:
   a bare forked multiprocessing.Process from the same driver.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

from bench import common

try:  # the module must import (peers only) when procflow is missing or broken
    from procflow import BatchFunction, MapFunction, SinkFunction
except Exception:
    BatchFunction = MapFunction = SinkFunction = object

CTX = multiprocessing.get_context("fork")
TASKS = 16
JOB_TIMEOUT = 60.0


def _identity(record):
    return record


def _record_pid(path: str, role: str) -> None:
    # One small O_APPEND write per process: atomic, so concurrent tasks never interleave lines.
    with open(path, "a") as f:
        f.write(f"{os.getpid()} {role}\n")


class PidSource(BatchFunction):
    """Trickles a record every 20 ms so the job stays alive until stopped (bounded to `limit_s`)."""

    def __init__(self, path: str, limit_s: float) -> None:
        self.path, self.limit_s = path, limit_s

    def open(self) -> None:
        _record_pid(self.path, "source")
        self.i, self.deadline = 0, time.monotonic() + self.limit_s

    def execute(self):
        if time.monotonic() > self.deadline:
            return None
        time.sleep(0.02)
        self.i += 1
        return self.i


class PidMap(MapFunction):
    def __init__(self, path: str) -> None:
        self.path = path

    def open(self) -> None:
        _record_pid(self.path, "map")

    def execute(self, record):
        return record


class PidSink(SinkFunction):
    def __init__(self, path: str) -> None:
        self.path = path

    def open(self) -> None:
        _record_pid(self.path, "sink")

    def execute(self, record) -> None:
        pass


# -- start-up ------------------------------------------------------------------------------------------

def startup_procflow(queue: str) -> None:
    import procflow

    env = procflow.LocalEnvironment("bench_startup", config={"queue": queue})
    try:
        res = env.from_batch([], parallelism=1).map(_identity, parallelism=TASKS - 1).collect()
        common.submit_with_watchdog(env, JOB_TIMEOUT)
        common.verify(f"procflow-{queue}", "records collected", len(res.results()), 0)
    finally:
        env.close()


def startup_pool() -> None:
    with CTX.Pool(TASKS) as pool:
        common.verify("mp.Pool", "map result", pool.map(_identity, range(TASKS)), list(range(TASKS)))
        pool.close()
        pool.join()


# -- memory --------------------------------------------------------------------------------------------

def _read_pids(path: str) -> dict[int, str]:
    try:
        with open(path) as f:
            return {int(p): role for p, role in (line.split() for line in f if line.strip())}
    except FileNotFoundError:
        return {}


def memory_procflow() -> dict:
    """PSS/RSS of each task of a running 16-task job."""
    import procflow

    tmp = tempfile.mkdtemp(prefix="procflow_bench_")
    path = os.path.join(tmp, "pids")
    env = procflow.LocalEnvironment("bench_startup_mem")
    notes = []
    try:
        (env.from_batch(PidSource, path, JOB_TIMEOUT)
            .map(PidMap, path, parallelism=TASKS - 2).sink(PidSink, path))
        job = env.submit(autostop=False)
        deadline = time.monotonic() + 30
        while len(_read_pids(path)) < TASKS and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = _read_pids(path)
        common.verify("procflow", "tasks that ran open()", len(pids), TASKS)
        time.sleep(0.5)  # let every task reach its steady state
        per_task = {pid: {"role": role, **(common.proc_memory_kb(pid) or {})} for pid, role in pids.items()}
        driver = common.proc_memory_kb(os.getpid())
        status_running = getattr(job, "status", None)
        t_stop = time.perf_counter()
        env.stop(timeout=30)
        try:
            job.wait(30)
        except TimeoutError:
            notes.append("job still running 30 s after env.stop()")
        stop_s = time.perf_counter() - t_stop
        status_after = job.status
    finally:
        env.close()
        shutil.rmtree(tmp, ignore_errors=True)
    pss = [m["pss"] for m in per_task.values() if "pss" in m]
    return {"tasks": per_task, "driver_kb": driver, "status_while_running": status_running,
            "status_after_stop": status_after, "stop_seconds": stop_s,
            "pss_median_kb": statistics.median(pss), "pss_max_kb": max(pss), "pss_sum_kb": sum(pss),
            "rss_median_kb": statistics.median(m["rss"] for m in per_task.values() if "rss" in m),
            "private_median_kb": statistics.median(m["private"] for m in per_task.values() if "private" in m),
            "notes": notes}


def memory_bare_process(count: int = 4) -> dict:
    """The same numbers for bare forked processes that just sleep: the floor a task cannot beat."""
    stop = CTX.Event()
    procs = [CTX.Process(target=stop.wait, args=(30,), daemon=True) for _ in range(count)]
    for p in procs:
        p.start()
    try:
        time.sleep(0.5)
        mems = [common.proc_memory_kb(p.pid) for p in procs]
    finally:
        stop.set()
        for p in procs:
            p.join(10)
    return {"pss_median_kb": statistics.median(m["pss"] for m in mems),
            "rss_median_kb": statistics.median(m["rss"] for m in mems),
            "private_median_kb": statistics.median(m["private"] for m in mems)}


def main(argv: list[str] | None = None) -> dict:
    parser = common.base_parser("python -m bench.startup", __doc__, default_runs=5)
    args = parser.parse_args(argv)
    shm_before = common.shm_entries()
    runs = min(args.runs, 3) if args.quick else args.runs

    procflow_mod, why = common.import_procflow()
    doc: dict[str, Any] = {"params": {"runs": runs, "quick": args.quick, "tasks": TASKS},
                           "startup": {}, "memory": {}, "skipped": {}, "failed": {}}
    plan = [("mp.Pool(16)", startup_pool)]
    if procflow_mod is None:
        doc["skipped"]["procflow"] = why
        print(f"NOTE: procflow contenders skipped ({why})")
    else:
        plan = [("procflow-shm", lambda: startup_procflow("shm")),
                ("procflow-mp", lambda: startup_procflow("mp")), *plan]
    for name, fn in plan:
        try:
            doc["startup"][name] = common.median_of(fn, runs, warmup=1)
        except common.VerificationError:
            raise
        except Exception as exc:
            doc["failed"][f"startup/{name}"] = f"{type(exc).__name__}: {exc}"
            print(f"{name}: FAILED: {exc}")
    common.print_table(f"start-up + tear-down of {TASKS} processes (median of {runs})",
                       ["contender", "seconds", "min", "max"],
                       [[k, v["median"], min(v["times"]), max(v["times"])] for k, v in doc["startup"].items()])

    doc["memory"]["bare fork"] = memory_bare_process()
    if procflow_mod is not None:
        try:
            doc["memory"]["procflow task"] = memory_procflow()
        except common.VerificationError:
            raise
        except Exception as exc:
            doc["failed"]["memory/procflow"] = f"{type(exc).__name__}: {exc}"
            print(f"procflow memory: FAILED: {exc}")
    common.print_table("memory per process, MiB (median over processes)", ["process", "PSS", "RSS", "private"],
                       [[k, v["pss_median_kb"] / 1024, v["rss_median_kb"] / 1024, v["private_median_kb"] / 1024]
                        for k, v in doc["memory"].items()])

    pf = doc["startup"].get("procflow-shm", {}).get("median")
    doc["targets"] = [{"name": "16-task start-up + tear-down (s)", "value": pf, "goal": "< 0.5",
                       "met": None if pf is None else pf < 0.5}]
    common.print_table("targets", *common.target_table(doc["targets"]))
    doc["leaks"] = common.leak_report(shm_before)
    if not args.no_save:
        common.write_result("startup", doc)
    return doc


if __name__ == "__main__":
    main(sys.argv[1:])
