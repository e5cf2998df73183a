"""One small shared segment per job: start and stop words, every task's live counters, split claims.

    0     start  u32 futex word: sources sleep on it until the driver has seen every task Ready
    64    stop   u32 futex word: the driver sets it to ask sources to end (env.stop())
    128   checkpoint  u32: the number of the latest checkpoint the driver asked for (0: none); a source
          reads it at each tick and emits that Barrier once (runtime/checkpoint/)
    192   counters: float64[n_tasks][FIELDS], each row written only by its own task
    then, 64-aligned, the split claims (split_plan.py), self-describing so a task attaches by name alone:
          u64 n_slots, pad to 64
          per slot: u64 cursor (next unclaimed split), u64 n_splits, pad to 64;
                    i32 owner[n_splits] (claiming instance + 1; 0: not handed out), pad to 64

Counters live here rather than travel as messages, so keeping them costs a few stores per batch and the
driver can read them at any moment for live metrics.

A claim reads and advances a slot's cursor under `fcntl.lockf` on the cursor's bytes of the segment file.
Why a POSIX record lock and not a lock word in the segment: the kernel drops it when its holder dies, so
a reader SIGKILLed inside a claim cannot leave the other readers blocked forever (a futex mutex would stay
held). A claim costs 2-3 us (two fcntl calls; measured by tests/unit/test_split_plan.py), once per split:
nothing next to reading a split.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from procflow.runtime.communication import futex
from procflow.runtime.communication.shm import SHM_DIR, SharedSegment

# input_fill: the task's input rings' fill (0..1), sampled after each batch (0 for sources).
# cpu_s: the task process's CPU time; busy_s well above it means the task was runnable but descheduled.
# units_done: a split source's finished splits, in its plan's unit (records or bytes), for progress.
FIELDS = ("records_in", "records_out", "busy_s", "wait_s", "blocked_s", "errors", "started", "finished",
          "input_fill", "cpu_s", "units_done")
UNITS_DONE = FIELDS.index("units_done")
_START, _STOP, _CHECKPOINT, _COUNTERS = 0, 64, 128, 192
_LINE = 64


def _aligned(offset: int) -> int:
    return -(-offset // _LINE) * _LINE


@dataclass(frozen=True)
class _Slot:
    cursor: int    # offset of the u64 cursor (n_splits follows it)
    owners: int    # offset of int32[n_splits]
    n_splits: int


def _layout(n_tasks: int, counts: Sequence[int]) -> tuple[int, list[_Slot], int]:
    """(offset of the split area, the slots, total segment size) for these split counts."""
    area = _aligned(_COUNTERS + 8 * len(FIELDS) * max(n_tasks, 1))
    offset = area + _LINE
    slots = []
    for n in counts:
        slots.append(_Slot(offset, offset + _LINE, n))
        offset = _aligned(offset + _LINE + 4 * n)
    return area, slots, offset


class JobControl:
    def __init__(self, segment: SharedSegment, n_tasks: int) -> None:
        self.segment = segment
        self.n_tasks = n_tasks
        self._start = segment.u32(_START)
        self._stop = segment.u32(_STOP)
        self._checkpoint = segment.u32(_CHECKPOINT)
        self.counters = np.ndarray((n_tasks, len(FIELDS)), dtype=np.float64, buffer=segment.buf,
                                   offset=_COUNTERS)
        area, _, _ = _layout(n_tasks, ())
        n_slots = int(np.frombuffer(segment.buf, np.uint64, 1, area)[0])
        counts = []
        offset = area + _LINE
        for _ in range(n_slots):   # walk the slots: each one says how many splits it has
            n = int(np.frombuffer(segment.buf, np.uint64, 1, offset + 8)[0])
            counts.append(n)
            offset = _aligned(offset + _LINE + 4 * n)
        self._slots = _layout(n_tasks, counts)[1]
        self._cursors = [segment.u64(s.cursor) for s in self._slots]
        self._owners = [np.ndarray((s.n_splits,), np.int32, segment.buf, s.owners) for s in self._slots]
        self._lock_fd: int | None = None

    @classmethod
    def create(cls, name: str, n_tasks: int, split_counts: Sequence[int] = ()) -> JobControl:
        area, slots, size = _layout(n_tasks, split_counts)
        segment = SharedSegment(name, size, create=True)
        np.frombuffer(segment.buf, np.uint64, 1, area)[:] = len(slots)
        for slot in slots:
            np.frombuffer(segment.buf, np.uint64, 1, slot.cursor + 8)[:] = slot.n_splits
        return cls(segment, n_tasks)

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

    def request_checkpoint(self, number: int) -> None:
        """Ask every source to emit Barrier(number) at its next tick (a plain store: sources poll it)."""
        self._checkpoint.value = number

    @property
    def checkpoint_requested(self) -> int:
        return int(self._checkpoint.value)

    def sleep_unless_stopped(self, seconds: float) -> None:
        """A source's back-off: sleeps, but wakes at once when a stop is requested."""
        if self._stop.value == 0:
            futex.wait(self.segment.address + _STOP, 0, seconds)

    # split claims (split_plan.SplitClaims)
    def claim_split(self, slot: int, instance: int) -> int | None:
        """The next split of source `slot` for `instance`, or None when every split is handed out."""
        cursor, where = self._cursors[slot], self._slots[slot]
        if cursor.value >= where.n_splits:   # only ever grows: no lock needed to see the end
            return None
        fd = self._lock_file()
        fcntl.lockf(fd, fcntl.LOCK_EX, 8, where.cursor, os.SEEK_SET)
        try:
            index = int(cursor.value)
            if index >= where.n_splits:
                return None
            self._owners[slot][index] = instance + 1   # before the cursor: a reader of the cursor sees it
            cursor.value = index + 1
            return index
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 8, where.cursor, os.SEEK_SET)

    def split_owners(self, slot: int) -> list[int | None] | None:
        owners = self._owners   # emptied by close(), maybe in another thread meanwhile
        if self.counters is None or slot >= len(owners):
            return None
        return [int(o) - 1 if o else None for o in owners[slot]]

    def splits_claimed(self, slot: int) -> int:
        """How many splits of source `slot` are handed out (a lock-free read of the cursor)."""
        return min(int(self._cursors[slot].value), self._slots[slot].n_splits)

    def _lock_file(self) -> int:
        # Our own descriptor of the segment file, kept open until close(): POSIX record locks belong to
        # the process and are dropped when it closes *any* descriptor of the file, so one opened and
        # closed per claim could release a lock another thread of this process holds.
        if self._lock_fd is None:
            self._lock_fd = os.open(os.path.join(SHM_DIR, self.segment.name),
                                    os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        return self._lock_fd

    def snapshot(self) -> dict[int, dict[str, float]] | None:
        """A copy of every task's counters, or None once closed (a reader racing the job's cleanup)."""
        counters = self.counters
        if counters is None:
            return None
        rows = counters.copy()
        return {i: dict(zip(FIELDS, map(float, rows[i]))) for i in range(self.n_tasks)}

    def close(self) -> None:
        self.counters = None
        self._owners = []
        self._cursors = []
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self.segment.close()
