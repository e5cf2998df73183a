"""Call inboxes: ring.py's inboxes plus a small trailer of "asleep" flags, so that a side wakes the other
only when it may be asleep.

Layout of one call inbox (a request inbox of a replica, or a response inbox of a caller)::

    0 ...          a ring.py inbox: doorbell word, then one ring per producer (`slots` rings)
    T = ring.inbox_size(slots, capacity)
    T + 0          asleep    u32, written by the consumer only: 1 while it is (about to be) asleep
                             on the doorbell
    T + 64 + 4*s   blocked   u32 per ring s, written by that ring's producer only: 1 while it is (about
                             to be) asleep on the ring's space word, waiting for room

Why: ring.py's writer makes a futex system call on every commit, and its reader one on every drain,
whether or not anybody sleeps. Through ctypes a futex call costs ~2 us here, and a round trip made four
of them, while the other side was almost always awake (it polls, see waiting.py). Now:

    producer (commit)                          consumer (before sleeping on the doorbell)
    store write_pos                            store asleep = 1
    fence()                                    fence(); seen = doorbell
    if asleep: bump doorbell and wake          if no ring has data: futex wait(doorbell, seen)
                                               store asleep = 0

Each side stores, fences, then loads what the other side stores (the "store buffering" pattern), so at
least one of them sees the other: either the producer sees asleep = 1 and wakes (its bump is atomic, in
the kernel, and lands either before `seen` is read, and then the rings show its data, or after, and then
the futex wait returns at once), or the consumer's ring check sees the data and it does not sleep.
Producers that skip the wake do not touch the doorbell at all, so every doorbell change stays atomic.
The space wait is the same pattern with the roles swapped (the producer sleeps on the ring's space word,
flagged by `blocked`; the consumer frees space, fences, and wakes it only when flagged), which replaces
the old size heuristic that could let a producer of large frames sleep until the 0.25 s safety timeout.

`fence()` must be a full memory barrier: x86-64 (which ring.py already assumes: total store order) lets
a load pass an earlier store, which is exactly the reordering this pattern forbids. Any locked
instruction is a full barrier there, and acquiring and releasing a `threading.Lock` executes one (a
compare-and-swap on the lock word: glibc's sem_trywait/sem_post, which POSIX lists among the functions
that synchronize memory, up to CPython 3.12; PyMutex's atomic compare-exchange from 3.13), for ~0.2 us
instead of a ~2 us system call.

The driver's stop frames go through a plain ring.py RingWriter, which always wakes: still correct.
"""

from __future__ import annotations

import ctypes
import struct
import threading
from collections.abc import Callable

from procflow.runtime.communication import futex
from procflow.runtime.communication import ring as ringmod
from procflow.runtime.communication.shm import SharedSegment

_FRAME_HEADER = struct.Struct("<II")    # ring.py's frame header: body length, flags
_ASLEEP = 0
_BLOCKED = 64
# A producer waiting for room re-checks at least this often (as ring.py's writer does); tests raise it.
SAFETY_WAIT = 0.25

_fence_lock = threading.Lock()
_fence_acquire = _fence_lock.acquire
_fence_release = _fence_lock.release


def fence() -> None:
    """A full memory barrier (see the module docstring): one locked instruction on x86-64."""
    _fence_acquire()
    _fence_release()


def call_inbox_size(slots: int, capacity: int) -> int:
    return ringmod.inbox_size(slots, capacity) + _trailer_size(slots)


def _trailer_size(slots: int) -> int:
    return (_BLOCKED + 4 * slots + 63) & ~63


def _trailer(slots: int, capacity: int) -> int:
    return ringmod.inbox_size(slots, capacity)


def asleep_word(segment: SharedSegment, slots: int, capacity: int) -> ctypes.c_uint32:
    """The consumer's `asleep` flag of a call inbox with `slots` rings."""
    return segment.u32(_trailer(slots, capacity) + _ASLEEP)


class CallRingWriter(ringmod.RingWriter):
    """The producer end of one ring of a call inbox with `slots` rings.

    `send()` is a lean path for the one-frame-then-commit pattern of calls and answers: the frame goes
    straight into the ring (same wire format as RingWriter.write); a frame that must wrap, be fragmented
    or wait for room takes the general path. `commit()` wakes the consumer only when it may be asleep,
    and the wait for room flags itself so that the consumer wakes it only then (module docstring).
    """

    def __init__(self, segment: SharedSegment, slot: int, capacity: int, slots: int) -> None:
        super().__init__(segment, slot, capacity)
        trailer = _trailer(slots, capacity)
        self._asleep = segment.u32(trailer + _ASLEEP)
        self._blocked = segment.u32(trailer + _BLOCKED + 4 * slot)
        # Always spin the full budget before sleeping for room: a call ring is full only while its
        # consumer is draining it, which frees room within microseconds.
        self._spin = ringmod.SpinPolicy(short_sleep=float("inf"))

    def send(self, data: bytes) -> None:
        """Write `data` as one frame and commit it."""
        n = len(data)
        size = _FRAME_HEADER.size + ((n + 7) & ~7)
        wpos = self._wpos
        pos = wpos % self._cap
        if n > self.max_body or self._cap - pos < size or self._cap - (wpos - self._rpos) < size:
            self.write([data], n, 0)
        else:
            off = self._data + pos
            buf = self._buf
            _FRAME_HEADER.pack_into(buf, off, n, 0)
            buf[off + _FRAME_HEADER.size:off + _FRAME_HEADER.size + n] = data
            self._wpos = wpos + size
        self.commit()

    def commit(self) -> None:
        if self._wpos != self._committed:
            self._write_word.value = self._committed = self._wpos
            fence()
            if self._asleep.value:
                futex.bump_and_wake(self._doorbell_addr)

    def _sleep_for_room(self, need: int) -> None:
        """RingWriter's wait for room, flagged so the consumer makes the wake-up call only then."""
        cap = self._cap
        blocked = self._blocked
        while True:
            blocked.value = 1
            fence()
            seen = self._space_word.value
            self._rpos = self._read_word.value
            if cap - (self._wpos - self._rpos) >= need:
                break
            futex.wait(self._space_addr, seen, SAFETY_WAIT)
        blocked.value = 0

    def close(self) -> None:
        super().close()
        self._asleep = self._blocked = None  # type: ignore[assignment]  # closed: as RingWriter.close


class CallRingReader(ringmod.RingReader):
    """The consumer end of one ring of a call inbox with `slots` rings: frees room without a system call
    unless the producer flagged that it waits for room (module docstring). `drain()` has a lean path for
    the usual case of calls and answers, exactly one whole frame in the ring."""

    def __init__(self, segment: SharedSegment, slot: int, capacity: int, slots: int) -> None:
        super().__init__(segment, slot, capacity)
        self._blocked = segment.u32(_trailer(slots, capacity) + _BLOCKED + 4 * slot)

    def drain(self, handle: Callable[[int, memoryview], object], budget: int | None = None) -> int:
        wpos = self._write_word.value
        rpos = self._rpos
        if wpos == rpos:
            return 0
        if self._partial is None:
            off = self._data + rpos % self._cap
            length, flags = _FRAME_HEADER.unpack_from(self._view, off)
            if length != ringmod.WRAP and not flags & ringmod.FLAG_MORE and \
                    rpos + _FRAME_HEADER.size + ((length + 7) & ~7) == wpos:
                off += _FRAME_HEADER.size
                handle(flags, self._view[off:off + length])
                self._release(wpos)
                return wpos - rpos
        return super().drain(handle, budget)

    def _release(self, rpos: int) -> None:
        self._rpos = rpos
        self._read_word.value = rpos
        fence()
        if self._blocked.value:
            self._space_word.value = (self._space_word.value + 1) & 0xFFFFFFFF
            futex.wake(self._space_addr)

    def close(self) -> None:
        super().close()
        self._blocked = None  # type: ignore[assignment]  # closed: as RingReader.close
