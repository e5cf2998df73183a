"""Service round trips: procflow services vs a multiprocessing.Manager proxy, in the same run.

Each caller task makes N synchronous calls `echo(i) -> i + 1` and times them itself. Measured with one
caller task and with 4 caller tasks (the service has one replica, and then 4 replicas), for:

    procflow   self.call_service("echo", i)          request/response over shared-memory rings
    manager    proxy.process(i)                       a BaseManager-registered object (socket + pickle)

Run: python bench/services.py [--quick] [--calls N]. Prints round trips per second and the ratio
(target: procflow >= 5x the Manager).
"""

from __future__ import annotations

import argparse
import os
import resource
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few calls, for CI smoke runs")
    parser.add_argument("--calls", type=int, default=None, help="calls per caller task")
    args = parser.parse_args()
    calls = args.calls or (2_000 if args.quick else 20_000)
    env_dir = tempfile.mkdtemp(prefix="procflow-bench-services-")
    print(f"{calls} synchronous calls per caller task, {os.cpu_count()} CPUs")
    print(f"{'callers':>7} {'procflow rt/s':>14} {'manager rt/s':>13} {'ratio':>6} "
          f"{'procflow cpu us/call':>21} {'manager cpu us/call':>20}")
    ratios = []
    for callers in (1, 4):
        service_rate, cpu0 = run(
            callers, calls, env_dir, lambda: (ServiceCaller, calls),
            lambda env, c=callers: env.register_service("echo", Echo, parallelism=c))
        service_cpu = (_children_cpu() - cpu0) / (callers * calls) * 1e6
        managers = [EchoManager() for _ in range(callers)]
        for m in managers:
            m.start()
        try:
            proxies = [m.Echo() for m in managers]
            manager_rate, cpu0 = run(callers, calls, env_dir, lambda p=proxies: (ManagerCaller, calls, p))
            proxies.clear()
        finally:
            for m in managers:
                m.shutdown()
        manager_cpu = (_children_cpu() - cpu0) / (callers * calls) * 1e6
        ratio = service_rate / manager_rate
        ratios.append(ratio)
        print(f"{callers:>7} {service_rate:>14,.0f} {manager_rate:>13,.0f} {ratio:>5.1f}x "
              f"{service_cpu:>21.1f} {manager_cpu:>20.1f}")
    print(f"target >= 5x the Manager: {'met' if min(ratios) >= 5 else 'NOT met'} (min ratio {min(ratios):.1f}x)")


if __name__ == "__main__":
    main()
