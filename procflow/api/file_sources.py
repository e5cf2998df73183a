"""`env.read_text / read_jsonl / read_csv / read_npy / read_parquet`: file sources, mixed into every
environment (BaseEnvironment inherits FileSources).

Each builds its reader (procflow/io) at once, in the driver, so that a missing file, a glob matching
nothing, a bad option or a missing pyarrow fails here with the path or the option in the message,
before any process starts; the built reader is then copied to every instance. The readers are split
sources: their instances share the files' splits (byte ranges, row ranges, row groups), and a fast
instance takes more of them.

`parallelism` left at None lets the runtime choose (a split source may take the parallelism of the
operator it feeds); `on_error` ("fail", "skip", "dead_letter") decides what a bad line or row does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from procflow.api.datastream import DataStream
from procflow.core.splits import SplitSource
from procflow.io.csvfile import CsvSource
from procflow.io.jsonl import JsonlSource
from procflow.io.npy import NpySource
from procflow.io.parquet import ParquetSource
from procflow.io.paths import PathSpec
from procflow.io.text import TextSource


class FileSources:
    """The file-reading half of an environment's building methods."""

    if TYPE_CHECKING:   # provided by BaseEnvironment, which this class is mixed into
        def from_batch(self, source: Any, *args: Any, **kwargs: Any) -> DataStream[Any]: ...
        def _unique(self, kind: str) -> str: ...

    def read_text(self, paths: PathSpec, *, parallelism: int | None = None, name: str | None = None,
                  encoding: str = "utf-8", errors: str = "strict", split_size: int | None = None) -> DataStream[str]:
        """Each line of the files (a path, a list, a glob or a folder) as a str without its ending.

        Plain files are read in parallel by line-aligned byte ranges (a line is read once, by the split
        it starts in); .gz/.bz2/.xz files one whole file per split. `errors`: as for bytes.decode
        ("replace" reads a file with a few bad bytes). `split_size`: bytes per split (default: a few
        splits per instance, 4 to 64 MiB).
        """
        reader = TextSource(paths, encoding=encoding, errors=errors, split_size=split_size)
        return self._read_files("read_text", reader, parallelism, name, None)

    def read_jsonl(self, paths: PathSpec, *, parallelism: int | None = None, name: str | None = None,
                   on_error: str | None = None, encoding: str = "utf-8",
                   loads: Callable[[str], Any] = json.loads, split_size: int | None = None) -> DataStream[Any]:
        """One parsed value per non-blank line of JSON Lines files, split like read_text.

        A line that does not parse fails the job naming the file, the line number and the parser's
        message; `on_error="skip"` or `"dead_letter"` sets it aside instead. `loads`: the parser
        (json.loads; orjson.loads is faster).
        """
        reader = JsonlSource(paths, encoding=encoding, loads=loads, split_size=split_size)
        return self._read_files("read_jsonl", reader, parallelism, name, on_error)

    def read_csv(self, paths: PathSpec, *, parallelism: int | None = None, name: str | None = None,
                 on_error: str | None = None, header: bool = True, multiline: bool = True,
                 encoding: str = "utf-8", split_size: int | None = None, **fmtparams: Any) -> DataStream[Any]:
        """Each row of CSV files: a dict by the header (`header=True`) or a tuple of strings.

        `**fmtparams`: the csv module's options (`delimiter=";"`, `quotechar=`, `dialect="excel-tab"`).
        `multiline=True` (the default) allows quoted line breaks and reads each file whole, one per
        instance; `multiline=False` promises one row per line, and big files then split by byte range
        (a row that spans lines fails, naming it). A row with the wrong number of fields fails, or is
        set aside with `on_error`.
        """
        reader = CsvSource(paths, header=header, multiline=multiline, encoding=encoding, split_size=split_size,
                           **fmtparams)
        return self._read_files("read_csv", reader, parallelism, name, on_error)

    def read_npy(self, paths: PathSpec, *, parallelism: int | None = None, name: str | None = None,
                 rows_per_record: int | None = None, split_rows: int | None = None) -> DataStream[Any]:
        """The rows of `.npy` files (or blocks of `rows_per_record` rows), memory-mapped and split by row
        ranges. Records are read-only numpy arrays (views on the map): copy one to change it."""
        reader = NpySource(paths, rows_per_record=rows_per_record, split_rows=split_rows)
        return self._read_files("read_npy", reader, parallelism, name, None)

    def read_parquet(self, paths: PathSpec, *, parallelism: int | None = None, name: str | None = None,
                     columns: Sequence[str] | None = None, batch: bool = False) -> DataStream[Any]:
        """The rows of Parquet files as dicts, or with `batch=True` as pyarrow RecordBatches; row groups
        are the splits. Needs the optional extra: pip install 'procflow[arrow]'."""
        reader = ParquetSource(paths, columns=columns, batch=batch)
        return self._read_files("read_parquet", reader, parallelism, name, None)

    def _read_files(self, kind: str, reader: SplitSource[Any], parallelism: int | None, name: str | None,
                    on_error: str | None) -> DataStream[Any]:
        options: dict[str, Any] = {"name": name or self._unique(kind)}
        if parallelism is not None:
            options["parallelism"] = parallelism
        if on_error is not None:
            options["on_error"] = on_error
        return self.from_batch(reader, **options)
