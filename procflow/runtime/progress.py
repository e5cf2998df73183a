"""Driver-side progress bar for inputs of known size: split sources (their plans' total, in records or
bytes) and sized iterables given to `from_batch`.

    Job starts ─► ProgressBar.start(): one driver thread (not a daemon)
                    every `interval` s: count the source records the whole pipeline has finished with
                    (Completion, from the shared counters: no messages), redraw one line with \\r
    job ends (manager.done is set) ─► one last draw, a newline, the thread returns
    Job.wait / stop / kill / close ─► ProgressBar.join()

What the bar counts: source records whose work is done all the way down the pipeline (see
completion.py), out of the input's size; for an input measured in bytes (file splits), the bytes of the
finished splits scaled by the share of their records the pipeline has finished (Completion.units).
Its rate is that count over the time since the job started, so it is the job's rate, and the ETA
follows from both. It once counted records leaving the sources, which
fill the rings at once: 100% from the first frame of a CPU-bound job (issue 23.1).

The tasks are never involved: the bar costs them nothing. It is on by default only where someone can
see it (stderr is a terminal) and never under pytest; `config["progress"]` True / False forces it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sized
from dataclasses import dataclass
from typing import IO, Any

from procflow.core.enums import OperatorKind
from procflow.core.functions import IterableBatch
from procflow.core.splits import BYTES, RECORDS
from procflow.io.sequence import SequenceSource
from procflow.runtime.split_plan import SplitPlan

_WIDTH = 30


@dataclass(frozen=True)
class Total:
    """How much input the job has: `amount` of `unit` (records, or bytes for file splits)."""

    amount: int
    unit: str = RECORDS


def progress_total(graph: Any, plans: Mapping[str, SplitPlan] | None = None) -> Total | None:
    """The input's size, when every source knows it, in one unit; else None: a bar over part of the
    input would stop short of, or run past, 100%.

    A split source knows it from its plan (`plans`, by operator: the Dispatcher's), in its own unit;
    `from_batch` over a sized input from the input's length, before any plan exists.
    """
    total = 0
    units = set()
    for t in graph.transformations.values():
        if t.inputs:
            continue
        plan = plans.get(t.name) if plans else None
        if plan is not None:
            total += plan.total
            units.add(plan.unit)
            continue
        spec = t.function
        if not (t.kind == OperatorKind.BATCH and spec.target in (IterableBatch, SequenceSource) and spec.args
                and isinstance(spec.args[0], Sized)):
            return None
        try:
            total += len(spec.args[0])
        except TypeError:
            return None
        units.add(RECORDS)
    if len(units) > 1:
        return None   # records of one source and bytes of another add up to nothing
    return Total(total, units.pop() if units else RECORDS)


def known_total(graph: Any, plans: Mapping[str, SplitPlan] | None = None) -> int | None:
    """`progress_total(...)`'s amount, or None."""
    found = progress_total(graph, plans)
    return None if found is None else found.amount


def progress_wanted(setting: bool | None, stream: IO[str] | None = None) -> bool:
    """None means auto: on when the stream is a terminal and we are not inside a pytest run."""
    if setting is not None:
        return bool(setting)
    stream = stream if stream is not None else sys.stderr
    if "PYTEST_CURRENT_TEST" in os.environ:
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _amount(n: float, unit: str) -> str:
    if unit != BYTES:
        return f"{n:,.0f}"
    for scale, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            return f"{n / scale:,.1f} {name}"
    return f"{n:,.0f} B"


def render(done: int, total: int, elapsed: float, final: str = "", unit: str = RECORDS) -> str:
    """One line: ``[#######-------]  45%  4,500/10,000 records  12,345 rec/s  ETA 0:03``; in bytes
    (file splits): ``[###----]  45%  1.2 GiB/2.7 GiB  80.0 MiB/s  ETA 0:19``."""
    frac = min(done / total, 1.0) if total else 1.0
    filled = int(frac * _WIDTH)
    rate = done / elapsed if elapsed > 0 else 0.0
    if final:
        tail = final
    elif rate > 0 and done < total:
        eta = int((total - done) / rate)
        tail = f"ETA {eta // 60}:{eta % 60:02d}"
    else:
        tail = ""
    if unit == BYTES:
        counts = f"{_amount(done, unit)}/{_amount(total, unit)}  {_amount(rate, unit)}/s"
    else:
        counts = f"{done:,}/{total:,} records  {rate:,.0f} rec/s"
    return f"[{'#' * filled}{'-' * (_WIDTH - filled)}] {100 * frac:3.0f}%  {counts}  {tail}".rstrip()


class ProgressBar:
    """Redraws `render(count(), total, seconds since start)` every `interval` until `finished` is set.

    `count()` gives the source records the pipeline has finished with (Job.completed_records).
    """

    def __init__(self, total: int, count: Callable[[], int], finished: threading.Event, *,
                 status: Callable[[], str] = lambda: "", stream: IO[str] | None = None,
                 interval: float = 0.2, unit: str = RECORDS) -> None:
        self.total = total
        self.unit = unit
        self._count = count
        self._finished = finished
        self._status = status
        self._stream = stream
        self._interval = interval
        self._thread: threading.Thread | None = None
        self._width = 0
        self._last = 0

    def start(self) -> ProgressBar:
        self._thread = threading.Thread(target=self._run, name="procflow-progress")
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        started = time.monotonic()
        while True:
            ended = self._finished.wait(self._interval)
            done = self._safe_count()
            elapsed = time.monotonic() - started
            if ended:
                status = self._status()
                self._draw(render(done, self.total, elapsed, "done" if status == "finished" else status,
                                  self.unit))
                self._write("\n")
                return
            self._draw(render(done, self.total, elapsed, unit=self.unit))

    def _safe_count(self) -> int:
        try:
            self._last = int(self._count())
        except Exception:  # a read racing the job's cleanup: keep the last figure rather than die
            pass
        return self._last

    def _draw(self, line: str) -> None:
        pad = max(self._width - len(line), 0)
        self._width = len(line)
        self._write("\r" + line + " " * pad)

    def _write(self, text: str) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):  # the terminal went away; the job must not care
            pass
