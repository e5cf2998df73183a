"""Line-oriented file sinks: text, JSON Lines and CSV parts, UTF-8 by default.

Each is what the matching plain-Python reader reads back: `open(part)` line by line, `json.loads` per
line, `csv.reader` / `csv.DictReader` on the file opened with newline="".
"""

from __future__ import annotations

import codecs
import csv
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from procflow.io.sinks.file_sink import FileSink
from procflow.io.sinks.part_file import PartFile


class TextSink(FileSink):
    """One line per record: a str as it is, anything else as `str(record)`, followed by "\\n".

    As Spark's saveAsTextFile and Flink's writeAsText do, a record holding "\\n" becomes several lines.
    """

    extension = "txt"
    format_name = "text"

    def __init__(self, path: str | os.PathLike[str], mode: str = "error", *, encoding: str = "utf-8") -> None:
        super().__init__(path, mode)
        codecs.lookup(encoding)   # an unknown encoding fails here, in the driver, not in every task
        self.encoding = encoding

    def _write(self, part: PartFile, record: Any) -> None:
        line = record if type(record) is str else str(record)
        part.write((line + "\n").encode(self.encoding))


class JsonlSink(FileSink):
    """One JSON document per line (json.dumps, non-ASCII kept as UTF-8). `default=` is json.dumps's:
    a callable that turns what json cannot encode (a numpy number, a datetime) into what it can."""

    extension = "jsonl"
    format_name = "jsonl"

    def __init__(self, path: str | os.PathLike[str], mode: str = "error", *,
                 default: Callable[[Any], Any] | None = None) -> None:
        super().__init__(path, mode)
        self.default = default
        self._encode: Callable[[Any], str] | None = None

    def _start(self, part: PartFile, first: Any) -> None:
        # One encoder, made once: json.dumps builds a new one per call whenever an option is given.
        self._encode = json.JSONEncoder(ensure_ascii=False, default=self.default).encode

    def _write(self, part: PartFile, record: Any) -> None:
        assert self._encode is not None
        part.write((self._encode(record) + "\n").encode())


class _TextOut:
    """What csv.writer writes to: str in, encoded bytes into the part."""

    def __init__(self, part: PartFile, encoding: str) -> None:
        self.part = part
        self.encoding = encoding

    def write(self, text: str) -> int:
        self.part.write(text.encode(self.encoding))
        return len(text)


class CsvSink(FileSink):
    """CSV rows. A dict record is written by its keys, under a header row: `fieldnames=` gives the
    columns and their order, else the first record's keys do (a later record with another key fails,
    naming it). A tuple or list record is one row, under a header only where `fieldnames=` is given.
    `header=False` leaves the header out. Other keywords are the csv module's dialect options
    (`delimiter=`, `quotechar=`, `lineterminator=`, `dialect=`, ...)."""

    extension = "csv"
    format_name = "csv"

    def __init__(self, path: str | os.PathLike[str], mode: str = "error", *,
                 fieldnames: Sequence[str] | None = None, header: bool = True, encoding: str = "utf-8",
                 **fmtparams: Any) -> None:
        super().__init__(path, mode)
        codecs.lookup(encoding)
        csv.writer(_Discard(), **fmtparams)   # a bad dialect option fails here, in the driver
        self.fieldnames = list(fieldnames) if fieldnames is not None else None
        self.header = header
        self.encoding = encoding
        self.fmtparams = fmtparams
        self._row: Callable[[Any], Any] | None = None

    def _start(self, part: PartFile, first: Any) -> None:
        out = _TextOut(part, self.encoding)
        if isinstance(first, Mapping):
            names = self.fieldnames if self.fieldnames is not None else list(first)
            writer = csv.DictWriter(out, names, **self.fmtparams)
            if self.header:
                writer.writeheader()
            self._row = writer.writerow
        else:
            plain = csv.writer(out, **self.fmtparams)
            if self.header and self.fieldnames is not None:
                plain.writerow(self.fieldnames)
            self._row = plain.writerow

    def _write(self, part: PartFile, record: Any) -> None:
        assert self._row is not None
        self._row(record)


class _Discard:
    def write(self, text: str) -> int:
        return len(text)
