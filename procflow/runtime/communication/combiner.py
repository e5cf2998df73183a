"""Combiners: a keyed reduce's partial aggregation, done in the tasks that send to it (issue 19).

    sending task (map_i)                                                     reduce task
    route(record, key) ─► Combining.send:
        key held      ─► partials[key] = fn(partials[key], record)
        key new       ─► its stable hash checked now (an unusable key fails at its own record)
                         partials[key] = record; MAX_KEYS held ─► drain
        unkeyed       ─► straight on, as Hash places it (round robin)
    drain()           ─► each (key, partial) to its key's instance ──ring──► ReduceOperator folds it
    finish()          ─► drain, then close the function        (send_stop, before the StopSignals)

Without a combiner a group-by sends every record across the shuffle, with its encode, ring copy,
decode and a call of the reduce per record; with one, a task sends one partial per key it saw (Hadoop
combiners, Spark's reduceByKey). A partial is a value of the reduce's own type: the reduce keeps its
first record per key as its state and folds the rest into it, so folding partials gives the result of
folding the records whenever the function is associative. `reduce(fn, combine=False)` opts out, and
`emit="running"` never combines (each update is output).

When partials leave: when MAX_KEYS keys are held (all of them, so memory stays bounded by that many
partials), at end of input, and, later, before a checkpoint barrier (`drain`). Never on the task's flush
timer: that fires every few milliseconds, and would send nearly every record on its own.

Arrays: a record read from a ring may be a read-only view on ring memory, valid only during the call
that received it (DESIGN §7); a partial outlives that call, so a read-only array is copied when held.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from procflow.core.errors import unhashable_key_error
from procflow.runtime.communication.placement import Hash, Placement

# Keys held per task and output group before every partial is sent on. For the group-bys this is for
# (tens to thousands of keys) partials then leave once, at end of input; with many more keys than
# this, combining saves little and the bound keeps the task's memory flat.
MAX_KEYS = 4096


def with_combiner(placement: Placement) -> Placement:
    """`placement`, wrapped in a Combining where its group feeds a reduce that combines (graph/ sets
    `combiner` on hash-partitioned edges only)."""
    if placement.group.combiner is None:
        return placement
    if not isinstance(placement, Hash):
        raise ValueError(f"output group to {placement.group.target!r}: a combiner needs hash partitioning, "
                         f"got {placement.group.strategy!r}")
    return Combining(placement)


def _held(value: Any) -> Any:
    """A value that may be kept beyond the call that produced it: a read-only array (a view on ring
    memory, which the ring reuses once the call returns) is copied."""
    if type(value) is np.ndarray and not value.flags.writeable:
        return value.copy()
    return value


class Combining(Placement):
    """Holds keyed records back as one partial per key, folded with the reduce's function, and sends the
    partials through the wrapped Hash placement (module docstring)."""

    holds_records = True

    def __init__(self, inner: Hash, max_keys: int = MAX_KEYS) -> None:
        super().__init__(inner.group, inner.next)
        self.inner = inner
        self.function = inner.group.combiner
        self._fold = self.function.execute
        self.max_keys = max_keys
        self.partials: dict[Any, Any] = {}
        self.combined = 0   # records folded into a partial instead of sent: for tests and tools

    def send(self, payload: Any, key: Any, keyed: bool) -> None:
        if not keyed:   # a record without a key (one emitted at end of input) is not grouped: as before
            self.inner.send(payload, key, keyed)
            return
        self._combine(payload, key)

    def send_selected(self, payload: Any, key: Any, keyed: bool) -> None:
        self._combine(payload, self.selector(payload))

    def _combine(self, payload: Any, key: Any) -> None:
        partials = self.partials
        try:
            held = key in partials
        except TypeError:
            raise unhashable_key_error(key, self.group.target) from None
        if held:
            # Computed before it is stored: a fold that raises leaves the partial as it was, so a
            # record skipped by on_error="skip" is not half-counted.
            try:
                folded = self._fold(partials[key], payload)
            except Exception as exc:
                # The report names this (sending) task and its record; say why the reduce's code ran
                # here. Notes exist from Python 3.11 on; on 3.10 the exception is reported as it is.
                add_note = getattr(exc, "add_note", None)
                if add_note is not None:
                    add_note(f"procflow: raised by the reduce function of {self.group.target!r}, run as a "
                             "combiner in the sending task; pass reduce(..., combine=False) to run it only "
                             "in the reduce")
                raise
            partials[key] = _held(folded)
            self.combined += 1
            return
        self.inner.targets(key, True)   # raises UnstableKeyError now, naming this record, not at the end
        partials[key] = _held(payload)
        if len(partials) >= self.max_keys:
            self.drain()

    def send_many(self, records: list) -> None:
        self.inner.send_many(records)   # unkeyed lists (BaseRouter.routes_many): nothing to group

    def send_selected_many(self, records: list) -> None:
        selector, combine = self.selector, self._combine
        i = 0
        try:
            for i, payload in enumerate(records):  # noqa: B007 (i names the failing record)
                combine(payload, selector(payload))
        except BaseException:
            self.failed_at = i
            raise

    def drain(self) -> None:
        partials, self.partials = self.partials, {}
        send = self.inner.send
        for key, partial in partials.items():
            send(partial, key, True)

    def finish(self) -> None:
        self.drain()
        self.function.close()

    @property
    def waited_s(self) -> float:
        return self.inner.waited_s
