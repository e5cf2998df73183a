"""ShmBudget: the /dev/shm a job will reserve, checked against what is free before anything starts.

    Dispatcher.prepare()
      ├─ ShmBudget(job segment, input rings per consuming task, service segments, ring_bytes)
      ├─ check()   statvfs(/dev/shm) free < needed  ->  ShmCapacityError: how much is needed, how much is
      │            free, and how to get it (a bigger /dev/shm, a ring_bytes that fits, queue='mp')
      └─ segments are then created committed (shm.py), which also catches another program filling
         /dev/shm between this check and the creation

Why (issue 22 item 9): on Docker's default 64 MiB /dev/shm, a 9-task pipeline with 4 MiB rings reserved
113 MiB, and tasks died of SIGBUS mid-job when they first touched a page tmpfs could not back.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

from procflow.core.config import MIN_RING_BYTES
from procflow.core.errors import ShmCapacityError
from procflow.runtime.communication import ring as ringmod
from procflow.runtime.communication.shm import SHM_DIR

MIB = float(1 << 20)


def committed(size: int) -> int:
    """What a segment of `size` bytes takes from tmpfs: whole pages."""
    page = mmap.PAGESIZE
    return (size + page - 1) // page * page


def shm_space(path: str = SHM_DIR) -> tuple[int, int] | None:
    """(bytes free to this user, bytes in all) of the filesystem under `path`; None where there is none."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


@dataclass(frozen=True)
class ShmBudget:
    """The segments one job creates. `ring_slots`: the number of input rings of each consuming task
    (empty for queue='mp'); every ring has the capacity `ring_bytes` asks for."""

    job_bytes: int
    ring_slots: tuple[int, ...]
    service_bytes: tuple[int, ...]
    ring_bytes: int

    def total(self, ring_bytes: int | None = None) -> int:
        """Bytes the job commits in /dev/shm, with this (or another) ring size."""
        capacity = ringmod.ring_capacity(self.ring_bytes if ring_bytes is None else ring_bytes)
        rings = sum(committed(ringmod.inbox_size(slots, capacity)) for slots in self.ring_slots)
        return committed(self.job_bytes) + rings + sum(committed(b) for b in self.service_bytes)

    def check(self, job_id: str, space: tuple[int, int] | None = None) -> None:
        """Raise ShmCapacityError when /dev/shm has less room free than the job needs."""
        space = shm_space() if space is None else space
        if space is None:
            return
        free, size = space
        need = self.total()
        if need <= free:
            return
        n_rings = sum(self.ring_slots)
        parts = []
        if n_rings:
            parts.append(f"{n_rings} ring(s) of {ringmod.ring_capacity(self.ring_bytes) / MIB:.1f} MiB "
                         f"(config ring_bytes={self.ring_bytes})")
        if self.service_bytes:
            parts.append(f"{sum(map(committed, self.service_bytes)) / MIB:.1f} MiB of service call rings")
        parts.append(f"{committed(self.job_bytes) / 1024:.0f} KiB of job counters")
        raise ShmCapacityError(
            f"job {job_id} needs {need / MIB:.1f} MiB of shared memory in {SHM_DIR} ({', '.join(parts)}), "
            f"but only {free / MIB:.1f} MiB of its {size / MIB:.1f} MiB is free; nothing was started. "
            f"Give {SHM_DIR} more room (Docker: docker run --shm-size={_suggest_size(need)}; Kubernetes: an "
            f"emptyDir volume with medium: Memory mounted at {SHM_DIR}){self._smaller_rings(free)}, or "
            f"remove what else fills it (ls -la {SHM_DIR})")

    def _smaller_rings(self, free: int) -> str:
        """The advice to shrink rings, with the largest power-of-two ring_bytes that fits, if any does."""
        if not self.ring_slots:
            return ""
        size = 1 << (self.ring_bytes.bit_length() - 1)
        if size == self.ring_bytes:
            size >>= 1
        while size >= MIN_RING_BYTES:
            if self.total(size) <= free:
                return (f", or use smaller rings (config ring_bytes={size} needs {self.total(size) / MIB:.1f} "
                        "MiB; smaller rings mean more, smaller batches)")
            size >>= 1
        return ", or use queue='mp' (multiprocessing queues need no /dev/shm rings)"


def _suggest_size(need: int) -> str:
    """A --shm-size with headroom for the job (twice its need, at least 256m) in Docker's notation."""
    mib = max(256, 1 << int(2 * need / MIB).bit_length())
    return f"{mib // 1024}g" if mib >= 1024 else f"{mib}m"
