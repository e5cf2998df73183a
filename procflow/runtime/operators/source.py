"""Source operators: the loop that pulls records from a BatchFunction, an iterable or a SourceFunction."""

from __future__ import annotations

import itertools
import time
from typing import Any

from procflow.api.functions import IterableBatch, SourceFunction
from procflow.api.signals import StopSignal
from procflow.runtime.operators.base import Operator

NO_RECORD = object()
_BACKOFF_MIN, _BACKOFF_MAX = 0.0005, 0.05
# Most records an iterable source pulls and routes at once (see `_run_chunked`).
_CHUNK_MAX = 256


class SourceOperator(Operator):
    """Emits until the function ends the batch or the driver asks to stop.

    The task's `tick()` runs at least every `flush_interval`: it flushes outputs, publishes counters and
    returns True once the driver has asked the job to stop. Between ticks a record costs one clock read.
    """

    last_record: Any = NO_RECORD

    def run(self, tick) -> str:
        # This loop runs once per record, so the record being emitted lives in a local and reaches
        # `last_record` (for the error report) only when an exception leaves the loop.
        fn = self.function
        control = self.ctx.job_control
        emit = self.router.route
        perf = time.perf_counter
        interval = float(self.ctx.config.get("flush_interval", 0.001))
        due = perf() + interval
        self.last_record = NO_RECORD
        if isinstance(fn, IterableBatch):
            n, i = self.ctx.parallelism, self.ctx.parallel_index
            items = iter(fn.iterable) if n == 1 else itertools.islice(fn.iterable, i, None, n)
            if self.router.routes_many:
                return self._run_chunked(items, tick, interval)
            for record in items:
                try:
                    emit(record, None, False)
                except BaseException:
                    self.last_record = record
                    raise
                if perf() >= due:
                    if tick():
                        return "stopped by request"
                    due = perf() + interval
            return "end of input"
        execute = fn.execute
        unbounded = isinstance(fn, SourceFunction)
        backoff = _BACKOFF_MIN
        while True:
            record = execute()    # raising here names no record: the function had not produced one
            if record is None:
                if not unbounded:
                    return "end of input"
                if control.stop_requested:
                    return "stopped by request"
                # Nothing right now: publish what we have and back off, waking at once on a stop.
                self.router.flush()
                started = time.perf_counter()
                control.sleep_unless_stopped(backoff)
                tick(waited=time.perf_counter() - started)
                due = perf() + interval
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            if type(record) is StopSignal:
                return record.reason or "end of input"
            backoff = _BACKOFF_MIN
            try:
                emit(record, None, False)
            except BaseException:
                self.last_record = record
                raise
            if perf() >= due:
                if tick():
                    return "stopped by request"
                due = perf() + interval

    def _run_chunked(self, items, tick, interval: float) -> str:
        """An iterable whose records need no per-record routing decision: pull and route them in chunks.

        Routing one record at a time cost a source about 1 us per record, the bottleneck of a pipeline of
        cheap maps. A chunk grows while pulling it takes well under a flush interval and shrinks when it
        takes longer, so a slow generator (a file, a network read) still sends each record within about
        one interval. Emitting a chunk can only fail on a record that cannot be encoded, and that error
        names its record; if the iterable itself raises, the records of the chunk being pulled are lost
        with the job that fails.
        """
        route_many = self.router.route_many
        perf = time.perf_counter
        size = 1
        due = perf() + interval
        while True:
            started = perf()
            chunk = list(itertools.islice(items, size))
            if chunk:
                route_many(chunk)
            now = perf()
            if len(chunk) < size:
                return "end of input"
            if now - started < interval / 8:
                size = min(size * 2, _CHUNK_MAX)
            elif now - started > interval and size > 1:
                size //= 2
            if now >= due:
                if tick():
                    return "stopped by request"
                due = perf() + interval

    def process(self, record: Any) -> None:  # pragma: no cover - sources have no inputs
        raise AssertionError("a source has no input")
