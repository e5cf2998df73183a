"""Split plans: each split source's splits, planned once in the driver and shipped to its instances.

    Dispatcher.prepare ─► plan_job_splits(graph): per SplitSource, one function built in the driver,
                          plan_splits(parallelism) checked here -> SplitPlan(operator, slot, unit, splits)
                       ─► JobSetup.splits: the backend's job control makes one claim cursor per slot
                       ─► TaskContext.splits: every instance of that source gets the same plan
    source instance    ─► job_control.claim_split(slot, instance) -> the next split index, or None
                          (local: a cursor word in the job segment under a file lock; inline: a counter;
                          Ray: an enumerator actor), so a fast instance takes more splits

A plan carries descriptors only (a path and a byte range, an index range), never the data, so shipping
it to every instance is cheap. A plan that cannot be made (plan_splits raised, or returned something
other than a list of Splits numbered 0..n-1) fails the job before any process starts, naming the operator.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from procflow.core.enums import OperatorKind
from procflow.core.splits import BYTES, RECORDS, Split, SplitSource

UNITS = (RECORDS, BYTES)


@dataclass(frozen=True)
class SplitPlan:
    """The splits of one split source, in plan order; `slot` numbers the job's split sources."""

    operator: str
    slot: int
    unit: str
    splits: tuple[Split, ...]
    # units in splits[i:], for "how much is still to come" (len(splits) + 1 entries)
    _after: tuple[int, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        after = [0]
        for split in reversed(self.splits):
            after.append(after[-1] + split.size)
        object.__setattr__(self, "_after", tuple(reversed(after)))

    @property
    def total(self) -> int:
        """Units (records or bytes: `unit`) of the whole input."""
        return self._after[0]

    def __len__(self) -> int:
        return len(self.splits)

    def units_from(self, index: int) -> int:
        """Units in the splits from `index` on (those not handed out yet, given the claim cursor)."""
        return self._after[min(max(index, 0), len(self.splits))]


class SplitClaims(Protocol):
    """What a job control offers split sources (every backend's): claims, and the driver's view of them."""

    def claim_split(self, slot: int, instance: int) -> int | None:
        """The next unclaimed split index of source `slot`, now owned by `instance`; None when none is left."""
        ...

    def splits_claimed(self, slot: int) -> int:
        """How many splits of source `slot` are handed out so far (at least those this process claimed)."""
        ...

    def split_owners(self, slot: int) -> list[int | None] | None:
        """Per split of source `slot`, the instance it was handed to (None: not yet); None once closed."""
        ...


def is_split_source(spec: Any) -> bool:
    """A FunctionSpec whose function is a SplitSource (a subclass given, or an instance)."""
    target = spec.target
    return (isinstance(target, type) and issubclass(target, SplitSource)) or isinstance(target, SplitSource)


def plan_job_splits(graph: Any) -> dict[str, SplitPlan]:
    """Plan every split source of an ExecutionGraph, by operator name, slots in graph order.

    Runs in the driver before anything is created. Each source's plan is made once, by one function built
    for the purpose, with the parallelism its instances will have.
    """
    plans: dict[str, SplitPlan] = {}
    for t in graph.transformations.values():
        if t.inputs or t.kind != OperatorKind.BATCH or not is_split_source(t.function):
            continue
        instances = [n for n in graph.nodes.values() if n.transformation_id == t.id]
        parallelism = instances[0].parallelism if instances else t.parallelism
        plans[t.name] = plan_one(t.name, t.function.build(), parallelism, len(plans))
    return plans


def plan_one(operator: str, function: SplitSource[Any], parallelism: int, slot: int) -> SplitPlan:
    """`function.plan_splits(parallelism)`, checked; raises ValueError naming the operator."""
    where = f"operator {operator!r} ({type(function).__name__}.plan_splits({parallelism}))"
    unit = getattr(function, "unit", RECORDS)
    if unit not in UNITS:
        raise ValueError(f"{where}: unit must be one of {UNITS}, got {unit!r}; set the class attribute "
                         "`unit` to what Split.size counts")
    try:
        splits = function.plan_splits(parallelism)
    except Exception as exc:
        raise ValueError(f"{where} failed before the job started: {type(exc).__name__}: {exc}. The job "
                         "was not started; fix the input (a path, a glob) or the source's plan_splits()"
                         ) from exc
    if not isinstance(splits, (list, tuple)):
        raise ValueError(f"{where} returned {type(splits).__name__}; it must return a list of Split")
    for position, split in enumerate(splits):
        if not isinstance(split, Split):
            raise ValueError(f"{where}: item {position} is a {type(split).__name__}, not a Split")
        if split.index != position:
            raise ValueError(f"{where}: split {position} has index {split.index}; number the splits "
                             "0..n-1 in plan order (Split(index=i, ...))")
        if isinstance(split.size, bool) or not isinstance(split.size, int) or split.size < 0:
            raise ValueError(f"{where}: split {position} has size {split.size!r}; the size is a count "
                             f"of {unit} (an int >= 0)")
    return SplitPlan(operator, slot, unit, tuple(splits))


def split_counts(plans: Mapping[str, SplitPlan]) -> tuple[int, ...]:
    """Splits per slot, in slot order: what a job control reserves its claim state for."""
    ordered = sorted(plans.values(), key=lambda p: p.slot)
    return tuple(len(p) for p in ordered)


class SplitCursors:
    """Split claims held in one process: a cursor per slot. The inline backend's (its sources run one
    after another in the driver's thread) and the state of the Ray backend's enumerator actor (whose
    method calls may run on several threads, hence the lock)."""

    def __init__(self, counts: Sequence[int]) -> None:
        self._owners: list[list[int | None]] = [[None] * n for n in counts]
        self._next = [0] * len(counts)
        self._lock = threading.Lock()

    def claim_split(self, slot: int, instance: int) -> int | None:
        with self._lock:
            index = self._next[slot]
            if index >= len(self._owners[slot]):
                return None
            self._owners[slot][index] = instance
            self._next[slot] = index + 1
            return index

    def splits_claimed(self, slot: int) -> int:
        return self._next[slot]

    def split_owners(self, slot: int) -> list[int | None] | None:
        with self._lock:
            return list(self._owners[slot])
