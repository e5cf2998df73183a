"""One small shared segment per job: start and stop words, and every task's live counters.

    0     start  u32 futex word: sources sleep on it until the driver has seen every task Ready
    64    stop   u32 futex word: the driver sets it to ask sources to end (env.stop())
    128   counters: float64[n_tasks][FIELDS], each row written only by its own task

Counters live here rather than travel as messages, so keeping them costs a few stores per batch and the
driver can read them at any moment for live metrics.
"""

from __future__ import annotations

import numpy as np

from procflow.runtime.communication import futex
from procflow.runtime.communication.shm import SharedSegment

# input_fill: the task's input rings' fill (0..1), sampled after each batch (0 for sources).
# cpu_s: the task process's CPU time; busy_s well above it means the task was runnable but descheduled.
FIELDS = ("records_in", "records_out", "busy_s", "wait_s", "blocked_s", "errors", "started", "finished",
          "input_fill", "cpu_s")
_START, _STOP, _COUNTERS = 0, 64, 128


class JobControl:
    def __init__(self, segment: SharedSegment, n_tasks: int) -> None:
        self.segment = segment
        self.n_tasks = n_tasks
        self._start = segment.u32(_START)
        self._stop = segment.u32(_STOP)
        self.counters = np.ndarray((n_tasks, len(FIELDS)), dtype=np.float64, buffer=segment.buf,
                                   offset=_COUNTERS)

    @classmethod
    def create(cls, name: str, n_tasks: int) -> JobControl:
        size = _COUNTERS + 8 * len(FIELDS) * max(n_tasks, 1)
        return cls(SharedSegment(name, size, create=True), n_tasks)

    @classmethod
    def attach(cls, name: str, n_tasks: int) -> JobControl:
        return cls(SharedSegment(name), n_tasks)

    # start / stop words
    def release_sources(self) -> None:
        self._start.value = 1
        futex.wake(self.segment.address + _START, 1 << 30)

    def wait_for_start(self) -> None:
        while self._start.value == 0:
            futex.wait(self.segment.address + _START, 0, 1.0)

    def request_stop(self) -> None:
        self._stop.value = 1
        futex.wake(self.segment.address + _STOP, 1 << 30)

    @property
    def stop_requested(self) -> bool:
        return self._stop.value != 0

    def sleep_unless_stopped(self, seconds: float) -> None:
        """A source's back-off: sleeps, but wakes at once when a stop is requested."""
        if self._stop.value == 0:
            futex.wait(self.segment.address + _STOP, 0, seconds)

    def snapshot(self) -> dict[int, dict[str, float]] | None:
        """A copy of every task's counters, or None once closed (a reader racing the job's cleanup)."""
        counters = self.counters
        if counters is None:
            return None
        rows = counters.copy()
        return {i: dict(zip(FIELDS, map(float, rows[i]))) for i in range(self.n_tasks)}

    def close(self) -> None:
        self.counters = None
        self.segment.close()
