"""JobManager: the job table of one run: each task's state, the job's status (a JobStatus, whose
diagram is in procflow.core.enums), and the stop accounting."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from procflow.core.enums import JobStatus
from procflow.core.errors import JobFailedError
from procflow.runtime.job_control import FIELDS


@dataclass
class TaskState:
    name: str
    operator: str
    slot: int
    pid: int | None = None
    ready: bool = False
    stopped: bool = False
    exitcode: int | None = None
    metrics: dict = field(default_factory=dict)


class JobManager:
    def __init__(self, job_id: str, tasks: list[tuple[str, str]]) -> None:
        self.job_id = job_id
        self.tasks = {name: TaskState(name, op, i) for i, (name, op) in enumerate(tasks)}
        self.status: JobStatus = JobStatus.CREATED
        self.failure: JobFailedError | None = None
        self.stop_requested = False
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.dead_letters: list = []
        # The shared counters as cleanup last saw them: the metrics of tasks that never sent Stopped
        # (a failed or killed job) come from here once the job segment is gone.
        self.last_counters: dict[int, dict] | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()

    # transitions, called by the Dispatcher's monitor thread
    def mark_running(self) -> None:
        self.status = JobStatus.RUNNING
        self.started_at = time.monotonic()

    def mark_ready(self, task: str, pid: int) -> None:
        state = self.tasks[task]
        state.ready, state.pid = True, pid

    @property
    def all_ready(self) -> bool:
        return all(t.ready for t in self.tasks.values())

    def mark_stopped(self, task: str, metrics: dict) -> None:
        state = self.tasks[task]
        state.stopped, state.metrics = True, metrics

    @property
    def all_stopped(self) -> bool:
        return all(t.stopped for t in self.tasks.values())

    def fail(self, error: JobFailedError, status: JobStatus = JobStatus.FAILED) -> bool:
        """Record the first failure; later ones (the fallout of the first) are only logged."""
        with self._lock:
            if self.failure is not None or self.status.terminal:
                return False
            self.failure = error
            self.status = JobStatus(status)
            return True

    def finish(self) -> None:
        with self._lock:
            if not self.status.terminal:
                self.status = JobStatus.STOPPED if self.stop_requested else JobStatus.FINISHED
        self.ended_at = time.monotonic()
        self.done.set()

    @property
    def elapsed(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.ended_at or time.monotonic()) - self.started_at

    def metrics(self, live: dict[int, dict] | None = None) -> dict[str, Any]:
        """Per-task counters plus a job summary; `live` rows come from the shared counters."""
        per_task: dict[str, dict] = {}
        for state in self.tasks.values():
            counters = live if live is not None else self.last_counters
            src = dict(state.metrics) if state.metrics else dict((counters or {}).get(state.slot, {}))
            row = {k: src.get(k, 0.0) for k in FIELDS}
            for k in ("records_in", "records_out", "errors"):
                row[k] = int(row[k])
            # Live rows have no processed_count: a task with inputs processed what it took in, a source
            # what it produced.
            row["processed_count"] = int(src.get("processed_count", row["records_in"] or row["records_out"]))
            row["operator"] = state.operator
            row["pid"] = state.pid
            per_task[state.name] = row
        return per_task
