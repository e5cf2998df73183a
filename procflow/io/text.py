"""`env.read_text`: the lines of text files, read in parallel by line-aligned byte ranges (lines.py)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from procflow.core.splits import BYTES, Split, SplitSource
from procflow.io.lines import LineReader, check_encoding, plan_line_splits
from procflow.io.paths import PathSpec, expand_paths, files_repr


def check_split_size(split_size: int | None, what: str) -> int | None:
    if split_size is not None and (isinstance(split_size, bool) or not isinstance(split_size, int)
                                   or split_size < 1):
        raise ValueError(f"{what}: split_size must be a positive number of bytes (or None), got {split_size!r}")
    return split_size


class TextSource(SplitSource[str]):
    """Each line of the files as a `str`, without its ending ("\\n" or "\\r\\n").

    Within a split, lines come in file order; splits are read in parallel, so lines of different splits
    interleave. `split_size`: bytes per split (default: a few splits per instance, 4 to 64 MiB).
    """

    unit = BYTES

    def __init__(self, paths: PathSpec, *, encoding: str = "utf-8", errors: str = "strict",
                 split_size: int | None = None) -> None:
        what = type(self).__name__
        self.paths = expand_paths(paths, what)
        self.encoding = check_encoding(encoding, what)
        self.errors = errors
        self.split_size = check_split_size(split_size, what)

    def __repr__(self) -> str:
        return files_repr(self, self.paths)

    def plan_splits(self, parallelism: int) -> list[Split]:
        return plan_line_splits(self.paths, parallelism, self.split_size)

    def read_split(self, split: Split) -> Iterator[str]:
        # chain, not `yield from` in a generator: lines then leave through C, and the generator frame
        # runs once per block of lines instead of once per line (half the cost of a plain
        # `for line in open(path)` loop went to that frame).
        return itertools.chain.from_iterable(LineReader(split.descriptor, self.encoding, self.errors))
