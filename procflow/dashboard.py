"""The live dashboard of `procflow run --dashboard`: one row per task, refreshed while the job runs.

    Dashboard.run(job) ─► every `interval` s: Sampler.sample() reads job.metrics (the shared counters),
                          takes differences against the previous sample -> rate, busy %, queue fill,
                          names the bottleneck operator; the frame is drawn with rich's Live if rich is
                          importable, else as plain text redrawn in place (ANSI cursor-up on a terminal)
    job ends ─► one last frame with whole-job figures (the same ones the summary reports)

Rates and busy % in live frames cover about the last second, so a stage that slows down shows soon;
the final frame averages over the whole job.
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass, field
from typing import IO, Any

from procflow.core.errors import JobFailedError

BOTTLENECK_MARK = "<- bottleneck"


@dataclass(frozen=True)
class TaskRow:
    task: str
    operator: str
    state: str            # init, run, done
    records_in: int
    records_out: int
    rate: float           # records per second handled (emitted, for a source)
    busy_pct: float       # share of the window spent working
    fill_pct: float | None  # input rings' fill now (0 for sources); None in whole-job frames


@dataclass(frozen=True)
class Frame:
    job_id: str
    status: str
    elapsed: float
    source_records: int
    throughput: float     # the job's rate: completed records per second since it started
    rows: list[TaskRow] = field(default_factory=list)
    bottleneck: str | None = None
    completed: int = 0    # source records the whole pipeline has finished with (Job.completed_records)


class Sampler:
    """Turns successive `job.metrics` readings into frames.

    Live figures compare against the reading about `window` seconds back (tasks publish counters after each
    batch and every 50 ms of work, so much shorter windows flicker); `cumulative=True` averages over the
    whole job instead. The title's rate is the job's: records through the whole pipeline per second.
    """

    def __init__(self, job: Any, window: float = 1.0) -> None:
        self.job = job
        self.window = window
        self._history: deque[tuple[float, dict]] = deque()
        self._sources = job.source_tasks

    def sample(self, cumulative: bool = False) -> Frame:
        job = self.job
        metrics = job.metrics
        now = job.elapsed
        history = self._history
        base: dict[str, dict[str, Any]]
        if cumulative:
            base_t, base = 0.0, {}
        else:
            while len(history) > 1 and history[1][0] <= now - self.window:
                history.popleft()
            base_t, base = history[0] if history else (0.0, {})
            history.append((now, metrics))
        dt = max(now - base_t, 1e-9)
        rows = []
        for name, m in metrics.items():
            p = base.get(name, {})
            is_source = name in self._sources
            handled = "records_out" if is_source else "records_in"
            rate = (m[handled] - p.get(handled, 0)) / dt
            busy = 100.0 * (m["busy_s"] - p.get("busy_s", 0.0)) / dt
            state = "done" if m["finished"] else ("run" if m["started"] else "init")
            rows.append(TaskRow(name, m["operator"], state, m["records_in"], m["records_out"], max(rate, 0.0),
                                min(max(busy, 0.0), 100.0),
                                None if cumulative else 100.0 * m.get("input_fill", 0.0)))
        emitted = sum(r.records_out for r in rows if r.task in self._sources)
        # The job's rate counts what went all the way through, not what the sources emitted: they fill
        # the rings at once, and their rate was shown as the job's (issue 23.2).
        completed = job.completed_records(metrics)
        return Frame(job.job_id, job.status, now, emitted, completed / now if now else 0.0, rows,
                     bottleneck_of(rows), completed)


def bottleneck_of(rows: list[TaskRow]) -> str | None:
    """The operator whose tasks were busiest on average; None while nothing has worked yet."""
    busy: dict[str, list[float]] = {}
    for r in rows:
        busy.setdefault(r.operator, []).append(r.busy_pct)
    if not busy:
        return None
    op = max(busy, key=lambda k: sum(busy[k]) / len(busy[k]))
    return op if max(busy[op]) > 0 else None


# A task's name is `<operator>_<index>`, so the operator needs no column of its own.
_COLUMNS = ("task", "state", "in", "out", "rate/s", "busy %", "fill %", "")
_RIGHT = (2, 3, 4, 5, 6)


def _cells(frame: Frame, row: TaskRow) -> tuple[str, ...]:
    mark = BOTTLENECK_MARK if row.operator == frame.bottleneck else ""
    return (row.task, row.state, f"{row.records_in:,}", f"{row.records_out:,}", f"{row.rate:,.0f}",
            f"{row.busy_pct:.1f}", "-" if row.fill_pct is None else f"{row.fill_pct:.1f}", mark)


def _title(frame: Frame) -> str:
    return (f"procflow job {frame.job_id}  {frame.status}  {frame.elapsed:.1f}s  "
            f"{frame.completed:,}/{frame.source_records:,} records done  {frame.throughput:,.0f} rec/s")


def render_plain(frame: Frame) -> str:
    rows = [_COLUMNS] + [_cells(frame, r) for r in frame.rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = [_title(frame)]
    for r in rows:
        lines.append("  ".join(c.rjust(w) if i in _RIGHT else c.ljust(w) for i, (c, w) in
                               enumerate(zip(r, widths))).rstrip())
    return "\n".join(lines) + "\n"


def render_rich(frame: Frame) -> Any:
    from rich.table import Table

    table = Table(title=_title(frame), title_justify="left")
    for i, col in enumerate(_COLUMNS):
        table.add_column(col, justify="right" if i in _RIGHT else "left", no_wrap=True)
    for row in frame.rows:
        hot = row.operator == frame.bottleneck
        table.add_row(*_cells(frame, row), style="bold red" if hot else None)
    return table


def rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


class Dashboard:
    """Draws frames of a running job until it ends. Give a rich `console`, or a `stream` for plain text."""

    def __init__(self, job: Any, *, console: Any = None, stream: IO[str] | None = None,
                 interval: float = 0.5, plain: bool | None = None) -> None:
        self.job = job
        self.sampler = Sampler(job, window=max(1.0, 2 * interval))
        self.interval = interval
        self.plain = (not rich_available()) if plain is None else plain
        self.stream = stream
        self.console = console
        self.last_frame: Frame | None = None

    def _ended(self) -> bool:
        """Sleep one interval unless the job ends first (Ctrl-C interrupts this wait)."""
        try:
            self.job.wait(self.interval)
        except TimeoutError:
            return False
        except JobFailedError:  # the caller's own job.wait() raises it again
            pass
        return True

    def run(self) -> Frame:
        """Draw until the job ends; returns the last frame, whose counts are the job's totals."""
        return self._run_plain() if self.plain else self._run_rich()

    def _frame(self, cumulative: bool = False) -> Frame:
        self.last_frame = self.sampler.sample(cumulative)
        return self.last_frame

    def _run_rich(self) -> Frame:
        from rich.console import Console
        from rich.live import Live

        stream = self.stream or sys.stderr
        # Not a terminal (a log file, CI): rich would assume 80 columns and cut the table.
        console = self.console or Console(file=stream, width=None if _isatty(stream) else 120)
        with Live(render_rich(self._frame()), console=console, auto_refresh=False) as live:
            while not self._ended():
                live.update(render_rich(self._frame()), refresh=True)
            last = self._frame(cumulative=True)
            live.update(render_rich(last), refresh=True)
        if not console.is_terminal:
            # Live ends its last frame with a newline only on a terminal; elsewhere (a log file, or
            # stderr merged with stdout) the next line ran on after the table's border (issue 23.7).
            console.line()
        return last

    def _run_plain(self) -> Frame:
        stream = self.stream or sys.stderr
        tty = _isatty(stream)
        drawn = 0
        while not self._ended():
            if tty:
                drawn = _redraw(stream, render_plain(self._frame()), drawn)
        last = self._frame(cumulative=True)
        _redraw(stream, render_plain(last), drawn)
        return last


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _redraw(stream: IO[str], text: str, previous_lines: int) -> int:
    """Overwrite the previous frame in place: cursor up over it, clear to the end, write the new one."""
    if previous_lines:
        stream.write(f"\x1b[{previous_lines}A\x1b[J")
    stream.write(text)
    stream.flush()
    return text.count("\n")
