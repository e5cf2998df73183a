"""`env.read_npy`: the rows of `.npy` files, memory-mapped, split by row ranges.

Splits are planned from the files' headers alone (shape and dtype, no data read). A reader maps its
file read-only and emits views on the map: nothing is copied until the channel writes the array's
bytes into the ring (a numpy array travels as a header plus raw bytes). A record is therefore a
read-only array: copy it (`record.copy()`) to change it in place.

Records: with `rows_per_record=None`, row i of the file (`arr[i]`: an array of shape `arr.shape[1:]`,
or a numpy scalar for a 1-D file); with `rows_per_record=k`, blocks `arr[i:i+k]` of k rows (the file's
last block may be shorter). Splits never cut a block.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from procflow.core.splits import RECORDS, Split, SplitSource
from procflow.io.lines import split_target
from procflow.io.paths import PathSpec, expand_paths, files_repr


@dataclass(frozen=True)
class RowRange:
    """Rows [start, stop) of the array in `path`."""

    path: str
    start: int
    stop: int


def _mapped(path: str, what: str) -> np.ndarray:
    """The array in `path`, memory-mapped read-only, as a plain ndarray view (not a memmap: a memmap
    subclass would not travel as raw bytes)."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{what}: cannot memory-map {path!r} as a .npy array ({exc}); read_npy reads "
                         ".npy files of a fixed-size dtype (not object arrays, not .npz archives)") from exc
    if not isinstance(arr, np.ndarray) or arr.ndim == 0:
        raise ValueError(f"{what}: {path!r} holds a 0-d array or no array; read_npy needs rows")
    return np.asarray(arr)


class NpySource(SplitSource[Any]):
    """Rows (or blocks of `rows_per_record` rows) of `.npy` files, as read-only numpy arrays.

    `split_rows`: rows per split (default: a few splits per instance, 4 to 64 MiB of data each).
    """

    unit = RECORDS

    def __init__(self, paths: PathSpec, *, rows_per_record: int | None = None,
                 split_rows: int | None = None) -> None:
        what = type(self).__name__
        for name, value in (("rows_per_record", rows_per_record), ("split_rows", split_rows)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{what}: {name} must be a positive int or None, got {value!r}")
        self.paths = expand_paths(paths, what)
        self.rows_per_record = rows_per_record
        self.split_rows = split_rows
        for path in self.paths:   # every file is a mappable array: checked here, before any process starts
            _mapped(path, what)

    def __repr__(self) -> str:
        return files_repr(self, self.paths)

    def plan_splits(self, parallelism: int) -> list[Split]:
        what = type(self).__name__
        shapes = [(path, _mapped(path, what)) for path in self.paths]
        per_record = self.rows_per_record or 1
        if self.split_rows is not None:
            rows_per_split = self.split_rows
        else:
            total = sum(arr.nbytes for _, arr in shapes)
            row_bytes = max(max((arr[:1].nbytes for _, arr in shapes), default=1), 1)
            rows_per_split = max(split_target(total, parallelism) // row_bytes, 1)
        # Whole records only: a split boundary inside a block of rows would cut the block in two.
        step = max(rows_per_split // per_record, 1) * per_record
        splits: list[Split] = []
        for path, arr in shapes:
            rows = arr.shape[0]
            for start in range(0, rows, step):
                stop = min(start + step, rows)
                splits.append(Split(len(splits), RowRange(path, start, stop), math.ceil((stop - start) / per_record)))
        return splits

    def read_split(self, split: Split) -> Iterator[Any]:
        rng: RowRange = split.descriptor
        arr = _mapped(rng.path, type(self).__name__)
        k = self.rows_per_record
        if k is None:
            yield from arr[rng.start:rng.stop]
            return
        for start in range(rng.start, rng.stop, k):
            yield arr[start:min(start + k, rng.stop)]
