"""`env.read_jsonl`: one parsed JSON value per line of JSON Lines files, split like text (lines.py).

A bad line fails the job with an InputFormatError naming the file, the line number and the parser's
message; with the reader's `on_error="skip"` or `"dead_letter"` it is set aside instead
(TaskContext.set_aside) and the split reads on. Blank lines are skipped, as most JSONL writers and
readers do. Line numbers are exact also in a split that starts mid-file: the split counts the lines
before it only when an error needs the number (LineReader.line_number), so good files pay nothing.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

from procflow.core.errors import InputFormatError
from procflow.core.splits import BYTES, Split, SplitSource
from procflow.io.lines import LineReader, check_encoding, plan_line_splits, set_aside
from procflow.io.paths import PathSpec, expand_paths, files_repr
from procflow.io.text import check_split_size


class JsonlSource(SplitSource[Any]):
    """Each non-blank line of the files parsed by `loads` (json.loads by default; orjson.loads is a
    faster drop-in: any callable from str to a value that raises ValueError on bad input)."""

    unit = BYTES

    def __init__(self, paths: PathSpec, *, encoding: str = "utf-8", loads: Callable[[str], Any] = json.loads,
                 split_size: int | None = None) -> None:
        what = type(self).__name__
        if not callable(loads):
            raise TypeError(f"{what}: loads must be a callable taking a str, got {loads!r}")
        self.paths = expand_paths(paths, what)
        self.encoding = check_encoding(encoding, what)
        self.loads = loads
        self.split_size = check_split_size(split_size, what)

    def __repr__(self) -> str:
        return files_repr(self, self.paths)

    def plan_splits(self, parallelism: int) -> list[Split]:
        return plan_line_splits(self.paths, parallelism, self.split_size)

    def read_split(self, split: Split) -> Iterator[Any]:
        # Parsed a block at a time with map(), and handed on through chain: the per-line Python loop
        # (try, enumerate, yield) cost as much as json.loads itself on short lines.
        return itertools.chain.from_iterable(self._blocks(LineReader(split.descriptor, self.encoding)))

    def _blocks(self, reader: LineReader) -> Iterator[list[Any]]:
        loads = self.loads
        before = 0     # lines of this split in the blocks already read
        for block in reader:
            try:
                records = list(map(loads, block))
            except ValueError:       # a bad or a blank line somewhere in the block: line by line
                records = self._one_by_one(reader, block, before)
            yield records
            before += len(block)

    def _one_by_one(self, reader: LineReader, block: list[str], before: int) -> list[Any]:
        loads = self.loads
        records = []
        for i, line in enumerate(block):
            try:
                records.append(loads(line))
            except ValueError as exc:
                if line and not line.isspace():
                    error = InputFormatError(reader.range.path, reader.line_number(before + i),
                                             f"invalid JSON: {exc}", line)
                    set_aside(self, line, error)
        return records
