"""PartFile: one sink instance's part, written through a raw fd with a buffer of our own.

Why not `open()`'s file object: a task that fails never reaches close(), and under the inline backend it
runs in the driver, where a file object collected unclosed raises ResourceWarning (an error under the
test suite's filterwarnings, and noise for users). Here a finalizer closes the fd quietly instead, and
the driver removes the half-written part with the rest of the staging folder.

The buffer holds bytes objects, never views: a record may be a read-only view on ring memory that is
valid only during the call (issue 19's zero-copy arrays), so what we keep is copied first.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

BUFFER_BYTES = 1 << 20   # flush at 1 MiB: large enough that the write calls cost nothing per record


def close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class PartFile:
    """A write-only, buffered file on an fd it owns; file-like enough for csv and pyarrow."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._position = 0
        self._finalizer = weakref.finalize(self, close_quietly, fd)

    def write(self, data: Any) -> int:
        view = memoryview(data)
        n = view.nbytes
        if n >= BUFFER_BYTES:    # a large array: straight to the file, no second copy in the buffer
            self.flush()
            self._write_all(view.cast("B") if view.ndim != 1 or view.format != "B" else view)
        else:
            self._chunks.append(bytes(view))
            self._buffered += n
            if self._buffered >= BUFFER_BYTES:
                self.flush()
        self._position += n
        return n

    def _write_all(self, view: memoryview) -> None:
        while view.nbytes:
            written = os.write(self.fd, view)
            view = view[written:]

    def flush(self) -> None:
        if self._chunks:
            data = b"".join(self._chunks)
            self._chunks.clear()
            self._buffered = 0
            self._write_all(memoryview(data))

    def tell(self) -> int:
        return self._position

    def pwrite_at_start(self, data: bytes) -> None:
        """Rewrite the first bytes of the file (a header whose size was reserved), after a flush."""
        self.flush()
        os.pwrite(self.fd, data, 0)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Flush, make the bytes durable (the commit renames this file: it must not be empty after a
        machine crash), and close. Idempotent."""
        if self._finalizer.alive:
            self.flush()
            os.fsync(self.fd)
            self._finalizer()

    # pyarrow's PythonFile asks for these
    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False
