"""`env.read_parquet`: rows of Parquet files through pyarrow (the optional extra `procflow[arrow]`).

A row group is the unit Parquet stores and compresses on its own, so it is the split: planned from the
files' footers (no data read), each read by one instance with `ParquetFile.read_row_group`. Records
are dicts (column name -> Python value), or with `batch=True` pyarrow RecordBatches, which keep the
columns as Arrow arrays (`batch.column(i).to_numpy()` for numpy) and skip the per-row conversion.

pyarrow is imported only when a Parquet source is made, so procflow itself never needs it; without it,
the error names the extra to install.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from procflow.core.splits import RECORDS, Split, SplitSource
from procflow.io.paths import PathSpec, expand_paths, files_repr

INSTALL_HINT = "pip install 'procflow[arrow]'"


def require_pyarrow(what: str) -> Any:
    """The module pyarrow.parquet, or an ImportError that says how to install it."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError(f"{what} needs pyarrow, which is not installed: {INSTALL_HINT} "
                          "(or pip install pyarrow)") from exc
    return pq


@dataclass(frozen=True)
class RowGroup:
    """Row group `index` of the Parquet file `path`."""

    path: str
    index: int


class ParquetSource(SplitSource[Any]):
    """Each row of the files as a dict, or (`batch=True`) each row group's rows as RecordBatches.
    `columns`: read only these columns (Parquet stores columns apart, so the others are never read)."""

    unit = RECORDS

    def __init__(self, paths: PathSpec, *, columns: Sequence[str] | None = None, batch: bool = False) -> None:
        what = type(self).__name__
        require_pyarrow(what)
        if isinstance(columns, str):
            raise TypeError(f"{what}: columns must be a list of column names, got the string {columns!r}")
        self.paths = expand_paths(paths, what)
        self.columns = list(columns) if columns is not None else None
        self.batch = bool(batch)

    def __repr__(self) -> str:
        return files_repr(self, self.paths)

    def plan_splits(self, parallelism: int) -> list[Split]:
        pq = require_pyarrow(type(self).__name__)
        splits: list[Split] = []
        for path in self.paths:
            meta = pq.ParquetFile(path).metadata
            for index in range(meta.num_row_groups):
                rows = meta.row_group(index).num_rows
                if rows:
                    splits.append(Split(len(splits), RowGroup(path, index), rows))
        return splits

    def read_split(self, split: Split) -> Iterator[Any]:
        pq = require_pyarrow(type(self).__name__)
        group: RowGroup = split.descriptor
        with pq.ParquetFile(group.path) as f:
            table = f.read_row_group(group.index, columns=self.columns)
        if self.batch:
            yield from table.to_batches()
        else:
            yield from table.to_pylist()
