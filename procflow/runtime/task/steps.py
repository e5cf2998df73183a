"""Record steps: the operator's part of a task's loop over one input batch, chosen once when it opens.

    BaseTask._process_records(records, keys)       the bookkeeping, once for every kind of step:
        while records are left:
            end = step.run(records, keys, pos, due)   ◄── the step: the operator's calls, nothing else
            records_in += end - pos; flush if due
        the step raised ─► step.failed_at names the record ─► count it, then report it (on_error="fail")
                                                               or set it aside (skip / dead_letter)

    PerRecord  one call of `operator.per_record()` (its `process`) per record, the key set first on
               keyed input; returns as soon as the flush is due, so outputs leave on time within a
               long batch
    Chunked    unkeyed records of an operator with `process_many`: one call per chunk, sized by
               ChunkSize, so that a cheap record costs a share of a call instead of a call; returns
               when the flush is due, as PerRecord does
    Bulk       an operator that takes whole batches (`process_all`: the collect); what fails there is
               the channel to the driver, not a record, so nothing is set aside or blamed

Why steps: the task once had four loops chosen by operator flags, each with its own copy of the
in-count, the failed record and the flush check, and only one of them applied on_error (so a skipping
map gave up its chunks). A step only runs the operator and says where it stopped or which record failed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from procflow.runtime.chunking import ChunkSize

# `failed_at` of a step whose failure belongs to no record.
NO_INDEX = -1


class RecordStep:
    """Processes records of one batch from `start` on, until a natural pause; returns where it stopped.

    On an exception, `failed_at` is the index (in `records`) of the record that raised, or NO_INDEX:
    every record before it is done, none after it was started.
    """

    failed_at = NO_INDEX

    def run(self, records: list, keys: list | None, start: int, due: float) -> int:
        """Process records[start:end] for some end > start and return end. `due`: the clock reading at
        which the task should flush; a step that can stop early (PerRecord) stops there."""
        raise NotImplementedError


class PerRecord(RecordStep):
    """One call into the operator per record, and one clock read to stop when the flush is due."""

    def __init__(self, operator: Any, ctx: Any, clock: Callable[[], float]) -> None:
        self._process = operator.per_record()   # once the operator is open
        self._ctx = ctx
        self._clock = clock

    def run(self, records: list, keys: list | None, start: int, due: float) -> int:
        process = self._process
        clock = self._clock
        numbered = enumerate(records) if start == 0 else enumerate(itertools.islice(records, start, None), start)
        i = start
        try:
            if keys is None:
                for i, record in numbered:
                    process(record)
                    if clock() >= due:
                        return i + 1
            else:
                ctx = self._ctx
                for i, record in numbered:
                    ctx.current_key = keys[i]
                    process(record)
                    if clock() >= due:
                        return i + 1
        except BaseException:
            self.failed_at = i
            raise
        return len(records)


class Chunked(RecordStep):
    """Unkeyed records through `operator.process_many`, a chunk per call, until the flush is due; the
    chunk size follows how long chunks take (ChunkSize), so slow records still leave within about one
    flush interval."""

    def __init__(self, operator: Any, size: ChunkSize, clock: Callable[[], float]) -> None:
        self._operator = operator
        self._process_many = operator.process_many
        self._size = size
        self._clock = clock

    def run(self, records: list, keys: list | None, start: int, due: float) -> int:
        process_many = self._process_many
        size = self._size
        clock = self._clock
        pos, total = start, len(records)
        while pos < total:
            end = pos + size.size
            chunk = records if pos == 0 and end >= total else records[pos:end]
            started = clock()
            try:
                process_many(chunk)
            except BaseException:
                # The operator counts what it finished before the record that raised.
                self.failed_at = pos + self._operator.completed
                raise
            pos += len(chunk)
            now = clock()
            size.took(now - started)
            if now >= due:
                break
        return pos


class Bulk(RecordStep):
    """The rest of the batch in one `operator.process_all` call."""

    def __init__(self, operator: Any) -> None:
        self._process_all = operator.process_all

    def run(self, records: list, keys: list | None, start: int, due: float) -> int:
        self._process_all(records if start == 0 else records[start:])
        return len(records)


def choose_steps(operator: Any, ctx: Any, chunk_size: ChunkSize,
                 clock: Callable[[], float]) -> tuple[RecordStep, RecordStep]:
    """(step for unkeyed batches, step for keyed ones) of an open operator: chunks only where the
    operator can take them and the records carry no keys."""
    if operator.bulk:
        bulk = Bulk(operator)
        return bulk, bulk
    per_record = PerRecord(operator, ctx, clock)
    return (Chunked(operator, chunk_size, clock) if operator.chunked else per_record), per_record
