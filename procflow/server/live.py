"""The live snapshot of a running job (live.json), as the web dashboard and `procflow status` show it.

    LiveSampler(job, graph, job_id).snapshot(status) ─► the dict below; the driver writes it every ~0.5 s

    {"job_id", "status", "elapsed",
     "progress": {"done", "total", "unit", "fraction", "eta_s"} | None,
     "throughput": completed records/s over the last ~second,
     "operators": [{"name", "tasks", "records_in", "records_out", "rate", "busy_pct", "cpu_pct" | None,
                    "fill_pct" | None, "errors"}],
     "bottleneck": operator | None,
     "graph": {"nodes": [{"name", "parallelism", "chain"}], "edges": [{"from", "to", "kind"}]},
     "history": [[elapsed, completed_records, throughput], ...]   (the last HISTORY samples),
     "checkpoints": [{"checkpoint", "duration_s", "bytes"}, ...]   (those completed; jobs with a checkpoint dir),
     "error": {"task", "message", "traceback"} | None}

Rates, busy % and fill come from the terminal dashboard's Sampler (the same figures `procflow run
--dashboard` shows, over about the last second); cpu % is taken the same way from the tasks' CPU seconds.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from procflow.core.enums import JobStatus
from procflow.dashboard import Sampler
from procflow.graph.execution_graph import ExecutionGraph

HISTORY = 600
WINDOW = 1.0

# The runtime's job status -> the server's job state.
SERVER_STATUS = {JobStatus.CREATED: "running", JobStatus.RUNNING: "running", JobStatus.FINISHED: "succeeded",
                 JobStatus.STOPPED: "stopped", JobStatus.FAILED: "failed", JobStatus.KILLED: "stopped"}


def graph_of(graph: ExecutionGraph) -> dict[str, Any]:
    """Operators (with their parallelism and the chain they run in) and the edges between operators.

    Operators whose instances run in one task share a chain number; a chained edge is "forward"."""
    first: dict[str, Any] = {}
    for node in graph.nodes.values():
        first.setdefault(node.operator, node)
    chain_ids: dict[str, int] = {}
    nodes = []
    for op, node in first.items():
        head = graph.nodes[graph.head_of(node.name)].operator
        chain = chain_ids.setdefault(head, len(chain_ids))
        nodes.append({"name": op, "parallelism": node.parallelism, "chain": chain})
    edges: list[dict[str, str]] = []
    seen = set()
    for node in graph.nodes.values():
        for group in node.out_groups:
            kind = "forward" if group.chained else group.partitioning.strategy
            key = (node.operator, group.target, kind)
            if key not in seen:
                seen.add(key)
                edges.append({"from": node.operator, "to": group.target, "kind": kind})
    return {"nodes": nodes, "edges": edges}


def error_of(failure: Any) -> dict[str, Any] | None:
    """A JobFailedError (or any exception) as {"task", "message", "traceback"}."""
    if failure is None:
        return None
    return {"task": getattr(failure, "task", None) or "", "message": str(failure),
            "traceback": getattr(failure, "remote_traceback", None) or ""}


class LiveSampler:
    def __init__(self, job: Any, graph: ExecutionGraph, job_id: str) -> None:
        self.job = job
        self.job_id = job_id
        self.graph = graph_of(graph)
        self.sampler = Sampler(job, window=WINDOW)
        self.history: deque[list[float]] = deque(maxlen=HISTORY)
        self._cpu_base: deque[tuple[float, dict[str, float]]] = deque()
        self._completed_base: deque[tuple[float, int]] = deque()

    def snapshot(self, status: str | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        job = self.job
        frame = self.sampler.sample()
        metrics = job.metrics
        now = frame.elapsed
        cpu = self._cpu_pct(now, metrics)
        throughput = self._throughput(now, frame.completed)
        self.history.append([round(now, 3), frame.completed, round(throughput, 3)])
        ops: dict[str, dict[str, Any]] = {}
        fills: dict[str, list[float]] = {}
        for row in frame.rows:
            op = ops.setdefault(row.operator, {"name": row.operator, "tasks": 0, "records_in": 0, "records_out": 0,
                                               "rate": 0.0, "busy_pct": 0.0, "cpu_pct": None, "fill_pct": None,
                                               "errors": 0})
            op["tasks"] += 1
            op["records_in"] += row.records_in
            op["records_out"] += row.records_out
            op["rate"] += row.rate
            op["busy_pct"] += row.busy_pct
            op["errors"] += int(metrics.get(row.task, {}).get("errors", 0))
            if row.fill_pct is not None and row.task not in job.source_tasks:
                fills.setdefault(row.operator, []).append(row.fill_pct)
        for name, op in ops.items():
            op["busy_pct"] = op["busy_pct"] / op["tasks"]
            if name in fills:
                op["fill_pct"] = sum(fills[name]) / len(fills[name])
            op["cpu_pct"] = cpu.get(name)
        if status is None:
            status = SERVER_STATUS.get(job.status, str(job.status))
        if error is None:
            error = error_of(job.failure)
        return {"job_id": self.job_id, "status": status, "elapsed": now, "progress": self._progress(metrics),
                "throughput": throughput, "operators": list(ops.values()), "bottleneck": frame.bottleneck,
                "graph": self.graph, "history": list(self.history), "checkpoints": self.job.checkpoints,
                "error": error}

    def _progress(self, metrics: dict[str, Any]) -> dict[str, Any] | None:
        p = self.job.progress(metrics)
        if p is None:
            return None
        return {"done": p["done"], "total": p["total"], "unit": p["unit"],
                "fraction": p["percent"] / 100.0 if p["total"] else None, "eta_s": p["eta_s"]}

    def _throughput(self, now: float, completed: int) -> float:
        base = self._completed_base
        base.append((now, completed))
        while len(base) > 2 and base[1][0] <= now - WINDOW:
            base.popleft()
        t0, c0 = base[0]
        return (completed - c0) / (now - t0) if now > t0 else 0.0

    def _cpu_pct(self, now: float, metrics: dict[str, Any]) -> dict[str, float | None]:
        """Per operator: its tasks' mean CPU time over the window, as a share of the window (busy % scale)."""
        cpu_by_task = {name: float(m.get("cpu_s", 0.0)) for name, m in metrics.items()}
        base = self._cpu_base
        base.append((now, cpu_by_task))
        while len(base) > 2 and base[1][0] <= now - WINDOW:
            base.popleft()
        t0, before = base[0]
        dt = now - t0
        sums: dict[str, list[float]] = {}
        for name, m in metrics.items():
            used = cpu_by_task[name] - before.get(name, 0.0) if dt > 0 else 0.0
            sums.setdefault(m["operator"], []).append(100.0 * used / dt if dt > 0 else 0.0)
        return {op: min(max(sum(v) / len(v), 0.0), 100.0) for op, v in sums.items()}
