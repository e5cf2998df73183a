"""Line-aligned byte ranges: how text-like files (text, JSONL, one-row-per-line CSV) are cut into splits.

    driver: plan_line_splits(paths) -> [Split(ByteRange(path, start, stop))]   (sizes from stat, no reads)
    task:   LineReader(range) -> blocks of lines, each line read by exactly one split

The rule that makes byte ranges safe for lines: **a line belongs to the split in which it starts**. A
split [start, stop) skips the tail of the line it starts inside (that line began in the split before),
and reads past `stop` to finish its own last line. A line starts at offset 0 and after every b"\\n", so
the rule needs no scan in the driver, and is exact for any split boundary, also one inside a multi-byte
UTF-8 character (b"\\n" never occurs inside one) or between the b"\\r" and b"\\n" of a CRLF ending.

Compressed files (.gz, .bz2, .xz) cannot be entered mid-stream: each is one split. Lines leave without
their ending ("\\n" or "\\r\\n"); a lone "\\r" is data, not an ending.

Reading is by blocks: a block of whole lines is decoded and split in one C call each, which is what
keeps a split reader near the speed of `for line in open(path)` (issue 18 asks for >= 0.7x).

Line numbers cost nothing until they are needed: a split knows only its byte offset; the number of its
first line is counted (one pass over the bytes before it) the first time an error asks for it.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import lzma
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BufferedIOBase
from typing import Any, TextIO

from procflow.core.errors import InputFormatError
from procflow.core.splits import Split

MiB = 1 << 20
BLOCK = 64 * 1024          # bytes read at a time: the lines of a block stay in cache while they are used
SPLITS_PER_INSTANCE = 4    # a few per instance, so that a fast instance can take more (pull)
MIN_SPLIT = 4 * MiB        # below this, a split's fixed costs (an open, a seek, a claim) start to show
MAX_SPLIT = 64 * MiB       # above this, progress moves in big steps and the last split ends the job late

_OPENERS: dict[str, Callable[[str], BufferedIOBase]] = {
    ".gz": lambda p: gzip.open(p, "rb"),
    ".bz2": lambda p: bz2.open(p, "rb"),
    ".xz": lambda p: lzma.open(p, "rb"),
}
_TO_END = sys.maxsize


def compressed(path: str) -> bool:
    """True for a file read through a decompressor (by its suffix), which cannot be split."""
    return os.path.splitext(path)[1].lower() in _OPENERS


def open_binary(path: str) -> BufferedIOBase:
    """The file's bytes, decompressed where its suffix says so."""
    opener = _OPENERS.get(os.path.splitext(path)[1].lower())
    return opener(path) if opener is not None else open(path, "rb")


def open_text(path: str, encoding: str) -> TextIO:
    """The file as text with line endings left as they are (newline=""), decompressed where its suffix
    says so: what the csv module needs to keep a quoted line break exactly."""
    kind = os.path.splitext(path)[1].lower()
    if kind in _OPENERS:
        module: Any = {".gz": gzip, ".bz2": bz2, ".xz": lzma}[kind]
        text: TextIO = module.open(path, "rt", encoding=encoding, newline="")
        return text
    return open(path, encoding=encoding, newline="")


def check_encoding(encoding: str, what: str) -> str:
    """`encoding`, if lines can be found in its bytes by b"\\n" (ASCII-compatible); else a ValueError.
    UTF-16 and UTF-32 cannot: their newline is two or four bytes, and a split could start between them."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(f"{what}: unknown encoding {encoding!r}") from None
    if "\n".encode(encoding) != b"\n" or "A".encode(encoding) != b"A":
        raise ValueError(f"{what}: encoding {encoding!r} is not ASCII-compatible, so its lines cannot be found "
                         "by byte; convert the file to UTF-8 first (e.g. with iconv)")
    return encoding


@dataclass(frozen=True)
class ByteRange:
    """The lines of `path` that start in [start, stop); for a compressed file (whole=True), every line
    (start and stop are then the compressed bytes, for progress)."""

    path: str
    start: int
    stop: int
    whole: bool = False


def split_target(total: int, parallelism: int) -> int:
    """Bytes per split: a few splits per instance, within [MIN_SPLIT, MAX_SPLIT]."""
    share = math.ceil(total / max(parallelism * SPLITS_PER_INSTANCE, 1))
    return min(max(share, MIN_SPLIT), MAX_SPLIT)


def plan_line_splits(paths: list[str], parallelism: int, split_size: int | None = None, *,
                     splittable: bool = True) -> list[Split]:
    """Splits of about `split_size` bytes (default: `split_target`) over `paths`, in path order.

    Each file is cut into near-equal ranges, never mixed with another file. An empty file gives no
    split. `splittable=False` (and every compressed file) gives one split per file.
    """
    sizes = [os.path.getsize(p) for p in paths]
    target = split_size if split_size is not None else split_target(sum(sizes), parallelism)
    splits: list[Split] = []
    for path, size in zip(paths, sizes):
        if size == 0:
            continue
        if not splittable or compressed(path):
            splits.append(Split(len(splits), ByteRange(path, 0, size, whole=True), size))
            continue
        n = max(1, math.ceil(size / target))
        for k in range(n):
            start, stop = size * k // n, size * (k + 1) // n
            splits.append(Split(len(splits), ByteRange(path, start, stop), stop - start))
    return splits


def _owned_chunks(f: BufferedIOBase, base: int, stop: int) -> Iterator[bytes]:
    """Chunks of whole lines from `f`, positioned at offset `base` (a line start), up to and including
    the last line that starts before `stop`. A chunk ends with b"\n", except a last line without one."""
    pending: list[bytes] = []   # the pieces of a line that has not ended yet (joined once: no quadratic
    held = 0                    # copying for a line of many blocks); `held`: their length
    while base < stop:          # `base`: the offset of pending[0], always a line start
        data = f.read(BLOCK)
        if not data:
            if pending:
                yield b"".join(pending)      # the file's last line, without a final newline
            return
        last = stop - 1 - base - held        # the last index in data at which an owned line may start
        if last < len(data):
            end = data.find(b"\n", max(last, 0))
            if end >= 0:
                pending.append(data[:end + 1])
                yield b"".join(pending)      # through the end of the line that crosses `stop`
                return
        else:
            end = data.rfind(b"\n")
            if end >= 0:
                pending.append(data[:end + 1])
                yield b"".join(pending)
                base += held + end + 1
                rest = data[end + 1:]
                pending, held = ([rest] if rest else []), len(rest)
                continue
        pending.append(data)                 # no line ends in this block
        held += len(data)


def _decode_lines(chunk: bytes, encoding: str, errors: str) -> list[str]:
    text = chunk.decode(encoding, errors)
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if text.endswith("\n"):
        text = text[:-1]
    return text.split("\n")


def count_lines_before(path: str, offset: int) -> int:
    """How many b"\\n" the first `offset` bytes of `path` hold: one pass, only when an error asks."""
    count, left = 0, offset
    with open(path, "rb") as f:
        while left > 0:
            data = f.read(min(BLOCK, left))
            if not data:
                break
            count += data.count(b"\n")
            left -= len(data)
    return count


class LineReader:
    """Iterates one ByteRange as blocks (lists) of lines; `line_number(i)` is the 1-based line number in
    the file of the split's i-th line (0-based), counted lazily."""

    def __init__(self, rng: ByteRange, encoding: str = "utf-8", errors: str = "strict") -> None:
        self.range = rng
        self.encoding = encoding
        self.errors = errors
        self._first_offset = 0           # where the split's first line starts, once reading began
        self._first_line: int | None = None

    def __iter__(self) -> Iterator[list[str]]:
        rng = self.range
        with open_binary(rng.path) as f:
            if rng.whole or rng.start == 0:
                base, stop = 0, _TO_END if rng.whole else rng.stop
            else:
                # The line running through rng.start - 1 began before this split: skip its rest.
                f.seek(rng.start - 1)
                base, stop = rng.start - 1 + len(f.readline()), rng.stop
            self._first_offset = base
            offset = base
            for chunk in _owned_chunks(f, base, stop):
                try:
                    lines = _decode_lines(chunk, self.encoding, self.errors)
                except UnicodeDecodeError as exc:
                    raise self._decode_error(exc, offset) from exc
                offset += len(chunk)
                yield lines

    def line_number(self, index: int) -> int:
        """The 1-based line number in the file of this split's `index`-th line."""
        if self._first_line is None:
            self._first_line = 1 + (count_lines_before(self.range.path, self._first_offset)
                                    if self._first_offset else 0)
        return self._first_line + index

    def _decode_error(self, exc: UnicodeDecodeError, chunk_offset: int) -> Exception:
        at = chunk_offset + exc.start
        where = f"byte {at}" if not self.range.whole else f"byte {at} of the decompressed data"
        line = (count_lines_before(self.range.path, at) + 1) if not self.range.whole else None
        return InputFormatError(self.range.path, line, f"cannot decode {where} as {self.encoding} ({exc.reason}); "
                                "pass encoding= for another encoding, or errors='replace'")


def set_aside(function: Any, record: Any, error: Exception) -> None:
    """Report a record `function` cannot read: the task's `on_error` decides (fail: raise `error`;
    skip / dead_letter: count, log, and for dead_letter send it on). Outside a task, raise it."""
    ctx = getattr(function, "ctx", None)
    if ctx is None:
        raise error
    ctx.set_aside(record, error)
