"""Line-oriented file sinks: text, JSON Lines and CSV parts, UTF-8 by default.

Each is what the matching plain-Python reader reads back: `open(part)` line by line, `json.loads` per
line, `csv.reader` / `csv.DictReader` on the file opened with newline="".

Why LineSink batches: a sink's cost per record decides whether writing keeps up with a plain
`f.write(line)` loop. Through the generic FileSink path (a call for the format, a call for the part's
write, an encode and a copy per record) write_text took 5x that loop's time per line; here a record
costs one call and a list append, and lines are joined and encoded BATCH_LINES at a time: about 2x the
loop (measured on 500,000 lines; most of it the call per record that any sink costs), and JSON Lines
within 20% of a `json.dumps` + write loop.
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

BATCH_LINES = 4096   # lines joined and encoded at once: the per-call costs vanish, the memory stays small


class LineSink(FileSink):
    """A text format whose records become strings: gathered in `_lines`, written BATCH_LINES at a time.

    The part is made at the first batch's write (a record costs no check for it); records are counted
    per batch too. `line_end` goes after every string (text, JSON Lines); CSV's writer ends its rows
    itself ("").
    """

    line_end = "\n"

    def __init__(self, path: str | os.PathLike[str], mode: str = "error", *, encoding: str = "utf-8") -> None:
        super().__init__(path, mode)
        codecs.lookup(encoding)   # an unknown encoding fails here, in the driver, not in every task
        self.encoding = encoding
        self._lines: list[str] = []

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_lines": []}

    def _flush_lines(self) -> None:
        lines, self._lines = self._lines, []
        part = self._part or self._begin(None)
        end = self.line_end
        part.write((end.join(lines) + end).encode(self.encoding))
        self.records += len(lines)

    def _flush_buffered(self) -> None:
        if self._lines:
            self._flush_lines()


class TextSink(LineSink):
    """One line per record: a str as it is, anything else as `str(record)`, followed by "\\n".

    As Spark's saveAsTextFile and Flink's writeAsText do, a record holding "\\n" becomes several lines.
    """

    extension = "txt"
    format_name = "text"

    def execute(self, record: Any) -> None:
        lines = self._lines
        lines.append(record if type(record) is str else str(record))
        if len(lines) >= BATCH_LINES:
            self._flush_lines()


class JsonlSink(LineSink):
    """One JSON document per line (non-ASCII kept as UTF-8). `default=` is json.dumps's: a callable that
    turns what json cannot encode (a numpy number, a datetime) into what it can."""

    extension = "jsonl"
    format_name = "jsonl"

    def __init__(self, path: str | os.PathLike[str], mode: str = "error", *,
                 default: Callable[[Any], Any] | None = None) -> None:
        super().__init__(path, mode)
        self.default = default
        self._encode: Callable[[Any], str] = _unopened

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_encode": _unopened}

    def open(self) -> None:
        super().open()
        # One encoder, made once: json.dumps builds a new one per call whenever an option is given.
        self._encode = json.JSONEncoder(ensure_ascii=False, default=self.default).encode

    def execute(self, record: Any) -> None:
        lines = self._lines
        lines.append(self._encode(record))   # a record json cannot encode raises here, uncounted
        if len(lines) >= BATCH_LINES:
            self._flush_lines()


def _unopened(record: Any) -> str:
    raise RuntimeError("a JsonlSink encodes records only once its task has opened it")


class CsvSink(LineSink):
    """CSV rows. A dict record is written by its keys, under a header row: `fieldnames=` gives the
    columns and their order, else the first record's keys do (a later record with another key fails,
    naming it). A tuple or list record is one row, under a header only where `fieldnames=` is given.
    `header=False` leaves the header out. Other keywords are the csv module's dialect options
    (`delimiter=`, `quotechar=`, `lineterminator=`, `dialect=`, ...)."""

    extension = "csv"
    format_name = "csv"
    line_end = ""   # the csv writer ends each row with its dialect's lineterminator

    def __init__(self, path: str | os.PathLike[str], mode: str = "error", *,
                 fieldnames: Sequence[str] | None = None, header: bool = True, encoding: str = "utf-8",
                 **fmtparams: Any) -> None:
        super().__init__(path, mode, encoding=encoding)
        csv.writer(_Lines([]), **fmtparams)   # a bad dialect option fails here, in the driver
        self.fieldnames = list(fieldnames) if fieldnames is not None else None
        self.header = header
        self.fmtparams = fmtparams
        self._row: Callable[[Any], Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_row": None}

    def _start(self, part: PartFile, first: Any) -> None:
        out = _Lines(self._lines)
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

    def _flush_lines(self) -> None:
        # In place (the csv writer appends to this very list), and uncounted: a header is no record.
        assert self._part is not None, "the part is made at the first record (its header depends on it)"
        self._part.write("".join(self._lines).encode(self.encoding))
        self._lines.clear()

    def execute(self, record: Any) -> None:
        if self._part is None:
            self._begin(record)
        row = self._row
        assert row is not None
        row(record)
        self.records += 1
        if len(self._lines) >= BATCH_LINES:
            self._flush_lines()


class _Lines:
    """What a csv writer writes to: each row's text appended to a list (the sink's pending lines)."""

    def __init__(self, lines: list[str]) -> None:
        self.write = lines.append
