"""Job: the user's handle on one run (what `env.submit()` returns)."""

from __future__ import annotations

import json
from typing import Any

from procflow.errors import JobFailedError
from procflow.runtime.dispatcher import Dispatcher


class Job:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self._manager = dispatcher.manager
        self.job_id = dispatcher.job_id
        self.log_dir = dispatcher.job_dir

    @property
    def status(self) -> str:
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
        """Per-task counters (records in/out, seconds busy / waiting / blocked, errors), live or final."""
        live = None
        control = self._dispatcher.job_control
        if self.running and control is not None and control.counters is not None:
            live = control.snapshot()
        return self._manager.metrics(live)

    @property
    def service_metrics(self) -> dict[str, dict]:
        """Per service: replicas, calls served, errors, seconds busy, and per replica; live or final."""
        services = self._dispatcher.service_manager
        return services.metrics() if services is not None else {}

    def summary(self) -> dict[str, Any]:
        tasks = self.metrics
        sources = [m for m in tasks.values() if m["records_in"] == 0]
        emitted = sum(m["records_out"] for m in sources)
        elapsed = self.elapsed
        by_op: dict[str, dict] = {}
        for m in tasks.values():
            op = by_op.setdefault(m["operator"], {"tasks": 0, "records_in": 0, "records_out": 0, "busy_s": 0.0,
                                                  "errors": 0})
            op["tasks"] += 1
            for k in ("records_in", "records_out", "busy_s", "errors"):
                op[k] += m[k]
        for op in by_op.values():
            op["busy_pct"] = 100.0 * op["busy_s"] / (elapsed * op["tasks"]) if elapsed else 0.0
        bottleneck = max(by_op, key=lambda k: by_op[k]["busy_pct"]) if by_op else None
        return {"job_id": self.job_id, "status": self.status, "elapsed_s": elapsed,
                "source_records": emitted, "throughput_rps": emitted / elapsed if elapsed else 0.0,
                "operators": by_op, "bottleneck": bottleneck, "tasks": tasks,
                "services": self.service_metrics}

    def to_json(self) -> str:
        return json.dumps(self.summary(), indent=2, default=str)

    def wait(self, timeout: float | None = None) -> Job:
        """Block until the job ends; raises JobFailedError if it failed, TimeoutError if still running."""
        if not self._manager.done.wait(timeout):
            raise TimeoutError(f"job {self.job_id} still running after {timeout}s")
        self._dispatcher.join_monitor()
        if self._manager.failure is not None:
            raise self._manager.failure
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Graceful: sources end, records in flight drain. Kills the job if it has not ended in `timeout`."""
        if not self.running:
            return
        self._dispatcher.request("stop")
        grace = timeout if timeout is not None else float(self._dispatcher.config.get("stop_timeout", 5.0)) * 2
        if not self._manager.done.wait(grace):
            self.kill(f"did not stop within {grace}s")
        self._dispatcher.join_monitor()

    def kill(self, reason: str = "killed by the user") -> None:
        """Now: every task is terminated, nothing drains."""
        if self.running:
            self._dispatcher.request("kill", reason)
            self._manager.done.wait()
        self._dispatcher.join_monitor()

    def close(self) -> None:
        if self.running:
            self.stop()
        self._dispatcher.join_monitor()

    def __repr__(self) -> str:
        return f"<Job {self.job_id} {self.status}>"
