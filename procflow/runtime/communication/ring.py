"""Single-producer, single-consumer byte rings in shared memory, grouped into one inbox per consumer.

Layout of one inbox segment (one per consuming task; one ring per incoming edge)::

    0      doorbell   u32 futex word; every producer bumps it after publishing, the consumer sleeps on it
    64     ring 0:    +0 write_pos u64 (producer only)   +64 read_pos u64 (consumer only)
                      +128 space  u32 futex word; the consumer bumps it after freeing space
                      +136 taken  u64 records the consumer has taken out (consumer only; see balance.py)
                      +144 done   u64 records the consumer has finished processing (consumer only)
                      +152 busy   u64 nanoseconds the consumer spent on them (consumer only)
                      +192 data   `capacity` bytes of frames
    ...    ring 1, ring 2, ...

Positions count bytes since creation and never wrap, so `write_pos - read_pos` is the fill level. Each
side owns exactly one position, so the data path takes no lock and a killed peer cannot leave one held.
Publishing order is data, then position, then futex bump: on x86-64 (total store order) a reader that sees
a position also sees the bytes before it.

A frame is ``u32 length | u32 flags | body`` padded to 8 bytes. A frame never straddles the end of the
ring: the producer writes a WRAP marker and starts again at offset 0. A body larger than half the ring
travels as consecutive MORE fragments that the consumer joins, so any size is delivered.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from procflow.runtime.communication import futex
from procflow.runtime.communication.shm import SharedSegment

INBOX_HEADER = 64
RING_HEADER = 192
_WRITE_POS, _READ_POS, _SPACE, _TAKEN, _DONE, _BUSY, _DATA = 0, 64, 128, 136, 144, 152, 192

_FRAME = struct.Struct("<II")
WRAP = 0xFFFFFFFF
FLAG_MORE = 1      # more fragments of this body follow
FLAG_BATCH = 2     # body is a batch of msgpack records
FLAG_KEYED = 4     # batch alternates key, record
FLAG_CONTROL = 8   # body is a pickled control message (StopSignal)
FLAG_LIST = 16     # body is one msgpack array of records (alternating key, record when KEYED)
FLAG_TUPLES = 32   # with LIST: every record was a tuple and travels as an array (rebuilt on receipt)

# A producer facing a full ring re-checks at least this often, so a lost wake-up (which the futex
# protocol rules out) could cost latency but never a hang.
_SAFETY_WAIT = 0.25
# Most checks of the other side's position before sleeping on a futex (about 20-50 microseconds).
SPIN_CHECKS = 100
# A sleep shorter than this (wake-up latency included, tens of microseconds on a VM) means the other
# side answers quickly: spinning would likely have caught it.
SHORT_SLEEP = 200e-6


class SpinPolicy:
    """How many times to re-check before sleeping, learned from how long recent waits lasted.

    Spinning pays when the other side answers within microseconds (a ping-pong, a consumer draining a
    full ring): it saves two scheduler round trips. It costs when the wait is long and the machine has
    more busy processes than cores: then every spin is CPU taken from the process we are waiting for
    (the 1 ms CPU-scaling bench lost 25% of its throughput to a collector spinning 2000 times a second).
    So the budget doubles after a short sleep and halves after a long one, like an adaptive mutex.
    """

    __slots__ = ("budget", "short_sleep")

    def __init__(self, budget: int = SPIN_CHECKS, short_sleep: float = SHORT_SLEEP) -> None:
        self.budget = budget
        self.short_sleep = short_sleep

    def slept(self, seconds: float) -> None:
        if seconds < self.short_sleep:
            self.budget = min(SPIN_CHECKS, self.budget * 2 + 4)
        else:
            self.budget >>= 1


def _align8(n: int) -> int:
    return (n + 7) & ~7


def ring_capacity(payload_bytes: int) -> int:
    """A ring for `payload_bytes` of records, with room on top for their frame headers.

    Records are often a power of two in size (a 1 MiB array), and so is the configured ring size: four
    1 MiB frames then missed a 4 MiB ring by their few hundred bytes of headers, the fourth wrapped,
    and the ring held three arrays. With 1/64 more (64 KiB of 4 MiB) it holds four; 1 MiB arrays moved
    3000 -> 4160 records/s here going from three in flight to four (and 5130 with five).
    """
    return _align8(payload_bytes + payload_bytes // 64)


def inbox_size(slots: int, capacity: int) -> int:
    return INBOX_HEADER + slots * (RING_HEADER + capacity)


_U64 = struct.Struct("<Q")


def ring_backlog(segment: SharedSegment, slot: int, capacity: int) -> tuple[int, int]:
    """(bytes published but not consumed, records taken out but not yet finished) of one ring, read
    from outside both ends: the driver's stall watch asks whether a consumer has work it is not doing.
    Plain loads of words their owners store whole; a value one store old only delays the verdict."""
    base = INBOX_HEADER + slot * (RING_HEADER + capacity)
    buf = segment.buf
    read = _U64.unpack_from(buf, base + _READ_POS)[0]
    written = _U64.unpack_from(buf, base + _WRITE_POS)[0]
    done = _U64.unpack_from(buf, base + _DONE)[0]
    taken = _U64.unpack_from(buf, base + _TAKEN)[0]
    return max(written - read, 0), max(taken - done, 0)


class RingWriter:
    """The producer end of one ring. Frames become visible to the consumer only on `commit()`."""

    def __init__(self, segment: SharedSegment, slot: int, capacity: int) -> None:
        base = INBOX_HEADER + slot * (RING_HEADER + capacity)
        self._segment = segment
        self._buf = segment.buf
        self._cap = capacity
        self._data = base + _DATA
        self._write_word = segment.u64(base + _WRITE_POS)
        self._read_word = segment.u64(base + _READ_POS)
        self._space_word = segment.u32(base + _SPACE)
        self._space_addr = segment.address + base + _SPACE
        self._taken_word = segment.u64(base + _TAKEN)
        self._done_word = segment.u64(base + _DONE)
        self._busy_word = segment.u64(base + _BUSY)
        self._doorbell_addr = segment.address
        self._wpos = self._committed = self._write_word.value
        self._rpos = self._read_word.value
        self.max_body = capacity // 2 - _FRAME.size
        self.blocked_seconds = 0.0
        # Blocked on a full ring means the consumer is draining it, and frees space every cap/8 bytes:
        # a wait is one such chunk, so judge sleeps against the time to copy it, not a fixed 200 us.
        self._spin = SpinPolicy(short_sleep=max(SHORT_SLEEP, capacity / 8 / 1e9 * 4))

    # -- writing ---------------------------------------------------------------------------------

    def write(self, parts: list, nbytes: int, flags: int = 0) -> None:
        """Append one frame whose body is the concatenation of `parts` (any buffers)."""
        if nbytes > self.max_body:
            self._write_fragmented(parts, nbytes, flags)
            return
        size = _FRAME.size + _align8(nbytes)
        pos = self._wpos % self._cap
        tail = self._cap - pos
        if tail < size:
            self._reserve(tail + size)
            _FRAME.pack_into(self._buf, self._data + pos, WRAP, 0)
            self._wpos += tail
            pos = 0
        else:
            self._reserve(size)
        buf = self._buf
        off = self._data + pos
        _FRAME.pack_into(buf, off, nbytes, flags)
        off += _FRAME.size
        for part in parts:
            n = len(part) if type(part) is bytes or type(part) is bytearray else memoryview(part).nbytes
            buf[off:off + n] = part
            off += n
        self._wpos += size

    def _write_fragmented(self, parts: list, nbytes: int, flags: int) -> None:
        chunk = self.max_body & ~7
        pending: list = []
        pending_len = 0
        for part in parts:
            view = memoryview(part).cast("B")
            start = 0
            while start < len(view):
                take = min(chunk - pending_len, len(view) - start)
                pending.append(view[start:start + take])
                pending_len += take
                start += take
                nbytes -= take
                if pending_len == chunk and nbytes > 0:
                    self.write(pending, pending_len, flags | FLAG_MORE)
                    pending, pending_len = [], 0
        self.write(pending, pending_len, flags)

    def _reserve(self, need: int) -> None:
        cap = self._cap
        if cap - (self._wpos - self._rpos) >= need:
            return
        self._rpos = self._read_word.value
        if cap - (self._wpos - self._rpos) >= need:
            return
        # Full: publish what we have so the consumer can drain it, then sleep until space is freed.
        self.commit()
        started = time.perf_counter()
        # A consumer that is already draining frees space within microseconds: a short spin then saves
        # two scheduler round trips per wait, which otherwise dominate the cost of large records.
        for _ in range(self._spin.budget):
            if cap - (self._wpos - self._read_word.value) >= need:
                self._rpos = self._read_word.value
                self.blocked_seconds += time.perf_counter() - started
                return
        sleep_started = time.perf_counter()
        self._sleep_for_room(need)
        now = time.perf_counter()
        self._spin.slept(now - sleep_started)
        self.blocked_seconds += now - started

    def _sleep_for_room(self, need: int) -> None:
        """Sleep on the space futex until `need` bytes are free (the consumer bumps it as it frees)."""
        cap = self._cap
        while True:
            seen = self._space_word.value
            self._rpos = self._read_word.value
            if cap - (self._wpos - self._rpos) >= need:
                return
            futex.wait(self._space_addr, seen, _SAFETY_WAIT)

    # -- without waiting: a control message bound for several rings (router.py) -------------------
    # A router sending a checkpoint barrier to every output must not wait behind one full ring while
    # the others could take theirs (issue 20): it writes where there is room and waits only for the
    # rest, rotating among them. These calls are that path; `write` stays the one the records take.

    def frame_need(self, nbytes: int) -> int:
        """Ring bytes that one frame with an `nbytes` body (at most `max_body`) takes if appended now,
        its wrap marker included: it only grows with `nbytes`, and stays fixed while nothing is written."""
        size = _FRAME.size + _align8(nbytes)
        tail = self._cap - self._wpos % self._cap
        return tail + size if tail < size else size

    def has_room(self, need: int) -> bool:
        """Whether `need` bytes are free now (the consumer's position is re-read if they seem not)."""
        if self._cap - (self._wpos - self._rpos) >= need:
            return True
        self._rpos = self._read_word.value
        return self._cap - (self._wpos - self._rpos) >= need

    def try_write(self, parts: list, nbytes: int, flags: int = 0) -> bool:
        """Append one frame (body at most `max_body`) if the ring has room for it now, as `write` would;
        False, having written nothing, if it has not."""
        if nbytes > self.max_body:
            raise ValueError(f"try_write takes one frame of at most {self.max_body} bytes, not {nbytes}: "
                             "split a larger body into FLAG_MORE fragments first")
        if not self.has_room(self.frame_need(nbytes)):
            return False
        self.write(parts, nbytes, flags)
        return True

    def wait_for_room(self, nbytes: int, timeout: float | None) -> bool:
        """Wait as a full `write` does (publish, spin, then sleep on the space futex) until a frame with
        an `nbytes` body fits, or `timeout` seconds pass; True if it fits. The wait counts as blocked."""
        need = self.frame_need(nbytes)
        if self.has_room(need):
            return True
        self.commit()   # the consumer can only free room by draining what we wrote
        started = time.perf_counter()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for _ in range(self._spin.budget):
                if self.has_room(need):
                    return True
            sleep_started = time.perf_counter()
            while True:
                seen = self._space_word.value
                if self.has_room(need):
                    # Only a wait that ended in room says how fast this consumer answers.
                    self._spin.slept(time.perf_counter() - sleep_started)
                    return True
                wait = _SAFETY_WAIT if deadline is None else min(_SAFETY_WAIT, deadline - time.monotonic())
                if wait <= 0:
                    return False
                futex.wait(self._space_addr, seen, wait)
        finally:
            self.blocked_seconds += time.perf_counter() - started

    def commit(self) -> None:
        """Publish every frame written so far and ring the consumer's doorbell."""
        if self._wpos != self._committed:
            self._write_word.value = self._wpos
            self._committed = self._wpos
            futex.bump_and_wake(self._doorbell_addr)

    @property
    def pending_bytes(self) -> int:
        return self._wpos - self._committed

    def consumer_progress(self) -> tuple[int, int, float]:
        """(records the consumer has taken out, records it has finished, seconds it spent on them), as
        it last published. Done is read first: both only grow and done never passes taken, so the pair
        is never inverted; busy is written before done, so it is never older than the done read."""
        done = self._done_word.value
        return self._taken_word.value, done, self._busy_word.value * 1e-9

    def close(self) -> None:
        self.commit()
        # Dropped, not Optional: the hot path reads these words unchecked, and a closed ring is not used.
        self._buf = None  # type: ignore[assignment]  # closed: the mmap can close once no view exports it
        self._write_word = self._read_word = self._space_word = None  # type: ignore[assignment]  # closed
        self._taken_word = self._done_word = self._busy_word = None  # type: ignore[assignment]  # closed


class RingReader:
    """The consumer end of one ring: yields (flags, body view) for each complete frame."""

    def __init__(self, segment: SharedSegment, slot: int, capacity: int) -> None:
        base = INBOX_HEADER + slot * (RING_HEADER + capacity)
        self._cap = capacity
        self._data = base + _DATA
        self._view = memoryview(segment.buf)
        self._write_word = segment.u64(base + _WRITE_POS)
        self._read_word = segment.u64(base + _READ_POS)
        self._space_word = segment.u32(base + _SPACE)
        self._space_addr = segment.address + base + _SPACE
        self._taken_word = segment.u64(base + _TAKEN)
        self._done_word = segment.u64(base + _DONE)
        self._busy_word = segment.u64(base + _BUSY)
        self._taken = self._done = self._taken_word.value
        self._busy_ns = self._busy_word.value
        self._rpos = self._read_word.value
        self._partial: bytearray | None = None
        self._partial_flags = 0

    def has_data(self) -> bool:
        return self._write_word.value != self._rpos

    def queued_bytes(self) -> int:
        """Bytes published but not yet consumed: two loads, cheap enough to sample once per batch."""
        return self._write_word.value - self._read_word.value

    def drain(self, handle: Callable[[int, memoryview], object], budget: int | None = None) -> int:
        """Call `handle(flags, body)` for the complete frames now in the ring, then free the space. A
        true result from `handle` stops the drain after that frame (it received enough: slabs.py).

        `body` is a view into shared memory, valid only during the call: handlers copy what they keep.
        `budget`: stop once about this many ring bytes were consumed, so that a consumer behind a full ring
        of tiny records does not decode a whole ring into Python objects at once (issue 5 soak: that made
        every middle stage's private memory grow by tens of MB).

        Returns the number of ring bytes consumed. That can be non-zero with no frame handled (a wrap
        marker, a fragment of a large body): the caller must then drain again rather than sleep, since
        the producer has already rung the doorbell for those bytes.
        """
        wpos = self._write_word.value
        start = rpos = self._rpos
        if wpos == rpos:
            return 0
        limit = wpos if budget is None else min(wpos, rpos + budget)
        cap, data, view = self._cap, self._data, self._view
        while rpos < wpos:
            pos = rpos % cap
            length, flags = _FRAME.unpack_from(view, data + pos)
            if length == WRAP:
                rpos += cap - pos
                continue
            body_start = data + pos + _FRAME.size
            body = view[body_start:body_start + length]
            rpos += _FRAME.size + _align8(length)
            enough: object = False
            if flags & FLAG_MORE:
                if self._partial is None:
                    self._partial = bytearray()
                self._partial += body
            elif self._partial is not None:
                self._partial += body
                whole, self._partial = self._partial, None
                enough = handle(flags, memoryview(whole))
            else:
                enough = handle(flags, body)
            # Free space as we go so a producer blocked on a huge message can continue.
            if rpos - self._rpos >= cap // 8:
                self._release(rpos)
            if rpos >= limit or enough:
                break
        self._release(rpos)
        return rpos - start

    def _release(self, rpos: int) -> None:
        self._rpos = rpos
        self._read_word.value = rpos
        self._space_word.value = (self._space_word.value + 1) & 0xFFFFFFFF
        futex.wake(self._space_addr)

    def publish_taken(self, records: int) -> None:
        """Tell the producer `records` more records were taken out: a balancing producer refills the
        rings of the consumers that take sooner. One aligned store; only this side writes the word."""
        self._taken += records
        self._taken_word.value = self._taken

    def publish_done(self, busy_s: float) -> None:
        """Everything taken so far is finished (the task asks for more only when it is), after `busy_s`
        seconds of work on it. Busy time, not the clock, lets the producer measure how fast this
        consumer works: a window of wall time also counts the time it sat starved, and a batch finished
        just inside or just outside it (batches take tens of milliseconds) put rates off by 5-30x."""
        if self._done != self._taken:
            self._busy_ns += int(busy_s * 1e9)
            self._busy_word.value = self._busy_ns
            self._done = self._done_word.value = self._taken

    def close(self) -> None:
        self._view.release()
        # As RingWriter.close: ctypes words over the segment would keep its mmap from closing (BufferError).
        self._write_word = self._read_word = self._space_word = None  # type: ignore[assignment]  # closed
        self._taken_word = self._done_word = self._busy_word = None  # type: ignore[assignment]  # closed


class Doorbell:
    """The consumer's side of the inbox header: sleep until any producer publishes."""

    def __init__(self, segment: SharedSegment) -> None:
        self._word = segment.u32(0)
        self._addr = segment.address

    def seen(self) -> int:
        return self._word.value

    def wait(self, seen: int, timeout: float | None) -> None:
        futex.wait(self._addr, seen, timeout)

    def ring(self) -> None:
        futex.bump_and_wake(self._addr)
