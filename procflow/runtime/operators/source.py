"""Source operators: the loop that pulls records from a split source, a BatchFunction, an iterable or a
SourceFunction."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any

from procflow.core.functions import BatchFunction, IterableBatch, SourceFunction
from procflow.core.signals import StopSignal
from procflow.core.splits import RECORDS, Split, SplitSource
from procflow.runtime.chunking import CHUNK_MAX, HOLD_S, ChunkSize
from procflow.runtime.job_control import UNITS_DONE
from procflow.runtime.operators.base import Operator
from procflow.runtime.split_plan import SplitPlan

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


class SplitReader:
    """A split source's instance: claims splits one at a time from the job control and reads each.

    Pull, not a fixed share: an instance asks for its next split only when it has read the last one, so
    a fast instance (a free core, cheap records) reads more splits and the source ends when the input
    does, not when its slowest instance does. The plan (descriptors only) came with the TaskContext; a
    claim costs a few microseconds (job_control.py), once per split. As each split ends, its size is
    added to the task's `units_done` counter, which the driver's progress reads.
    """

    def __init__(self, fn: SplitSource[Any], ctx: Any, waited: Callable[[float], Any] | None = None) -> None:
        plan = ctx.splits
        if plan is None:
            raise RuntimeError(f"task {ctx.name}: {type(fn).__name__} is a SplitSource but its task got no "
                               "split plan (TaskContext.splits); the Dispatcher plans split sources in "
                               "prepare(). This is a procflow bug, please report it")
        self.fn = fn
        self.plan: SplitPlan = plan
        self.instance = ctx.parallel_index
        self.parallelism = ctx.parallelism
        self.control = ctx.job_control
        self.row = ctx.job_control.counters[ctx.task_slot]
        self.units_done = 0
        self.split: Split | None = None   # the split being read
        self._seen: Split | None = None   # the split `upcoming` saw last, and where it began (estimated)
        self._began = self._pulled = 0
        # Checkpoints (`next_split`): splits finished at the restored checkpoint (skipped), part-read
        # ones (index -> records to skip), and this run's finished splits and [current split, offset].
        self._done_before: set[int] = set()
        self._partial: dict[int, int] = {}
        self.done: list[int] = []
        self.current: list[int] | None = None
        # A claim is a wait, not work: on Ray it is a remote call that a loaded machine can stretch to a
        # large share of a second, which would otherwise show as the source's busy time.
        self._waited = waited

    def records(self) -> Iterator[Any]:
        """Every record of the splits this instance claims. Chained in C: the records of a split pass
        straight from its iterator to the source's islice, with no Python frame per record."""
        return itertools.chain.from_iterable(self._splits())

    def _splits(self) -> Iterator[Iterable[Any]]:
        """Claims the next split when the previous one is exhausted (chain asks for it only then)."""
        plan, control, row, waited = self.plan, self.control, self.row, self._waited
        perf = time.perf_counter
        while True:
            started = perf()
            index = control.claim_split(plan.slot, self.instance)
            if waited is not None:
                waited(perf() - started)
            if index is None:
                break
            self.split = split = plan.splits[index]
            yield self.fn.read_split(split)
            self.units_done += split.size
            row[UNITS_DONE] = self.units_done
        self.split = None

    # -- checkpoints: one split at a time, its position counted exactly ---------------------------------

    def resume_from(self, restored: Any) -> None:
        """The splits a checkpoint found finished (`done`) or read in part (`partial`: index -> records)."""
        if restored:
            self._done_before = set(restored["done"])
            self._partial = {int(k): int(v) for k, v in restored["partial"].items()}

    def next_split(self) -> Iterator[Any] | None:
        """Claim the next split to read (finished ones are skipped); its records after those a restored
        checkpoint had already emitted. None when no split is left."""
        plan, control, row, waited = self.plan, self.control, self.row, self._waited
        while True:
            started = time.perf_counter()
            index = control.claim_split(plan.slot, self.instance)
            if waited is not None:
                waited(time.perf_counter() - started)
            if index is None:
                self.split = self.current = None
                return None
            split = plan.splits[index]
            if index in self._done_before:
                self.done.append(index)
                self.units_done += split.size
                row[UNITS_DONE] = self.units_done
                continue
            skip = self._partial.get(index, 0)
            self.split, self.current = split, [index, skip]
            records = iter(self.fn.read_split(split))
            return itertools.islice(records, skip, None) if skip else records

    def emitted(self, count: int) -> None:
        assert self.current is not None
        self.current[1] += count

    def split_done(self) -> None:
        assert self.current is not None and self.split is not None
        self.done.append(self.current[0])
        self.units_done += self.split.size
        self.row[UNITS_DONE] = self.units_done
        self.current = None

    def progress(self) -> dict[str, Any]:
        """For a checkpoint: the splits this run finished, and the one being read with its offset."""
        return {"done": list(self.done), "current": list(self.current) if self.current is not None else None}

    def upcoming(self, pulled: int) -> int:
        """Records this instance will still emit after the first `pulled` (an estimate, for balanced
        output): the rest of its split, plus its share of the splits nobody has claimed yet. The rest of
        the split is exact to within a chunk: a split that began inside the last chunk is taken to have
        begun at its start."""
        split = self.split
        if split is not self._seen:
            self._seen, self._began = split, self._pulled
        self._pulled = pulled
        left = max(split.size - (pulled - self._began), 0) if split is not None else 0
        unclaimed = self.plan.units_from(self.control.splits_claimed(self.plan.slot))
        return left + unclaimed // self.parallelism


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
    # Checkpoints: records of an iterable emitted so far (restored ones included), the split reader, and
    # the state restored on resume (`restore`, before `run`).
    position = 0
    reader: SplitReader | None = None
    _restored: dict[str, Any] = {}

    def run(self, tick: Tick, waited: Callable[[float], Any] | None = None) -> str:
        """`waited(seconds)`: the task counts that time as waiting, not work (a split claim)."""
        self.last_record = NO_RECORD
        interval = float(self.ctx.config["flush_interval"])
        fn = self.function
        # A TaskContext always has the field; tools and tests drive sources with lighter contexts.
        checkpoints = getattr(self.ctx, "checkpoint_dir", None) is not None
        if isinstance(fn, SplitSource):
            reader = SplitReader(fn, self.ctx, waited)
            if checkpoints:
                self.reader = reader
                reader.resume_from(self.ctx.restore_splits)
                return self._run_splits(reader, tick, interval)
            upcoming = reader.upcoming if reader.plan.unit == RECORDS else None
            return self._run_iterable(reader.records(), tick, interval, upcoming)
        if isinstance(fn, IterableBatch):
            n, i = self.ctx.parallelism, self.ctx.parallel_index
            items = iter(fn.iterable) if n == 1 else itertools.islice(fn.iterable, i, None, n)
            if checkpoints:
                self.position = int(self._restored.get("position", 0))
                if self.position:   # resumed: the records before the checkpoint were emitted already
                    items = itertools.islice(items, self.position, None)
            total = _length(fn.iterable)
            if total is None:
                return self._run_iterable(items, tick, interval, None)
            count = len(range(i, total, n))
            return self._run_iterable(items, tick, interval, lambda pulled: max(count - pulled, 0))
        return self._run_function(fn, tick, interval)

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

    def _run_iterable(self, items: Iterator[Any], tick: Tick, interval: float,
                      upcoming: Callable[[int], int] | None) -> str:
        """Pull chunks with islice, sized by `ChunkSize` so that a slow generator (a file, a network
        read) still sends each record within about one interval. If the iterable raises, the records of
        the chunk being pulled are lost with the job that fails. `upcoming(pulled)`: how many records
        this task will still emit after the first `pulled`, where that is known; the router hears it."""
        perf = time.perf_counter
        announce = self.router.announce_upcoming if upcoming is not None else None
        pulled = 0
        chunk_size = ChunkSize(interval)
        due = perf() + interval
        while True:
            size = chunk_size.size
            started = perf()
            chunk = list(itertools.islice(items, size))
            if chunk:
                if announce is not None and upcoming is not None:
                    pulled += len(chunk)
                    announce(upcoming(pulled))
                self._send(chunk)
                self.position += len(chunk)
            now = perf()
            if len(chunk) < size:
                return "end of input"
            chunk_size.took(now - started)
            if now >= due:
                if tick():
                    return "stopped by request"
                due = perf() + interval

    def _run_splits(self, reader: SplitReader, tick: Tick, interval: float) -> str:
        """With checkpoints: split by split, so that at every tick (where a barrier may leave) the reader
        knows exactly how many records of its current split went out. The cost is per chunk, not record."""
        perf = time.perf_counter
        chunk_size = ChunkSize(interval)
        due = perf() + interval
        while True:
            records = reader.next_split()
            if records is None:
                return "end of input"
            while True:
                size = chunk_size.size
                started = perf()
                chunk = list(itertools.islice(records, size))
                if chunk:
                    self._send(chunk)
                    reader.emitted(len(chunk))
                now = perf()
                ended = len(chunk) < size
                if ended:
                    reader.split_done()
                else:
                    chunk_size.took(now - started)
                if now >= due:
                    if tick():
                        return "stopped by request"
                    due = perf() + interval
                if ended:
                    break

    def snapshot(self) -> tuple[dict[str, Any], dict[str, Any]]:
        state, progress = super().snapshot()
        state["position"] = self.position
        if self.reader is not None:
            progress["splits"] = self.reader.progress()
        return state, progress

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self._restored = state

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
