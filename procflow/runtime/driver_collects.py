"""The collects a dispatcher runs itself, in the driver (see queue_descriptor/driver.py for why).

The Dispatcher uses it on the backends that run such collects in the driver (local, Ray; not inline,
where every task runs in the driver anyway): which collects need no task of their own, the edge descriptors
that send their records to the driver, and the bookkeeping a task would have done (counters, stop
accounting).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from procflow.graph.execution_graph import driver_side_collects
from procflow.runtime.communication.queue_descriptor.driver import DriverEdge
from procflow.runtime.control import Results
from procflow.runtime.job_control import FIELDS


class DriverCollects:
    """The collects a dispatcher runs itself, and their counters.

    Each keeps a counters row like a task's (records in, started, finished; busy_s and cpu_s: the
    driver's time storing its records, so that a summary's cpu_pct is a number here too, issue 23.7),
    so that job metrics read the same; `shared_counters` is the local backend's shared-memory table,
    mirrored for live metrics (the Ray backend asks `rows()` instead). Their pid is the driver's.
    """

    _IN, _BUSY, _CPU, _STARTED, _FINISHED = (FIELDS.index(f) for f in ("records_in", "busy_s", "cpu_s", "started",
                                                                       "finished"))

    def __init__(self, graph: Any, manager: Any, shared_counters: Any = None, *, enabled: bool = True) -> None:
        self._graph = graph
        self._manager = manager
        self._shared = shared_counters
        names = driver_side_collects(graph) if enabled else set()
        self.tasks = frozenset(names)    # the collect task names that get no task
        self._by_operator = {graph.nodes[n].operator: n for n in names}
        self._rows = {n: [0.0] * len(FIELDS) for n in names}
        for name in names:
            manager.mark_ready(name, os.getpid())

    def edge(self, edge: Any, other: Callable[[Any], Any]) -> Any:
        """The descriptor of a graph edge: a DriverEdge into a collect run here, else `other(edge)`."""
        if edge.dst in self._rows:
            return DriverEdge(self._graph.nodes[edge.dst].operator, edge.slot)
        return other(edge)

    def deliver(self, results: Results, collector: Any) -> None:
        """Hand a Results message to its collector; for a collect run here, count its records and the
        time the driver spent storing them (wall and CPU: the monitor thread's)."""
        name = self._by_operator.get(results.task)
        if name is None:   # a collect task's own results: that task keeps its counters
            collector._extend(results.records)
            return
        started, cpu = time.perf_counter(), time.thread_time()
        collector._extend(results.records)
        row = self._rows[name]
        row[self._BUSY] += time.perf_counter() - started
        row[self._CPU] += time.thread_time() - cpu
        row[self._IN] += len(results.records)
        row[self._STARTED] = row[self._STARTED] or time.time()
        self._mirror(name)

    def task_stopped(self) -> None:
        """A collect run here has ended once every task feeding it has: each ships its last results
        before its Stopped message, on the same channel."""
        tasks = self._manager.tasks
        for name, row in self._rows.items():
            if not tasks[name].stopped and all(tasks[e.src].stopped for e in self._graph.nodes[name].in_edges):
                row[self._FINISHED] = time.time()
                row[self._STARTED] = row[self._STARTED] or row[self._FINISHED]
                self._mirror(name)
                metrics = dict(zip(FIELDS, map(float, row)))
                metrics["processed_count"] = int(row[self._IN])
                self._manager.mark_stopped(name, metrics)

    def rows(self) -> dict[int, dict[str, float]]:
        """Live counters by task slot, for a backend without a shared table."""
        return {self._manager.tasks[n].slot: dict(zip(FIELDS, map(float, row))) for n, row in self._rows.items()}

    def _mirror(self, name: str) -> None:
        if self._shared is not None:
            self._shared[self._manager.tasks[name].slot][:] = self._rows[name]
