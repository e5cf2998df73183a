"""`env.read_csv`: rows of CSV files, as dicts by the header or as tuples, with the csv module's dialects.

Splitting rule. A quoted field may hold a line break, and nothing at a byte offset says whether it lies
inside quotes, so byte ranges are wrong for such files and no cheap scan can tell. Hence:

- `multiline=True` (the default, always right): each file is one split, read by one instance through
  the csv module with `newline=""`, so quoted line breaks come through exactly. Many files still read
  in parallel, one per instance at a time.
- `multiline=False`: a promise that every row is one line. Plain files then split by line-aligned byte
  ranges like read_text (lines.py), so one big file reads in parallel. A row found to span lines
  breaks the promise and fails with an error naming the file and the line, instead of being misread.

With `header=True` every split of a file knows the file's header: the first split reads it as its first
line; a split that starts mid-file reads the file's first line for it. A row whose field count differs
from the header's is a bad row: an InputFormatError, or set aside with `on_error="skip" | "dead_letter"`.
Blank lines are skipped.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from typing import Any

from procflow.core.errors import InputFormatError
from procflow.core.splits import BYTES, Split, SplitSource
from procflow.io.lines import ByteRange, LineReader, check_encoding, open_text, plan_line_splits, set_aside
from procflow.io.paths import PathSpec, expand_paths, files_repr
from procflow.io.text import check_split_size


class CsvSource(SplitSource[Any]):
    """Each row of the files: a dict by the header (`header=True`) or a tuple of strings.

    `**fmtparams` are the csv module's dialect options (`delimiter=`, `quotechar=`, `dialect=`, ...).
    """

    unit = BYTES

    def __init__(self, paths: PathSpec, *, header: bool = True, multiline: bool = True, encoding: str = "utf-8",
                 split_size: int | None = None, **fmtparams: Any) -> None:
        what = type(self).__name__
        try:
            csv.reader([], **fmtparams)   # a bad option fails here, in the driver
        except (TypeError, csv.Error) as exc:
            raise TypeError(f"{what}: bad csv option(s) {fmtparams!r}: {exc}") from exc
        self.paths = expand_paths(paths, what)
        self.header = bool(header)
        self.multiline = bool(multiline)
        self.encoding = check_encoding(encoding, what)
        self.split_size = check_split_size(split_size, what)
        self.fmtparams = fmtparams
        self._headers: dict[str, list[str] | None] = {}

    def __repr__(self) -> str:
        return files_repr(self, self.paths)

    def plan_splits(self, parallelism: int) -> list[Split]:
        return plan_line_splits(self.paths, parallelism, self.split_size, splittable=not self.multiline)

    def read_split(self, split: Split) -> Iterator[Any]:
        rng: ByteRange = split.descriptor
        line_of: Callable[[int], int]
        if self.multiline:
            rows = self._multiline_rows(rng)
            line_of = int                     # the csv reader counts the whole file's lines itself
        else:
            lines = LineReader(rng, self.encoding)
            rows, line_of = self._line_rows(lines), lines.line_number
        names = None if (rng.whole or rng.start == 0 or not self.header) else self._header_of(rng.path)
        for at, row in rows:
            if not row:
                continue                      # a blank line
            if self.header and names is None:
                names = row                   # this split starts the file: its first row is the header
                continue
            if names is None:
                yield tuple(row)
            elif len(row) == len(names):
                yield dict(zip(names, row))
            else:
                error = InputFormatError(rng.path, line_of(at), f"the row has {len(row)} field(s), the header "
                                         f"{len(names)}", self._joined(row))
                set_aside(self, row, error)

    # -- rows, each with where it is: a line number (multiline) or its index in the split ----------------

    def _multiline_rows(self, rng: ByteRange) -> Iterator[tuple[int, list[str]]]:
        """Every row of a whole file through the csv module, which handles quoted line breaks."""
        with open_text(rng.path, self.encoding) as f:
            reader = csv.reader(f, **self.fmtparams)
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    set_aside(self, "", InputFormatError(rng.path, reader.line_num, f"bad CSV: {exc}"))
                    continue
                yield reader.line_num, row

    def _line_rows(self, lines: LineReader) -> Iterator[tuple[int, list[str]]]:
        """The rows of a line-aligned range, one per line (multiline=False): a block is parsed in one
        call; line by line only where that call fails."""
        before = 0
        for block in lines:
            try:
                rows = list(csv.reader(block, **self.fmtparams))
            except csv.Error:
                yield from self._rows_one_by_one(lines, block, before)
            else:
                if len(rows) != len(block):
                    self._spanning_row(lines, block, before)
                if self._opens_quote(block[-1]):
                    # The block's (or the split's) last line leaves a quote open: its row goes on in
                    # lines that this parse never saw, and would be misread without this check.
                    self._spanning_row(lines, block + [""], before)
                for i, row in enumerate(rows):
                    yield before + i, row
            before += len(block)

    def _spanning_row(self, lines: LineReader, block: list[str], before: int) -> None:
        """A block gave fewer rows than lines: a quoted field runs over a line break. Name its line."""
        reader = csv.reader(block, **self.fmtparams)
        for n, _row in enumerate(reader, 1):
            if reader.line_num != n:    # every row before it was one line, so it started at line n
                break
        raise InputFormatError(
            lines.range.path, lines.line_number(before + n - 1), "a quoted field runs over the end of the line, "
            "but read_csv was told multiline=False (one row per line); read this file with multiline=True",
            block[n - 1])

    def _opens_quote(self, line: str) -> bool:
        """True if `line` ends inside a quoted field: then the csv reader takes the next line into the
        row, so `line` and an empty line give one row, not two."""
        return len(list(csv.reader([line, ""], **self.fmtparams))) < 2

    def _rows_one_by_one(self, lines: LineReader, block: list[str], before: int) -> Iterator[tuple[int, list[str]]]:
        for i, text in enumerate(block):
            try:
                parsed = list(csv.reader([text], **self.fmtparams))
            except csv.Error as exc:
                error = InputFormatError(lines.range.path, lines.line_number(before + i), f"bad CSV: {exc}", text)
                set_aside(self, text, error)
                continue
            yield before + i, parsed[0] if parsed else []

    def _header_of(self, path: str) -> list[str] | None:
        """The header of `path` (its first non-blank row), read once per file by each instance."""
        if path not in self._headers:
            found: list[str] | None = None
            whole = LineReader(ByteRange(path, 0, 0, whole=True), self.encoding)
            for block in whole:
                found = next((row for row in csv.reader(block, **self.fmtparams) if row), None)
                if found is not None:
                    break
            self._headers[path] = found
        return self._headers[path]

    def _joined(self, row: list[str]) -> str:
        delimiter = self.fmtparams.get("delimiter", ",")
        return str(delimiter).join(row)
