"""SequenceSource: `env.from_batch(seq)` over a sized, indexable input, read in parallel by index ranges.

    driver: plan_splits(n)  -> about SPLITS_PER_INSTANCE x n index ranges [start, stop) of equal length
    task:   read_split(s)   -> iter(data[start:stop]), from the task's own copy of `data`

Each instance reads only the ranges it claims, from its own copy of the input: inherited at fork (no
copy at all until written, and nobody writes it), and under spawn shipped once per task, a numpy array
through shared memory (`ship_arrays`) so that a large array is neither pickled per task nor per record.
Several ranges per instance let a fast instance take more of them (the split enumerator hands them out
on request). A generator or another plain iterable cannot be indexed: `from_batch` keeps the single
reader path (IterableBatch) for those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from procflow.core.splits import RECORDS, Split, SplitSource

# Ranges per source instance: enough for a fast instance to take a slower one's share, few enough that
# a claim (a few microseconds) per range is nothing next to reading it.
SPLITS_PER_INSTANCE = 4

# The inputs split by index: slicing them is cheap and gives the same items as iterating them.
SEQUENCE_TYPES = (list, tuple, range, np.ndarray)


def is_splittable(data: Any) -> bool:
    """True for a list, tuple, range or numpy array (a memmap too): `from_batch` splits those."""
    return isinstance(data, SEQUENCE_TYPES)


class SequenceSource(SplitSource[Any]):
    """The records of a list, tuple, range or numpy array (its rows), in order, split by index ranges."""

    unit = RECORDS

    def __init__(self, data: Any) -> None:
        if not is_splittable(data):
            raise TypeError(f"SequenceSource needs a list, tuple, range or numpy array, got "
                            f"{type(data).__name__}; pass other iterables to from_batch() as they are")
        self.data = data

    def __repr__(self) -> str:
        return f"SequenceSource({type(self.data).__name__} of {len(self.data)})"

    def __len__(self) -> int:
        return len(self.data)

    def plan_splits(self, parallelism: int) -> list[Split]:
        n = len(self.data)
        count = min(n, max(parallelism, 1) * SPLITS_PER_INSTANCE)
        bounds = [n * i // count for i in range(count + 1)] if count else [0]
        return [Split(i, (start, stop), stop - start) for i, (start, stop) in enumerate(zip(bounds, bounds[1:]))]

    def read_split(self, split: Split) -> Iterator[Any]:
        start, stop = split.descriptor
        return iter(self.data[start:stop])

    def ship_arrays(self, share: Callable[[np.ndarray], Any]) -> None:
        """Before a spawned task is started: let the runtime put a numpy array where every task can map it
        (`share` returns a stand-in that pickles to a name and unpickles as the array itself)."""
        if isinstance(self.data, np.ndarray):
            self.data = share(self.data)
