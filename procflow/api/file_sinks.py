"""`stream.write_text(dir)` and its siblings: file sinks whose parts appear only when the job succeeds.

A mixin of DataStream, kept apart so the stream's own module stays about building graphs. Each method
adds one sink operator (procflow.io.sinks) and returns the same stream, as `sink()` does:

    dir/part-00000-of-00004.jsonl ...   one part per sink instance that received records
    dir/_SUCCESS                        JSON manifest: files with their record counts and bytes, totals

Until the job has finished, the parts sit in `dir/_staging-<job id>/`; the driver renames them into `dir`
and writes `_SUCCESS` last. A job that fails, is stopped or killed leaves nothing in `dir`; a driver that
was SIGKILLed leaves its staging folder, which the next job writing into `dir` removes. Folders made
here are 0700 and files 0600 (output is private until the user shares it); no symlink is followed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from procflow.io.sinks import CsvSink, JsonlSink, NpySink, ParquetSink, TextSink
from procflow.io.sinks.parquet import ROW_GROUP_SIZE

PathLike = str | os.PathLike[str]
_S = TypeVar("_S", bound="FileSinks")   # the stream itself: write_* returns it, as sink() does


class FileSinks:
    """The write_* methods of DataStream.

    Common options: `mode="error"` (the default: `dir` must be empty or new, checked in the driver
    before any process starts) or `mode="overwrite"` (an earlier run's parts and _SUCCESS are replaced,
    only once this job succeeds; other files in `dir` are left alone); `parallelism=` (default: the
    stream's own, one part per upstream instance) and `name=`.
    """

    # What DataStream provides (it comes first in the MRO, so these are never called).
    @property
    def parallelism(self) -> int:
        raise NotImplementedError

    def sink(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def _write(self: _S, sink: type, path: PathLike, mode: str, parallelism: int | None, name: str | None,
               options: dict[str, Any]) -> _S:
        ops: dict[str, Any] = {"parallelism": self.parallelism if parallelism is None else parallelism}
        if name is not None:
            ops["name"] = name
        self.sink(sink, path, mode, **options, **ops)
        return self

    def write_text(self: _S, path: PathLike, *, mode: str = "error", parallelism: int | None = None,
                   name: str | None = None, encoding: str = "utf-8") -> _S:
        """One line per record (`str(record)` for what is not a str), in `part-*.txt` files."""
        return self._write(TextSink, path, mode, parallelism, name, {"encoding": encoding})

    def write_jsonl(self: _S, path: PathLike, *, mode: str = "error", parallelism: int | None = None,
                    name: str | None = None, default: Callable[[Any], Any] | None = None) -> _S:
        """One JSON document per line, in `part-*.jsonl` files; `default=` as json.dumps's."""
        return self._write(JsonlSink, path, mode, parallelism, name, {"default": default})

    def write_csv(self: _S, path: PathLike, *, mode: str = "error", parallelism: int | None = None,
                  name: str | None = None, fieldnames: Sequence[str] | None = None, header: bool = True,
                  encoding: str = "utf-8", **fmtparams: Any) -> _S:
        """CSV rows in `part-*.csv` files: dicts under a header row (by `fieldnames=` or the first
        record's keys), tuples and lists as they are; other keywords are csv's dialect options."""
        return self._write(CsvSink, path, mode, parallelism, name,
                           {"fieldnames": fieldnames, "header": header, "encoding": encoding, **fmtparams})

    def write_npy(self: _S, path: PathLike, *, mode: str = "error", parallelism: int | None = None,
                  name: str | None = None, blocks: bool = False) -> _S:
        """Numpy records stacked into `part-*.npy` files: each record a row, or with `blocks=True` a
        block of rows. Every record of a part has the first one's dtype and row shape."""
        return self._write(NpySink, path, mode, parallelism, name, {"blocks": blocks})

    def write_parquet(self: _S, path: PathLike, *, mode: str = "error",
                      parallelism: int | None = None, name: str | None = None, schema: Any = None,
                      row_group_size: int = ROW_GROUP_SIZE, compression: str = "snappy") -> _S:
        """Dicts (rows) or pyarrow RecordBatches / Tables into `part-*.parquet` files. Needs the optional
        extra `procflow[arrow]` (pyarrow): without it, an ImportError that says so, before any process."""
        return self._write(ParquetSink, path, mode, parallelism, name,
                           {"schema": schema, "row_group_size": row_group_size, "compression": compression})
