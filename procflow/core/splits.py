"""Splits: a bounded source's input cut into small descriptors that its instances pull one at a time.

    driver (once per job)                        every source instance (its own process or actor)
    ─────────────────────                        ────────────────────────────────────────────────
    fn.plan_splits(parallelism) -> [Split]       while (split := claim()) is not None:
    the split enumerator hands each split to         for record in fn.read_split(split): emit it
    the first instance that asks for one             progress: units done += split.size

Why pull rather than a fixed share per instance: a fast instance (a free core, cheap records) takes
more splits, so the job no longer lasts as long as its slowest reader. Why descriptors: a split names
its data (a path and a byte range, an index range) and never carries it, so planning is cheap and a
plan can be written into a checkpoint.

A user's own splittable source subclasses `SplitSource` and is passed to `env.from_batch(...)` like any
BatchFunction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from procflow.core.functions import BatchFunction

_Out = TypeVar("_Out", covariant=True)

RECORDS, BYTES = "records", "bytes"


@dataclass(frozen=True)
class Split:
    """One unit of a source's input, read by exactly one instance, once."""

    index: int          # position in the plan
    descriptor: Any     # small and picklable: (path, start, stop), (start, stop), ... never the data
    size: int           # units of work in it (records or bytes: the source's `unit`), for progress


class SplitSource(BatchFunction[_Out]):
    """A bounded source whose input is described as splits (see the module docstring).

    `plan_splits` runs in the driver before any task starts; `read_split` in a source instance, after
    `open()`, once for every split that instance claims.
    """

    # What Split.size counts, shown with the progress: RECORDS or BYTES.
    unit: ClassVar[str] = RECORDS

    def plan_splits(self, parallelism: int) -> list[Split]:
        """Cut the input into splits (in the driver). `parallelism`: how many instances will read them,
        a hint for how many splits to make (a few per instance lets a fast one take more)."""
        raise NotImplementedError

    def read_split(self, split: Split) -> Iterable[_Out]:
        """The records of one split, in order (in the task)."""
        raise NotImplementedError

    def execute(self) -> Any:
        raise TypeError(f"{type(self).__name__} is a SplitSource: the runtime reads it through "
                        "plan_splits() and read_split(), never execute()")
