"""Named shared-memory segments under /dev/shm, without the multiprocessing resource tracker.

`multiprocessing.shared_memory` registers every attach with a resource tracker that unlinks segments it
thinks were leaked and warns about the rest, which double-unlinks segments that procflow's driver owns.
We manage the lifecycle ourselves instead: the driver creates (mode 0600) and unlinks; every other process
only attaches and closes.

A created segment is committed at once (`posix_fallocate`): tmpfs hands out pages on first touch, and a
page it cannot back kills the toucher with SIGBUS, mid-job and without a hint (issue 22 item 9: a 64 MiB
Docker /dev/shm). Committed, a shortage is an ENOSPC here, at prepare, raised as ShmCapacityError.

A task may make segments of its own beside one of the driver's, named after it (``<name>_<suffix>``: an
edge's slabs, slabs.py): unlinking the driver's segment removes them too, so a task killed before it
could clean up leaves nothing behind.

Names are ``procflow_<driver pid>_<driver token>_<job id>_<role>_<secret>``. The first two parts are the
driver's owner key, whose lock (see shm_owner.py) lets `sweep_orphans()` remove the segments of a driver
that was killed with SIGKILL, and only those: a segment whose owner is dead belongs to nobody.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import secrets
from collections.abc import Callable

from procflow.core.errors import ShmCapacityError
from procflow.runtime.communication.shm_owner import PREFIX, SHM_DIR, driver_key, is_segment, sweep_orphans

__all__ = ["PREFIX", "SHM_DIR", "SharedSegment", "list_segments", "segment_name", "sweep_orphans"]


def segment_name(job_id: str, role: str) -> str:
    """A fresh segment name of this driver; the secret part makes it unguessable to other users."""
    return f"{driver_key()}_{job_id}_{role}_{secrets.token_hex(6)}"


class SharedSegment:
    """A mapped segment. Pickles to its name; the receiving process attaches lazily on first use."""

    def __init__(self, name: str, size: int = 0, *, create: bool = False) -> None:
        self.name = name
        self._owner = create
        path = os.path.join(SHM_DIR, name)
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
                _commit(fd, path, size)
            else:
                size = os.fstat(fd).st_size
            self.size = size
            self._mmap: mmap.mmap | None = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._anchor: ctypes.c_char | None = ctypes.c_char.from_buffer(self._mmap)
        self.address = ctypes.addressof(self._anchor)
        self._views: list = [self._anchor]

    @property
    def buf(self) -> mmap.mmap:
        if self._mmap is None:
            raise ValueError(f"shared segment {self.name} is closed")
        return self._mmap

    def u64(self, offset: int) -> ctypes.c_uint64:
        """A ctypes word over the segment: one aligned store, so readers never see a torn value."""
        word = ctypes.c_uint64.from_buffer(self.buf, offset)
        self._views.append(word)
        return word

    def u32(self, offset: int) -> ctypes.c_uint32:
        word = ctypes.c_uint32.from_buffer(self.buf, offset)
        self._views.append(word)
        return word

    def close(self) -> None:
        """Unmap this process's view. Idempotent; the segment itself lives until `unlink()`."""
        if self._mmap is None:
            return
        self._views.clear()
        self._anchor = None
        try:
            self._mmap.close()
        except BufferError:
            # A memoryview into the ring is still alive somewhere (a decoded zero-copy slice).
            # Leave the mapping to the garbage collector rather than crash the shutdown path.
            pass
        self._mmap = None

    def unlink(self) -> None:
        """Remove the name, and those of segments named after it. Only the creating process calls
        this, once."""
        derived = self.name + "_"
        try:
            names = [n for n in os.listdir(SHM_DIR) if n.startswith(derived)]
        except FileNotFoundError:
            names = []
        for name in (self.name, *names):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
            except FileNotFoundError:
                pass

    def __reduce__(self) -> tuple[Callable[[str], SharedSegment], tuple[str]]:
        return (_attach, (self.name,))


def _attach(name: str) -> SharedSegment:
    return SharedSegment(name)


def _commit(fd: int, path: str, size: int) -> None:
    """Back every page of a new segment now, so that running short is an error here, not a SIGBUS in
    whichever process touches the page first. Filesystems without fallocate keep the sparse file."""
    allocate = getattr(os, "posix_fallocate", None)   # absent on macOS
    if allocate is None or size == 0:
        return
    try:
        allocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return
        os.unlink(path)
        if exc.errno == errno.ENOSPC:
            raise ShmCapacityError(
                f"no room in {SHM_DIR} for a {size / 2**20:.1f} MiB shared-memory segment "
                f"({os.path.basename(path)}): {SHM_DIR} is full. Give it more room (docker run "
                "--shm-size=1g), or use smaller rings (config ring_bytes)") from exc
        raise


def list_segments(job_id: str | None = None) -> list[str]:
    """procflow segments in /dev/shm (of any driver; not the drivers' lock files), optionally one job's."""
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return []
    return [n for n in names if is_segment(n) and (job_id is None or f"_{job_id}_" in n)]
