"""Source operators: the loop that pulls records from a BatchFunction, an iterable or a SourceFunction."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sized
from typing import Any

from procflow.core.functions import BatchFunction, IterableBatch, SourceFunction
from procflow.core.signals import StopSignal
from procflow.core.splits import SplitSource
from procflow.runtime.chunking import CHUNK_MAX, HOLD_S, ChunkSize
from procflow.runtime.operators.base import Operator

NO_RECORD = object()
_BACKOFF_MIN, _BACKOFF_MAX = 0.0005, 0.05


# What a source calls every flush interval (BaseTask._tick): flush and publish; True once a stop was asked.
Tick = Callable[..., bool]


def _length(iterable: Any) -> int | None:
    """len() of an iterable that knows it; a failing __len__ costs the job only its guided end."""
    if not isinstance(iterable, Sized):
        return None
    try:
        return len(iterable)
    except Exception:
        return None


class SourceOperator(Operator[BatchFunction[Any] | SourceFunction[Any]]):
    """Emits until the function ends the batch or the driver asks to stop.

    The task's `tick()` runs at least every `flush_interval`: it flushes outputs, publishes counters and
    returns True once the driver has asked the job to stop.

    Records leave in chunks: routing them one call at a time cost a source about 1 us per record, the
    bottleneck of a pipeline of cheap operators. A chunk goes out whenever it is full and before every
    tick, so no record waits longer than it did when each was routed at once (outputs only ever flushed
    on a tick).
    """

    last_record: Any = NO_RECORD

    def run(self, tick: Tick) -> str:
        self.last_record = NO_RECORD
        interval = float(self.ctx.config["flush_interval"])
        fn = self.function
        if isinstance(fn, SplitSource):
            return self._run_iterable(self._split_records(fn), tick, interval, None)
        if isinstance(fn, IterableBatch):
            n, i = self.ctx.parallelism, self.ctx.parallel_index
            items = iter(fn.iterable) if n == 1 else itertools.islice(fn.iterable, i, None, n)
            total = _length(fn.iterable)
            return self._run_iterable(items, tick, interval, None if total is None else len(range(i, total, n)))
        return self._run_function(fn, tick, interval)

    def _split_records(self, fn: SplitSource[Any]) -> Iterator[Any]:
        """The records of this instance's splits. A fixed share for now (instance i reads splits i, i+n,
        ...): the split enumerator that hands splits out on request replaces it."""
        n, i = self.ctx.parallelism, self.ctx.parallel_index
        for split in fn.plan_splits(n)[i::n]:
            yield from fn.read_split(split)

    def _send(self, chunk: list[Any]) -> None:
        """Route a chunk: in one call where placement runs no user code, else record by record so that
        an error in a key selector or partitioner names its record."""
        router = self.router
        if router.routes_many:
            router.route_many(chunk)
            return
        route = router.fast_route
        for record in chunk:
            try:
                route(record, None, False)
            except BaseException:
                self.last_record = record
                raise

    def _run_iterable(self, items: Iterator[Any], tick: Tick, interval: float, count: int | None) -> str:
        """Pull chunks with islice, sized by `ChunkSize` so that a slow generator (a file, a network
        read) still sends each record within about one interval. If the iterable raises, the records of
        the chunk being pulled are lost with the job that fails. `count`: how many records this task
        will emit, when the iterable knows its length; the router hears how many are still to come."""
        perf = time.perf_counter
        announce = self.router.announce_upcoming if count is not None else None
        left = count or 0   # records still to come, where `count` is known (announce is set)
        chunk_size = ChunkSize(interval)
        due = perf() + interval
        while True:
            size = chunk_size.size
            started = perf()
            chunk = list(itertools.islice(items, size))
            if chunk:
                if announce is not None:
                    left -= len(chunk)
                    announce(max(left, 0))
                self._send(chunk)
            now = perf()
            if len(chunk) < size:
                return "end of input"
            chunk_size.took(now - started)
            if now >= due:
                if tick():
                    return "stopped by request"
                due = perf() + interval

    def _run_function(self, fn: BatchFunction[Any] | SourceFunction[Any], tick: Tick, interval: float) -> str:
        """Call `execute()` until it ends the batch (None / StopSignal) or, for an unbounded source, back
        off on None. This loop runs once per record: a call, two checks, an append and a clock read.

        The chunk leaves when it is full or HOLD_S after the previous one left: a source of big records
        (1 MiB arrays, ~100 us each to make) sends each one at once, so the consumer copies one while
        the next is being made.
        """
        control = self.ctx.job_control
        perf = time.perf_counter
        execute = fn.execute
        unbounded = isinstance(fn, SourceFunction)
        backoff = _BACKOFF_MIN
        chunk: list[Any] = []
        append = chunk.append
        due = perf() + interval
        release = perf() + HOLD_S
        while True:
            try:
                record = execute()    # raising here names no record: the function had not produced one
            except BaseException:
                self._send(chunk)     # what it produced before failing still leaves, and counts
                raise
            if record is None:
                self._send(chunk)
                chunk.clear()
                if not unbounded:
                    return "end of input"
                if control.stop_requested:
                    return "stopped by request"
                # Nothing right now: publish what we have and back off, waking at once on a stop.
                self.router.flush()
                started = perf()
                control.sleep_unless_stopped(backoff)
                tick(waited=perf() - started)
                due = perf() + interval
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            if type(record) is StopSignal:
                self._send(chunk)
                return record.reason or "end of input"
            backoff = _BACKOFF_MIN
            append(record)
            now = perf()
            if now >= release or len(chunk) >= CHUNK_MAX:
                self._send(chunk)
                chunk.clear()
                if now >= due:
                    if tick():
                        return "stopped by request"
                    due = perf() + interval
                release = perf() + HOLD_S

    def process(self, record: Any) -> None:  # pragma: no cover - sources have no inputs
        raise AssertionError("a source has no input")
