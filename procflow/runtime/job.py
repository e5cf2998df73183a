"""Job: the user's handle on one run (what `env.submit()` returns)."""

from __future__ import annotations

import concurrent.futures
import json
from typing import Any

from procflow.core.enums import ControlRequest, JobStatus
from procflow.core.errors import JobFailedError
from procflow.core.splits import BYTES
from procflow.graph.transformation import ROUND_ROBIN
from procflow.runtime.completion import Completion
from procflow.runtime.dispatcher import Dispatcher
from procflow.runtime.progress import ProgressBar, progress_total, progress_wanted

# An operator fed by round robin whose tasks finished at least this far apart, and this share of its
# run, is reported as uneven: its early finishers sat idle while the others still had records.
UNEVEN_MIN_S = 0.1
UNEVEN_SHARE = 0.2


class Job:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self._manager = dispatcher.manager
        self.job_id = dispatcher.job_id
        self.log_dir = dispatcher.job_dir
        self.source_tasks = frozenset(n.name for n in dispatcher.graph.sources())
        self._completion = Completion.of(dispatcher.graph)
        self._progress: ProgressBar | None = None
        self._total = progress_total(dispatcher.graph, dispatcher.split_plans)
        if self._total is not None and progress_wanted(dispatcher.config["progress"]):
            self._progress = ProgressBar(self._total.amount, self.completed_units, self._manager.done,
                                         status=lambda: self.status, unit=self._total.unit).start()

    @property
    def status(self) -> JobStatus:
        """created, running, finished, stopped (after env.stop()), failed or killed."""
        return self._manager.status

    @property
    def running(self) -> bool:
        return not self._manager.done.is_set()

    @property
    def failure(self) -> JobFailedError | None:
        return self._manager.failure

    @property
    def dead_letters(self) -> list:
        """Records that failed under on_error="dead_letter", with their errors and tracebacks."""
        return list(self._manager.dead_letters)

    @property
    def elapsed(self) -> float:
        return self._manager.elapsed

    @property
    def metrics(self) -> dict[str, Any]:
        """Per-task counters (records in/out, seconds busy / waiting / blocked, CPU seconds, errors), live or
        final. CPU seconds well below busy ones: the task was waiting inside user code, or descheduled."""
        # None if cleanup closed the job control meanwhile: final figures then
        live = self._dispatcher.live_counters() if self.running else None
        return self._manager.metrics(live)

    def completed_records(self, metrics: dict[str, Any] | None = None) -> int:
        """Source records whose work the whole pipeline has done (exact for a chain of 1:1 operators,
        estimated from each operator's out/in ratio otherwise: see runtime/completion.py); from
        `metrics` if given, else the counters now. Records still waiting in rings do not count."""
        return int(self._completion.records(self.metrics if metrics is None else metrics))

    def completed_units(self, metrics: dict[str, Any] | None = None) -> int:
        """Input done, in the unit of `progress()`: completed records, or for an input measured in bytes
        (file splits) the bytes of the finished splits that the whole pipeline has finished with."""
        metrics = self.metrics if metrics is None else metrics
        if self._total is not None and self._total.unit == BYTES:
            return int(self._completion.units(metrics))
        return self.completed_records(metrics)

    def progress(self, metrics: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """How far the job is through its input, where its size is known (split sources, sized inputs):
        unit ("records" or "bytes"), total, done, percent, rate per second and eta_s (None until a rate
        is known); None for an input of unknown size (a generator, an unbounded source)."""
        total = self._total
        if total is None:
            return None
        done = min(self.completed_units(metrics), total.amount)
        elapsed = self.elapsed
        rate = done / elapsed if elapsed > 0 else 0.0
        left = total.amount - done
        return {"unit": total.unit, "total": total.amount, "done": done,
                "percent": 100.0 * done / total.amount if total.amount else 100.0,
                "rate": rate, "eta_s": (left / rate if rate > 0 else None) if left else 0.0}

    def split_assignments(self) -> dict[str, list[int | None]]:
        """Per split source: the instance each split was handed to (None: not yet), live or final."""
        return self._dispatcher.split_assignments()

    @property
    def service_metrics(self) -> dict[str, dict]:
        """Per service: replicas, calls served, errors, seconds busy, and per replica; live or final."""
        services = self._dispatcher.service_manager
        return services.metrics() if services is not None else {}

    def summary(self) -> dict[str, Any]:
        """The job in figures: records, time, throughput, per-operator totals and busy %, the bottleneck.

        `source_records`: records the sources emitted; `completed_records`: those whose work the whole
        pipeline has done (`completed_records()`), the same once a job has finished, fewer after a stop,
        a kill or a failure; `throughput_rps`: completed records per second of the job, its real rate
        (not the sources' rate: they fill the rings at once).

        An operator's busy % is its tasks' mean share of the job's elapsed time spent working (not waiting
        for input, not blocked on a full output): the bottleneck is the operator with the highest. Tasks
        publish their counters at least every 50 ms of work, so these are current when a job is stopped,
        killed or fails too. `cpu_pct` is CPU time on the busy % scale (a collect run in the driver counts
        the driver's time storing its records); it is None only on the inline backend, which runs every
        task in the caller's thread and measures no CPU time per task.
        """
        tasks = self.metrics
        emitted = sum(m["records_out"] for name, m in tasks.items() if name in self.source_tasks)
        completed = self.completed_records(tasks)
        elapsed = self.elapsed
        measures_cpu = self._dispatcher.measures_cpu
        by_op: dict[str, dict] = {}
        rows_by_op: dict[str, list[dict]] = {}
        for name, m in tasks.items():
            rows_by_op.setdefault(m["operator"], []).append(m)
            op = by_op.setdefault(m["operator"], {
                "tasks": 0, "source": name in self.source_tasks, "records_in": 0, "records_out": 0, "busy_s": 0.0,
                "wait_s": 0.0, "blocked_s": 0.0, "cpu_s": 0.0, "errors": 0})
            op["tasks"] += 1
            for k in ("records_in", "records_out", "busy_s", "wait_s", "blocked_s", "cpu_s", "errors"):
                op[k] += m[k]
        for op in by_op.values():
            share = elapsed * op["tasks"]
            op["busy_pct"] = 100.0 * op["busy_s"] / share if share else 0.0
            op["blocked_pct"] = 100.0 * op["blocked_s"] / share if share else 0.0
            # CPU time on the same scale: near busy % for work that computes, far below it for work that
            # waits inside user code (I/O, sleep) or sits descheduled. None on the inline backend only.
            op["cpu_pct"] = (100.0 * op["cpu_s"] / share if share else 0.0) if measures_cpu else None
            handled = op["records_out"] if op["source"] else op["records_in"]
            op["rate_rps"] = handled / elapsed if elapsed else 0.0
        bottleneck = max(by_op, key=lambda k: by_op[k]["busy_pct"]) if by_op else None
        uneven = self._uneven_round_robin(rows_by_op, by_op) if self.status == JobStatus.FINISHED else []
        failure = self.failure
        return {"job_id": self.job_id, "status": self.status, "elapsed_s": elapsed,
                "source_records": emitted, "completed_records": completed,
                "throughput_rps": completed / elapsed if elapsed else 0.0,
                "operators": by_op, "bottleneck": bottleneck, "uneven": uneven,
                "progress": self.progress(tasks),
                "error": str(failure) if failure else None,
                "log_dir": self.log_dir, "tasks": tasks, "services": self.service_metrics,
                "checkpoints": self.checkpoints}

    def _uneven_round_robin(self, rows_by_op: dict[str, list[dict]], by_op: dict[str, dict]) -> list[str]:
        """Operators whose round-robin input left some of their tasks idle long before the others.

        Round robin gives every task the same number of records, so when records differ in cost or
        cores differ in speed (a shared VM), the job waits for the slowest task. Each such operator gets
        `finish_spread_s` in its summary row; the default distribution (balance) is the remedy (the CLI says so).
        """
        graph = self._dispatcher.graph
        fed_by: dict[str, set[str]] = {}
        for node in graph.nodes.values():
            for group in node.out_groups:
                fed_by.setdefault(group.target, set()).add(group.partitioning.strategy)
        uneven = []
        for name, op in by_op.items():
            rows = [m for m in rows_by_op[name] if m.get("finished") and m.get("started")]
            if op["tasks"] < 2 or len(rows) < op["tasks"] or fed_by.get(name) != {ROUND_ROBIN}:
                continue
            finished = [m["finished"] for m in rows]
            spread = max(finished) - min(finished)
            span = max(finished) - min(m["started"] for m in rows)
            op["finish_spread_s"] = spread
            if spread >= UNEVEN_MIN_S and spread >= UNEVEN_SHARE * span:
                uneven.append(name)
        return uneven

    def to_json(self) -> str:
        return json.dumps(self.summary(), indent=2, default=str)

    def wait(self, timeout: float | None = None) -> Job:
        """Block until the job ends; raises JobFailedError if it failed, TimeoutError if still running."""
        if not self._manager.done.wait(timeout):
            raise TimeoutError(f"job {self.job_id} still running after {timeout}s")
        self._join_threads()
        if self._manager.failure is not None:
            raise self._manager.failure
        return self

    def checkpoint(self, timeout: float | None = None) -> int:
        """Take a checkpoint now (checkpoint_dir jobs) and wait until it is complete; returns its number.
        Raises RuntimeError if the job ends first, ValueError if it takes no checkpoints, TimeoutError
        after `timeout` seconds."""
        future = self._dispatcher.request_checkpoint()
        try:
            return int(future.result(timeout))
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"job {self.job_id}: checkpoint not complete after {timeout}s") from None

    @property
    def checkpoints(self) -> list[dict[str, Any]]:
        """The checkpoints this job completed: number, duration_s, bytes of state."""
        checkpoints = self._dispatcher.checkpoints
        return list(checkpoints.taken) if checkpoints is not None else []

    def stop(self, timeout: float | None = None) -> None:
        """Graceful: sources end, records in flight drain. Kills the job if it has not ended in `timeout`."""
        if not self.running:
            return
        self._dispatcher.request(ControlRequest.STOP)
        grace = timeout if timeout is not None else float(self._dispatcher.config["stop_timeout"]) * 2
        if not self._manager.done.wait(grace):
            self.kill(f"did not stop within {grace}s")
        self._join_threads()

    def kill(self, reason: str = "killed by the user") -> None:
        """Now: every task is terminated, nothing drains."""
        if self.running:
            self._dispatcher.request(ControlRequest.KILL, reason)
            self._manager.done.wait()
        self._join_threads()

    def close(self) -> None:
        if self.running:
            self.stop()
        self._join_threads()

    def _join_threads(self) -> None:
        """The job has ended (manager.done is set): its driver threads return promptly; join them."""
        self._dispatcher.join_monitor()
        if self._progress is not None:
            self._progress.join()

    def __repr__(self) -> str:
        return f"<Job {self.job_id} {self.status}>"
