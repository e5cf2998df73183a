"""ParquetSink: records into Parquet parts through pyarrow (the optional extra `procflow[arrow]`).

Records are dicts (one row each, buffered and written `row_group_size` rows at a time) or Arrow data
(a `pyarrow.RecordBatch` or `Table`, as `read_parquet(batch=True)` gives them, written as they come).
The schema is `schema=` if given, else inferred from the first rows (dicts) or the first batch; later
records must fit it. pyarrow is imported in the task, at the first record; `write_parquet` checks in the
driver that it is installed, so a missing extra fails before any process starts.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import numpy as np

from procflow.io.sinks.file_sink import FileSink
from procflow.io.sinks.part_file import PartFile

ROW_GROUP_SIZE = 65536   # rows per row group for dict records: pyarrow's reader splits by row group
EXTRA = "arrow"


def require_pyarrow(where: str) -> Any:
    """The pyarrow module, or an ImportError that says which extra to install."""
    try:
        return importlib.import_module("pyarrow")
    except ImportError as exc:
        raise ImportError(f"{where} needs pyarrow, which is not installed; install procflow's optional "
                          f"extra: pip install 'procflow[{EXTRA}]' (or pip install pyarrow)") from exc


class ParquetSink(FileSink):
    """Parquet parts. `compression=` is pyarrow's ("snappy", "zstd", "gzip", "none", ...). The manifest
    counts records as they came: a RecordBatch counts as one."""

    extension = "parquet"
    format_name = "parquet"

    def __init__(self, path: str | os.PathLike[str], mode: str = "error", *, schema: Any = None,
                 row_group_size: int = ROW_GROUP_SIZE, compression: str = "snappy") -> None:
        super().__init__(path, mode)
        require_pyarrow(f"write_parquet({self.path!r})")
        if row_group_size < 1:
            raise ValueError(f"write_parquet({self.path!r}): row_group_size must be >= 1, got {row_group_size}")
        self.schema = schema
        self.row_group_size = row_group_size
        self.compression = compression
        self._rows: list[Any] = []
        self._writer: Any = None
        self._pa: Any = None

    def _start(self, part: PartFile, first: Any) -> None:
        self._pa = require_pyarrow(repr(self))

    def _open_writer(self, schema: Any, part: PartFile) -> Any:
        pq = importlib.import_module("pyarrow.parquet")
        self._writer = pq.ParquetWriter(part, schema, compression=self.compression)
        return self._writer

    def _write(self, part: PartFile, record: Any) -> None:
        pa = self._pa
        if isinstance(record, (pa.RecordBatch, pa.Table)):
            self._flush_rows(part)
            table = record if isinstance(record, pa.Table) else pa.Table.from_batches([record])
            writer = self._writer or self._open_writer(self.schema or table.schema, part)
            writer.write_table(table)
            return
        if not isinstance(record, dict):
            raise TypeError(f"{self!r} writes dicts (one row each) or pyarrow RecordBatches / Tables, got "
                            f"{type(record).__name__}; map records to dicts first")
        if any(isinstance(value, np.ndarray) for value in record.values()):
            # Kept until its row group is written, long after this call: an array may be a view on ring
            # memory that is valid only during the call (issue 19's zero-copy arrays), so copy it now.
            record = {k: np.array(v) if isinstance(v, np.ndarray) else v for k, v in record.items()}
        self._rows.append(record)
        if len(self._rows) >= self.row_group_size:
            self._flush_rows(part)

    def _flush_rows(self, part: PartFile) -> None:
        if not self._rows:
            return
        pa = self._pa
        table = pa.Table.from_pylist(self._rows, schema=self.schema if self.schema is not None else
                                     (self._writer.schema if self._writer is not None else None))
        self._rows = []
        writer = self._writer or self._open_writer(table.schema, part)
        writer.write_table(table, row_group_size=self.row_group_size)

    def _finish(self, part: PartFile) -> None:
        self._flush_rows(part)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
