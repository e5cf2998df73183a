"""Slabs: large numpy arrays cross a shm edge in recycled shared-memory segments, received without a copy.

    producer task (ShmChannelWriter)                    consumer task (ShmInputGate)
    SlabPool.put(raw bytes) ─► a FREE slab: state SENT,  SlabViews.array(name, dtype, shape)
        copy the bytes in, return its name                  map the slab (once), a read-only view on it
    the ring carries a small SLAB frame (codec) ───────►    the view's last reference dies ─► state FREE
    no slab free and no room to make one ─► None: the array takes the ring and is copied at receive

Why (issue 19, "Zero-copy arrays on receive"): a 1 MiB array used to be copied out of the ring into fresh
private memory, and that copy cost more than the whole rest of the transfer (95 page faults per MiB on
memory the allocator had just handed back to the kernel: the sink spent 143 us of 244 per array in
`ndarray.copy`). A view on the ring itself would pin ring space for as long as the user keeps it, and the
ring is a FIFO: one kept view would stop the edge. A slab is released on its own, so a kept view pins
one slab, never the edge, and nobody can see bytes the producer overwrote: a slab is written again only
after every view on it died (numpy's views of views all hold the one memoryview numpy made at
`frombuffer`, which is what the release watches).

Layout of one slab segment (named ``<inbox name>_slab<slot>_<secret>``, so the driver's unlink of the
inbox removes it too, also after the producer was killed; see shm.py)::

    0    state  u32   futex word: FREE 0 | SENT 1 (producer, before the frame is written) | RETIRED 2
                      (producer) | KEPT 3 (consumer: a view outlived the call that received it)
                      the consumer stores FREE when the last view on it dies, and wakes the producer
    64   data   the array's bytes, C order

Memory stays bounded: a pool holds at most `budget` bytes of slabs (twice its ring), or MIN_SLABS slabs
of any size so that two arrays larger than that can still be in flight. A producer that finds them all
SENT waits for the consumer, as it would on a full ring (back-pressure): the consumer frees or marks
every slab it handed out by its next read, since a task reads again only once it has processed the last
read's records. When the consumer KEPT every slab (a sink storing its arrays), waiting would be for
ever: arrays then take the ring as before and are copied at receive.

Slabs live until the job's cleanup: a producer that ends cannot unlink them, since its last frames may
not have been read yet.
"""

from __future__ import annotations

import mmap
import secrets
import time
import weakref
from typing import Any

import numpy as np

from procflow.core.errors import ShmCapacityError
from procflow.runtime.communication import futex
from procflow.runtime.communication.shm import SharedSegment

# Arrays smaller than this take the ring and are copied at receive: a copy that small costs less than a
# slab's bookkeeping (a weak reference, a state store), and stays in cache.
SLAB_MIN = 64 << 10
MIN_SLABS = 2
HEADER = 64
FREE, SENT, RETIRED, KEPT = 0, 1, 2, 3
# A producer waiting for a slab re-checks at least this often (as ring.py's _SAFETY_WAIT).
_SAFETY_WAIT = 0.25
# Slab sizes are rounded up to this, so arrays of nearly equal sizes share slabs.
_GRAIN = 64 << 10
# A consumer unmaps retired slabs once it has this many mapped.
_MAX_MAPPED = 32


class _Slab:
    __slots__ = ("name", "segment", "size", "state", "sent_at")

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.segment = SharedSegment(name, HEADER + size, create=True)
        self.size = size
        self.state = self.segment.u32(0)
        self.sent_at = 0   # the pool's send count when last sent: the oldest is likely freed first


class SlabPool:
    """The producer's slabs for one edge."""

    def __init__(self, inbox: str, slot: int, budget: int) -> None:
        self._prefix = f"{inbox}_slab{slot}_"
        self._budget = budget
        self._slabs: list[_Slab] = []
        self.sent = 0       # arrays that went by slab (for tests and metrics)
        self.declined = 0   # arrays that did not find one and took the ring
        self.blocked_seconds = 0.0

    def put(self, raw: memoryview, before_wait: Any) -> str | None:
        """Copy `raw` (C-contiguous bytes) into a free slab and return the slab's name, or None when
        the consumer keeps every slab (the caller then sends the array through the ring). Waits while
        every slab is in flight; `before_wait()` first publishes what the consumer has not seen yet."""
        need = raw.nbytes
        while True:
            slab = self._free_fit(need) or self._grow(need)
            if slab is not None:
                break
            in_flight = [s for s in self._slabs if s.state.value == SENT]
            if not in_flight:
                self.declined += 1
                return None
            before_wait()
            oldest = min(in_flight, key=lambda s: s.sent_at)
            started = time.perf_counter()
            futex.wait(oldest.segment.address, SENT, _SAFETY_WAIT)
            self.blocked_seconds += time.perf_counter() - started
        slab.state.value = SENT
        slab.segment.buf[HEADER:HEADER + need] = raw
        self.sent += 1
        slab.sent_at = self.sent
        return slab.name

    def _free_fit(self, need: int) -> _Slab | None:
        """The smallest free slab that holds `need` bytes."""
        slab = None
        for s in self._slabs:
            if s.state.value == FREE and s.size >= need and (slab is None or s.size < slab.size):
                slab = s
        return slab

    def _grow(self, need: int) -> _Slab | None:
        size = -(-need // _GRAIN) * _GRAIN
        if not self._room_for(size):
            # Free slabs that are too small make way for one that fits.
            for s in sorted((s for s in self._slabs if s.state.value == FREE), key=lambda s: s.size):
                self._retire(s)
                if self._room_for(size):
                    break
            else:
                return None
        try:
            slab = _Slab(self._prefix + secrets.token_hex(4), size)
        except ShmCapacityError:
            # /dev/shm is full: stay at what we have; the ring still works.
            self._budget = sum(s.size for s in self._slabs)
            return None
        self._slabs.append(slab)
        return slab

    def _room_for(self, size: int) -> bool:
        return len(self._slabs) < MIN_SLABS or sum(s.size for s in self._slabs) + size <= self._budget

    def _retire(self, slab: _Slab) -> None:
        slab.state.value = RETIRED
        self._slabs.remove(slab)
        slab.segment.close()
        slab.segment.unlink()

    def close(self) -> None:
        """Unmap the slabs. Their names stay: frames naming them may still be in the ring, and the
        driver unlinks them with the inbox."""
        for s in self._slabs:
            s.segment.close()
        self._slabs = []


class SlabViews:
    """The consumer's side: read-only arrays on slabs, each slab released when its last view dies."""

    def __init__(self) -> None:
        self._mapped: dict[str, tuple[SharedSegment, Any, memoryview]] = {}
        # id of a weak reference to the memoryview under a handed-out array -> (the reference, the
        # slab's state word, its address). By id: a weak reference hashes as its referent, and a
        # read-only memoryview hashes its bytes (14 ms for 64 MiB).
        self._live: dict[int, tuple[weakref.ref, Any, int]] = {}
        self._fresh: list[weakref.ref] = []   # handed out since the last `settle()`
        self.handed_bytes = 0                  # bytes of every array handed out, ever

    def array(self, name: str, dtype: np.dtype, shape: list) -> np.ndarray:
        mapped = self._mapped.get(name)
        if mapped is None:
            mapped = self._map(name)
        segment, state, data = mapped
        count = 1
        for n in shape:
            count *= n
        flat = np.frombuffer(data, dtype=dtype, count=count)
        self.handed_bytes += flat.nbytes
        # numpy wraps `data` in a memoryview of its own, which every view of this array (and views of
        # those) keeps alive: its death is the last view's.
        ref = weakref.ref(flat.base, self._release)
        self._live[id(ref)] = (ref, state, segment.address)
        self._fresh.append(ref)
        return flat.reshape(shape)

    def _release(self, ref: weakref.ref) -> None:
        entry = self._live.pop(id(ref), None)
        if entry is not None:
            entry[1].value = FREE
            futex.wake(entry[2])

    def settle(self) -> None:
        """The calls that received the arrays handed out so far have returned (the task reads again):
        mark the slabs of those still alive KEPT, so that their producer stops waiting for them."""
        for ref in self._fresh:
            entry = self._live.get(id(ref))
            if entry is None or entry[0] is not ref:
                continue
            entry[1].value = KEPT
            futex.wake(entry[2])
            if ref() is None:   # died while we marked it (its release ran first, in another thread)
                entry[1].value = FREE
        self._fresh = []

    def _map(self, name: str) -> tuple[SharedSegment, Any, memoryview]:
        if len(self._mapped) >= _MAX_MAPPED:
            self._unmap_retired()
        segment = SharedSegment(name)
        mapped = (segment, segment.u32(0), memoryview(segment.buf)[HEADER:].toreadonly())
        self._mapped[name] = mapped
        return mapped

    def _unmap_retired(self) -> None:
        for name, (segment, state, data) in list(self._mapped.items()):
            if state.value == RETIRED:
                del self._mapped[name]
                data.release()
                segment.close()

    @property
    def live(self) -> int:
        """Arrays handed out whose slab is not yet released."""
        return len(self._live)

    def close(self) -> None:
        """Unmap what no array still uses (a mapping under a live view stays until the view dies)."""
        for segment, _, data in self._mapped.values():
            try:
                data.release()
            except BufferError:   # an array still views it
                pass
            segment.close()
        self._mapped.clear()


def is_slab_view(arr: Any) -> bool:
    """Whether `arr` is (a view of) an array received on a slab: what the runtime copies before it keeps
    a record beyond the call (a reduce's state, collect's records, the dead-letter output)."""
    if type(arr) is not np.ndarray or arr.flags.writeable:
        return False
    base = arr.base
    while type(base) is np.ndarray:
        base = base.base
    return type(base) is memoryview and base.readonly and type(base.obj) is mmap.mmap


def owned(record: Any) -> Any:
    """`record`, or a writable private copy of it if it is a view on a slab."""
    return record.copy() if is_slab_view(record) else record
