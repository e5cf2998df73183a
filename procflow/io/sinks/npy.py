"""NpySink: numpy records into `.npy` parts that `np.load` (and `read_npy`, memory-mapped) read back.

    part = magic, version 1.0, header (padded to RESERVED bytes), then the rows' raw bytes, C order

A .npy header states the array's shape, and the number of rows is known only at close(). So the header
is written first for the largest row count there could be, which reserves enough bytes for any real
count, and rewritten in place at close() with the real one, padded with spaces to the same length
(the format allows any padding before the header's final newline). The rows stream to the file as they
come: a part never has to fit in memory.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import numpy as np

from procflow.io.sinks.file_sink import FileSink
from procflow.io.sinks.part_file import PartFile

MAGIC = b"\x93NUMPY\x01\x00"   # format version 1.0: a 2-byte header length
ALIGN = 64                      # numpy aligns the data to 64 bytes after the header
MAX_ROWS = 2**63 - 1            # the reservation: no real count prints longer


def npy_header(descr: Any, shape: tuple[int, ...], total: int | None = None) -> bytes:
    """The .npy preamble for a C-order array of `descr` and `shape`, padded to `total` bytes (default:
    the next multiple of ALIGN)."""
    text = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("latin1")
    room = len(MAGIC) + 2 + len(text) + 1    # + the final newline
    size = total if total is not None else -(-room // ALIGN) * ALIGN
    if size < room:
        raise ValueError(f"a .npy header for shape {shape} needs {room} bytes, {size} were reserved")
    body = text + b" " * (size - room) + b"\n"
    return MAGIC + struct.pack("<H", len(body)) + body


class NpySink(FileSink):
    """Each record is one row: an array (or a number) of the same dtype and shape as the first record's;
    the part holds them stacked, shape (rows, *record shape). With `blocks=True` each record is a block
    of rows instead (an array whose first axis counts rows, as `read_npy(rows_per_record=k)` gives them),
    appended along that axis. Object arrays cannot be written (a .npy of objects needs pickle)."""

    extension = "npy"
    format_name = "npy"

    def __init__(self, path: str | os.PathLike[str], mode: str = "error", *, blocks: bool = False) -> None:
        super().__init__(path, mode)
        self.blocks = blocks
        self._dtype: np.dtype[Any] | None = None
        self._row_shape: tuple[int, ...] = ()
        self._rows = 0
        self._reserved = 0

    def _start(self, part: PartFile, first: Any) -> None:
        array = np.asarray(first)
        if array.dtype.hasobject:
            raise TypeError(f"{self!r}: records of dtype {array.dtype} hold Python objects, which a .npy "
                            "file can store only pickled; convert them to a numeric, bool, str or bytes "
                            "dtype (or write_jsonl / write_parquet instead)")
        if self.blocks and array.ndim == 0:
            raise ValueError(f"{self!r}: blocks=True takes arrays of rows, got a 0-d record; leave blocks "
                             "out to write each record as one row")
        self._dtype = array.dtype
        self._row_shape = array.shape[1:] if self.blocks else array.shape
        header = npy_header(np.lib.format.dtype_to_descr(array.dtype), (MAX_ROWS, *self._row_shape))
        self._reserved = len(header)
        part.write(header)

    def _write(self, part: PartFile, record: Any) -> None:
        array = np.asarray(record)
        shape = array.shape[1:] if self.blocks else array.shape
        if array.dtype != self._dtype or shape != self._row_shape:
            what = "blocks of rows" if self.blocks else "rows"
            raise ValueError(f"{self!r}: a record of dtype {array.dtype} and shape {array.shape} cannot join "
                             f"{what} of dtype {self._dtype} and row shape {self._row_shape} (from this "
                             "instance's first record); one .npy part holds one dtype and row shape")
        # As bytes (a flat uint8 view): memoryview knows no format for some dtypes (str, datetime64)
        part.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        self._rows += array.shape[0] if self.blocks else 1

    def _finish(self, part: PartFile) -> None:
        assert self._dtype is not None
        descr = np.lib.format.dtype_to_descr(self._dtype)
        part.pwrite_at_start(npy_header(descr, (self._rows, *self._row_shape), self._reserved))
