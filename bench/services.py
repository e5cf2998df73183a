"""Service round trips: procflow services vs a multiprocessing.Manager proxy, in the same run.

Each caller task makes N synchronous calls `echo(i) -> i + 1` and times them itself. Measured with one
caller task and with 4 caller tasks (the service has one replica, and then 4 replicas), for:

    procflow   self.call_service("echo", i)          request/response over shared-memory rings
    manager    proxy.process(i)                       a BaseManager-registered object (socket + pickle)

Run: python -m bench.services [--quick] [--calls N] [--runs R]. Prints the median round trips per second
and the ratio (target: procflow >= 5x the Manager), and writes bench/results/services.json.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import tempfile
import time
from multiprocessing.managers import BaseManager

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from procflow import BaseService, LocalEnvironment, MapFunction  # noqa: E402


class Echo(BaseService):
    def process(self, x):
        return x + 1


class PlainEcho:
    def process(self, x):
        return x + 1


class EchoManager(BaseManager):
    pass


EchoManager.register("Echo", PlainEcho)


class ServiceCaller(MapFunction):
    def __init__(self, calls: int) -> None:
        self.calls = calls

    def execute(self, _):
        self.call_service("echo", 0)   # warm-up: the first call maps the request ring
        started = time.perf_counter()
        for i in range(self.calls):
            assert self.call_service("echo", i) == i + 1
        return self.calls, time.perf_counter() - started


class ManagerCaller(MapFunction):
    def __init__(self, calls: int, proxies: list) -> None:
        self.calls = calls
        self.proxies = proxies

    def execute(self, _):
        proxy = self.proxies[self.ctx.parallel_index % len(self.proxies)]
        proxy.process(0)               # warm-up: connects this process to the manager
        started = time.perf_counter()
        for i in range(self.calls):
            assert proxy.process(i) == i + 1
        return self.calls, time.perf_counter() - started


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(callers: int, calls: int, env_dir: str, make_caller, register=None) -> tuple[float, float]:
    """(round trips per second summed over `callers` concurrent caller tasks, CPU microseconds per call
    spent by every process of the run: callers, servers, and the job's own source and collect tasks)."""
    cpu = _children_cpu()
    with LocalEnvironment("bench-services", env_dir=env_dir, config={"progress": False}) as env:
        if register is not None:
            register(env)
        fn, *fn_args = make_caller()
        result = env.from_batch(range(callers)).map(fn, *fn_args, parallelism=callers).collect()
        env.submit()
    rows = result.results()
    total = sum(n for n, _ in rows)
    return total / max(seconds for _, seconds in rows), cpu


def _manager_run(callers: int, calls: int, env_dir: str) -> tuple[float, float]:
    managers = [EchoManager() for _ in range(callers)]
    for m in managers:
        m.start()
    try:
        proxies = [m.Echo() for m in managers]
        rate, cpu0 = run(callers, calls, env_dir, lambda p=proxies: (ManagerCaller, calls, p))
        proxies.clear()
    finally:
        for m in managers:
            m.shutdown()
    return rate, cpu0


def main(argv: list[str] | None = None) -> dict:
    from bench import common

    parser = common.base_parser("python -m bench.services", __doc__, default_runs=3)
    parser.add_argument("--calls", type=int, default=None, help="calls per caller task")
    args = parser.parse_args(argv)
    calls = args.calls or (2_000 if args.quick else 20_000)
    env_dir = tempfile.mkdtemp(prefix="procflow-bench-services-")
    print(f"{calls} synchronous calls per caller task, {os.cpu_count()} CPUs, median of {args.runs} runs")
    doc: dict = {"params": {"runs": args.runs, "quick": args.quick, "calls": calls}, "callers": {}}
    rows = []
    for callers in (1, 4):
        got: dict = {"procflow": ([], []), "manager": ([], [])}
        for _ in range(args.runs):   # interleaved, so a noisy moment hurts both contenders alike
            rate, cpu0 = run(callers, calls, env_dir, lambda: (ServiceCaller, calls),
                             lambda env, c=callers: env.register_service("echo", Echo, parallelism=c))
            got["procflow"][0].append(rate)
            got["procflow"][1].append((_children_cpu() - cpu0) / (callers * calls) * 1e6)
            rate, cpu0 = _manager_run(callers, calls, env_dir)
            got["manager"][0].append(rate)
            got["manager"][1].append((_children_cpu() - cpu0) / (callers * calls) * 1e6)
        entry = {name: {"rt_per_s": statistics.median(rates), "cpu_us_per_call": statistics.median(cpus),
                        "runs": rates} for name, (rates, cpus) in got.items()}
        entry["ratio"] = entry["procflow"]["rt_per_s"] / entry["manager"]["rt_per_s"]
        doc["callers"][str(callers)] = entry
        rows.append([callers, entry["procflow"]["rt_per_s"], entry["manager"]["rt_per_s"], entry["ratio"],
                     entry["procflow"]["cpu_us_per_call"], entry["manager"]["cpu_us_per_call"]])
    common.print_table("synchronous round trips", ["callers", "procflow rt/s", "manager rt/s", "x manager",
                                                   "procflow cpu us/call", "manager cpu us/call"], rows)
    doc["targets"] = [{"name": f"{c} caller(s): procflow vs Manager", "value": e["ratio"], "goal": ">= 5x",
                       "met": e["ratio"] >= 5} for c, e in doc["callers"].items()]
    common.print_table("targets", *common.target_table(doc["targets"]))
    if not args.no_save:
        common.write_result("services", doc)
    return doc


if __name__ == "__main__":
    main(sys.argv[1:])
