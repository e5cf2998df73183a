"""StallWatch: the Dispatcher's liveness check (config `stall_timeout`; off by default).

    monitor thread, each time it wakes (at least every `period` once the sources are released):
      moved?    any task's published records in / out / errors, or any input ring's fill or taken
                count, changed  -> progress: the clock restarts
      work?     a task has bytes waiting in its input rings (or its mp queue), or records it took out
                and has not finished (mid-batch)
      stalled   nothing moved for `stall_timeout` while some task had work  ->  JobFailedError naming
                the task(s) with work whose downstream tasks have none: the others wait behind them,
                blocked on full rings

Why (issue 22 item 12): a stopped task (SIGSTOP, a debugger, a deadlock in user code) made `submit()`
wait forever; its process is alive, so no sentinel fires. The verdict is judged on the whole job, not
per task: a task blocked on a full output ring looks stopped too, but then its consumer is the one not
moving, and while any task moves (a slow task still finishing records) nothing is stalled. A task
publishes its records-in count while it works through a batch (BaseTask._flush_outputs), so a slow
but moving task counts as moving; one record that takes longer than `stall_timeout` does not.

Sources count as moving only when they emit: an idle unbounded source has no work to judge, so a
stopped source whose downstream is idle is not noticed (there is nothing waiting).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from procflow.core.errors import JobFailedError
from procflow.runtime.communication import ring as ringmod
from procflow.runtime.job_control import FIELDS

_MOVES = tuple(FIELDS.index(f) for f in ("records_in", "records_out", "errors"))
_IN, _OUT, _BUSY, _WAIT, _BLOCKED, _FILL = (FIELDS.index(f) for f in ("records_in", "records_out", "busy_s",
                                                                        "wait_s", "blocked_s", "input_fill"))
# /proc/<pid>/stat states worth naming in the error (others are just "state X").
_PROC_STATES = {
    "T": "stopped (SIGSTOP, SIGTSTP or Ctrl-Z), so it will never continue by itself",
    "t": "stopped by a debugger (tracing stop)",
    "D": "in uninterruptible sleep (state D: waiting on disk or network I/O in the kernel)",
    "S": "asleep (state S: blocked in a system call, a lock or a call that never returns?)",
    "R": "running (state R: a loop that never ends, or one record that takes very long?)",
    "Z": "a zombie (it exited, the monitor has not seen it yet)",
}


class InputProbe:
    """What waits at one task's input, read by the driver without disturbing the task."""

    def __init__(self, inbox: Any, segment: Any = None) -> None:
        self._inbox = inbox
        self._segment = segment   # the driver's own mapping of the task's inbox (shm), else None

    @property
    def counts_bytes(self) -> bool:
        """True for rings (a backlog in bytes); an mp queue only tells whether it is empty."""
        return self._segment is not None

    def backlog(self) -> tuple[int, int]:
        """(bytes or items waiting, records taken out but not finished); (0, 0) once unreadable."""
        if self._segment is not None:
            queued = taken = 0
            capacity = self._inbox.capacity
            try:
                for slot in range(len(self._inbox.input_indices)):
                    q, t = ringmod.ring_backlog(self._segment, slot, capacity)
                    queued, taken = queued + q, taken + t
            except ValueError:   # cleanup unmapped it: the job is over anyway
                return 0, 0
            return queued, taken
        queue = getattr(self._inbox, "queue", None)
        try:
            return (0 if queue is None or queue.empty() else 1), 0
        except OSError:
            return 0, 0


class ChainProbe:
    """What waits at a chained operator's input: its upstream's call (runtime/task/chain.py). The member
    sets its input_fill to 1 for the length of each call, so records handed over and not finished show
    as work here, as records taken out of a ring do: a record that never finishes inside a chain fails
    the job naming that operator."""

    counts_bytes = False

    def __init__(self, counters: Any, slot: int) -> None:
        self._counters = counters
        self._slot = slot

    def backlog(self) -> tuple[int, int]:
        try:
            return 0, int(self._counters[self._slot][_FILL] > 0)
        except (TypeError, ValueError, IndexError):   # the table is gone: the job is over anyway
            return 0, 0


class StallWatch:
    """`tasks`: the job table's TaskStates (slot, pid, stopped) by task name; `counters()`: the live
    counters table, or None once it is gone."""

    def __init__(self, job_id: str, timeout: float, graph: Any, probes: Mapping[str, InputProbe | ChainProbe],
                 counters: Callable[[], Any], tasks: Mapping[str, Any]) -> None:
        self.job_id = job_id
        self.timeout = timeout
        # Wake often enough to notice a stall within about a quarter of the timeout past it.
        self.period = min(max(timeout / 4, 0.01), 1.0)
        self._graph = graph
        self._probes = probes
        self._counters = counters
        self._tasks = tasks
        self._last: tuple | None = None
        self._since = 0.0

    def check(self, now: float | None = None) -> JobFailedError | None:
        """Called by the monitor thread whenever it wakes; the error to fail the job with, if stalled."""
        now = time.monotonic() if now is None else now
        rows = self._counters()
        if rows is None:
            return None
        backlog = {name: probe.backlog() for name, probe in self._probes.items()}
        state = (tuple(tuple(float(row[i]) for i in _MOVES) for row in rows), tuple(sorted(backlog.items())))
        if state != self._last:
            self._last, self._since = state, now
            return None
        if now - self._since < self.timeout:
            return None
        # A task that reported Stopped took its last records out and never asked for more: its ring
        # still shows them as unfinished, but nothing is left undone.
        working = {name for name, (queued, unfinished) in backlog.items()
                   if (queued or unfinished) and not self._tasks[name].stopped}
        if not working:
            return None
        return self._error(working, backlog, rows, now - self._since)

    def _error(self, working: set[str], backlog: dict, rows: Any, quiet: float) -> JobFailedError:
        downstream: dict[str, set[str]] = {}
        for edge in self._graph.edges:
            downstream.setdefault(edge.src, set()).add(edge.dst)
        # The tasks everything waits behind: with work, and no working task downstream of them.
        culprits = sorted(n for n in working if not downstream.get(n, set()) & working) or sorted(working)
        details = "; ".join(self._describe(name, backlog[name], rows) for name in culprits)
        error = JobFailedError(
            f"job {self.job_id} stalled: no task made progress for {quiet:.1f}s (config stall_timeout="
            f"{self.timeout:g}) while records were waiting. Stalled: {details}. The job was stopped and "
            "every task ended. If one record can legitimately take longer, raise stall_timeout",
            task=culprits[0])
        return error

    def _describe(self, name: str, backlog: tuple[int, int], rows: Any) -> str:
        queued, unfinished = backlog
        state = self._tasks[name]
        pid, row = state.pid, rows[state.slot]
        doing = []
        if queued:
            doing.append(f"{queued} byte(s) wait in its input" if self._probes[name].counts_bytes
                         else "its input queue holds records")
        if unfinished and isinstance(self._probes[name], ChainProbe):
            doing.append("it holds records from the operator before it in its chain and has not finished them")
        elif unfinished:
            doing.append(f"it took {unfinished} record(s) out and has not finished them")
        return (f"task {name} (pid {pid}): {' and '.join(doing)}; its last published counters showed "
                f"{int(row[_IN])} record(s) in, {int(row[_OUT])} out, busy {row[_BUSY]:.2f}s, waiting for "
                f"input {row[_WAIT]:.2f}s, blocked on output {row[_BLOCKED]:.2f}s; its process is "
                f"{process_state(pid)}")


def process_state(pid: int | None) -> str:
    """The OS's view of a process, in words (Linux /proc; elsewhere 'in an unknown state')."""
    if pid is None:
        return "not started"
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return "gone or unknown"
    # The command name (in parentheses) may contain spaces: the state follows the last ')'.
    state = stat[stat.rfind(")") + 2:][:1]
    return _PROC_STATES.get(state, f"in state {state!r}")
