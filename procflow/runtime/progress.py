"""Driver-side progress bar for inputs of known size (sized iterables given to `from_batch`).

    Job starts ─► ProgressBar.start(): one driver thread (not a daemon)
                    every `interval` s: count the source records the whole pipeline has finished with
                    (Completion, from the shared counters: no messages), redraw one line with \\r
    job ends (manager.done is set) ─► one last draw, a newline, the thread returns
    Job.wait / stop / kill / close ─► ProgressBar.join()

What the bar counts: source records whose work is done all the way down the pipeline (see
completion.py), out of the input's size; its rate is that count over the time since the job started, so
it is the job's rate, and the ETA follows from both. It once counted records leaving the sources, which
fill the rings at once: 100% from the first frame of a CPU-bound job (issue 23.1).

The tasks are never involved: the bar costs them nothing. It is on by default only where someone can
see it (stderr is a terminal) and never under pytest; `config["progress"]` True / False forces it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Sized
from typing import IO, Any

from procflow.core.enums import OperatorKind
from procflow.core.functions import IterableBatch

_WIDTH = 30


def known_total(graph: Any) -> int | None:
    """Records the sources will emit, when every source knows its size (a sized iterable); else None:
    a bar over part of the input would stop short of, or run past, 100%."""
    total = 0
    for t in graph.transformations.values():
        if t.inputs:
            continue
        spec = t.function
        if not (t.kind == OperatorKind.BATCH and spec.target is IterableBatch and spec.args
                and isinstance(spec.args[0], Sized)):
            return None
        try:
            total += len(spec.args[0])
        except TypeError:
            return None
    return total


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


def render(done: int, total: int, elapsed: float, final: str = "") -> str:
    """One line: ``[#######-------]  45%  4,500/10,000 records  12,345 rec/s  ETA 0:03``."""
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
    return (f"[{'#' * filled}{'-' * (_WIDTH - filled)}] {100 * frac:3.0f}%  {done:,}/{total:,} records  "
            f"{rate:,.0f} rec/s  {tail}").rstrip()


class ProgressBar:
    """Redraws `render(count(), total, seconds since start)` every `interval` until `finished` is set.

    `count()` gives the source records the pipeline has finished with (Job.completed_records).
    """

    def __init__(self, total: int, count: Callable[[], int], finished: threading.Event, *,
                 status: Callable[[], str] = lambda: "", stream: IO[str] | None = None,
                 interval: float = 0.2) -> None:
        self.total = total
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
                self._draw(render(done, self.total, elapsed, "done" if status == "finished" else status))
                self._write("\n")
                return
            self._draw(render(done, self.total, elapsed))

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
