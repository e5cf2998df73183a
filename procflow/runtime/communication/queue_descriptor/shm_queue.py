"""The `shm` channel kind: one shared-memory inbox per consuming task, one ring per incoming edge, and
beside each ring a pool of slabs in which large numpy arrays travel, received without a copy (slabs.py)."""

from __future__ import annotations

import pickle
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import msgpack
import numpy as np

from procflow.runtime.communication import codec
from procflow.runtime.communication import ring as ringmod
from procflow.runtime.communication import slabs as slabmod
from procflow.runtime.communication.packet import RecordBatch
from procflow.runtime.communication.queue_descriptor.base import BatchDecoder, ChannelWriter, InputGate
from procflow.runtime.communication.shm import SharedSegment

# Segments attached by this process, by name: a producer with several edges into one inbox maps it once.
_attached: dict[str, SharedSegment] = {}


def _attach(name: str) -> SharedSegment:
    seg = _attached.get(name)
    if seg is None:
        seg = _attached[name] = SharedSegment(name)
    return seg


def detach_all() -> None:
    """Unmap every segment this process attached (end of a task process)."""
    for seg in _attached.values():
        seg.close()
    _attached.clear()


@dataclass(frozen=True)
class ShmEdge:
    """Descriptor of one edge: which inbox, which ring. Pickles to a name and two integers."""

    inbox: str
    slot: int
    capacity: int
    batch_bytes: int = 32 * 1024
    kind: str = "shm"

    def open_writer(self) -> ShmChannelWriter:
        seg = _attach(self.inbox)
        # Slabs for large arrays: up to twice the ring in bytes (slabs.py), made on first use.
        pool = slabmod.SlabPool(self.inbox, self.slot, 2 * self.capacity)
        return ShmChannelWriter(ringmod.RingWriter(seg, self.slot, self.capacity), self.batch_bytes, pool)


@dataclass(frozen=True)
class ShmInbox:
    """Descriptor of a task's inbox. `input_indices[slot]` is the logical input each ring feeds."""

    name: str
    input_indices: tuple[int, ...]
    capacity: int
    batch_bytes: int = 32 * 1024
    kind: str = field(default="shm")

    def create(self) -> SharedSegment:
        """Allocate the segment (driver only). The returned owner handle must be unlinked at cleanup."""
        return SharedSegment(self.name, ringmod.inbox_size(len(self.input_indices), self.capacity),
                             create=True)

    def edge(self, slot: int) -> ShmEdge:
        return ShmEdge(self.name, slot, self.capacity, self.batch_bytes)

    def open_gate(self) -> ShmInputGate:
        return ShmInputGate(_attach(self.name), self.input_indices, self.capacity)


class ShmChannelWriter(ChannelWriter):
    """Two batching paths, flushed in arrival order:

    - `send_object` keeps Python objects and encodes a whole batch with one msgpack call at flush
      (about half the cost of encoding records one by one); the batch length adapts to record size;
    - `send_record` appends records someone already encoded (fan-out: encode once, copy to each ring).

    A numpy array of at least SLAB_MIN bytes goes in a slab when its pool has one to spare
    (slabs.py): the ring carries its name, and the consumer views the slab instead of copying.

    A control message goes out blocking (`send_control`) or without waiting (`try_send_control`, for a
    router sending a barrier to several rings, issue 20): the latter stages the flush and the message as
    frames (`_staged`) and writes them as room appears, so it never waits for the consumer.
    """

    _MAX_PENDING = 1024
    sends_anything = True

    def __init__(self, ring: ringmod.RingWriter, batch_bytes: int,
                 slabs: slabmod.SlabPool | None = None) -> None:
        self._ring = ring
        self.slabs = slabs
        self._batch = bytearray()
        self._batch_keyed = False
        self._batch_bytes = batch_bytes
        self._pending: list = []
        self._pending_keyed = False
        self._pending_limit = 64
        self._sent = 0                  # objects already packed; `objects_sent` adds the pending ones
        self._packer = msgpack.Packer(default=codec._default, strict_types=True, use_bin_type=True)
        # Frames of a control message that `try_send_control` could not yet write, and the message.
        self._staged: deque[tuple[memoryview | bytes, int]] | None = None
        self._staged_signal: Any = None

    def send_object(self, record: Any, key: Any, keyed: bool) -> None:
        # The hot path of every source and map: keep it to an append and a length check.
        if keyed is not self._pending_keyed or type(record) is np.ndarray:
            self._send_unusual(record, key, keyed)
            return
        pending = self._pending
        if keyed:
            pending.append(key)
        pending.append(record)
        if len(pending) >= self._pending_limit:
            self._write_pending()

    def send_many(self, records: list) -> None:
        # A source emitting a chunk: extend the pending batch a frame's worth at a time.
        if self._pending_keyed or np.ndarray in map(type, records):
            ChannelWriter.send_many(self, records)
            return
        pos, total = 0, len(records)
        while pos < total:
            room = max(1, self._pending_limit - len(self._pending))
            self._pending += records[pos:pos + room]
            pos += room
            if len(self._pending) >= self._pending_limit:
                self._write_pending()

    def _send_unusual(self, record: Any, key: Any, keyed: bool) -> None:
        """A switch between keyed and unkeyed records, or an array (raw bytes, never batched)."""
        if self._pending:
            self._write_pending()
        if type(record) is np.ndarray:
            self._sent += 1
            kind, body = codec.encode_body(record)
            self.send_single(*codec.frame(kind, body, codec.encode_key(key) if keyed else None))
            return
        self._pending_keyed = keyed
        self.send_object(record, key, keyed)

    @property
    def objects_sent(self) -> int:  # type: ignore[override]
        pending = len(self._pending)
        return self._sent + (pending // 2 if self._pending_keyed else pending)

    def progress(self) -> tuple[int, int, int, float]:
        """(records sent, taken by the consumer, finished by it, seconds it spent on those); sent counts
        pending records too."""
        taken, done, busy_s = self._ring.consumer_progress()
        return self.objects_sent, taken, done, busy_s

    def _write_pending(self) -> None:
        pending, keyed = self._pending, self._pending_keyed
        self._pending = []
        self._sent += len(pending) // 2 if keyed else len(pending)
        tuples = codec.all_tuples(pending[1::2] if keyed else pending)
        try:
            packed = codec.pack(self._packer, codec.tuples_as_lists(pending, keyed) if tuples else pending)
        except (TypeError, ValueError, OverflowError):
            # Something in the batch is not plain data: send record by record (pickle fallback).
            step = 2 if keyed else 1
            for i in range(0, len(pending), step):
                key, record = (pending[i], pending[i + 1]) if keyed else (None, pending[i])
                ChannelWriter.send_object(self, record, key, keyed)
            return
        if self._batch:
            self._write_batch()
        count = len(pending)
        # Aim for about `batch_bytes` per frame whatever the record size.
        per_record = max(len(packed) // max(count, 1), 1)
        self._pending_limit = max(1, min(self._MAX_PENDING, self._batch_bytes // per_record))
        flags = ringmod.FLAG_LIST | (ringmod.FLAG_KEYED if keyed else 0) | (ringmod.FLAG_TUPLES if tuples else 0)
        self._ring.write([packed], len(packed), flags)
        if self._ring.pending_bytes >= self._batch_bytes:
            self._ring.commit()

    def send_record(self, packed: bytes, key_packed: bytes | None) -> None:
        if self._pending:
            self._write_pending()
        keyed = key_packed is not None
        batch = self._batch
        if keyed is not self._batch_keyed:
            if batch:
                self._write_batch()
            self._batch_keyed = keyed
        if key_packed is not None:
            batch += key_packed
        batch += packed
        if len(batch) >= self._batch_bytes:
            self._write_batch()

    def _write_batch(self) -> None:
        flags = ringmod.FLAG_BATCH | (ringmod.FLAG_KEYED if self._batch_keyed else 0)
        self._ring.write([self._batch], len(self._batch), flags)
        self._batch.clear()
        if self._ring.pending_bytes >= self._batch_bytes:
            self._ring.commit()

    def send_single(self, parts: list, nbytes: int) -> None:
        if self._pending:
            self._write_pending()
        if self._batch:
            self._write_batch()
        if nbytes >= slabmod.SLAB_MIN and self.slabs is not None:
            raw = codec.array_bytes_of(parts)
            name = None
            if raw is not None and raw.nbytes >= slabmod.SLAB_MIN:
                name = self.slabs.put(raw, self._ring.commit)
            if name is not None:
                # A few bytes in the ring stand for the slab: publish now, or the frame would wait for
                # batch_bytes of others while the pool runs out of free slabs.
                parts, nbytes = codec.slab_frame(parts, name)
                self._ring.write(parts, nbytes, 0)
                self._ring.commit()
                return
        self._ring.write(parts, nbytes, 0)
        if self._ring.pending_bytes >= self._batch_bytes:
            self._ring.commit()

    def send_control(self, signal: Any) -> None:
        if self._staged is not None:
            self._write_staged()
        if self._pending:
            self._write_pending()
        if self._batch:
            self._write_batch()
        data = pickle.dumps(signal)
        self._ring.write([data], len(data), ringmod.FLAG_CONTROL)
        self._ring.commit()

    def try_send_control(self, signal: Any) -> bool:
        """`send_control` without waiting: what it flushes and the message go into the ring as far as
        there is room now, the rest is kept, and False says the ring is full. Call again with the same
        `signal` (after `wait_for_room`) until True, and send nothing else on this channel meanwhile:
        that keeps the message behind every record before it, and ahead of every one after it."""
        if self._staged is None:
            self._stage(signal)
        elif signal != self._staged_signal:
            raise RuntimeError(f"try_send_control({signal!r}) while {self._staged_signal!r} is still going "
                               "out on this channel: call it again with that one until it returns True")
        staged, ring = self._staged, self._ring
        assert staged is not None
        while staged:
            body, flags = staged[0]
            if not ring.try_write([body], len(body), flags):
                ring.commit()   # what did fit goes out now: the consumer makes room by draining it
                return False
            staged.popleft()
        ring.commit()
        self._staged = self._staged_signal = None
        return True

    def wait_for_room(self, timeout: float | None) -> None:
        """Wait (as a full ring's write does, and counted as blocked) until the next frame that
        `try_send_control` kept fits, or `timeout` seconds pass."""
        if self._staged:
            self._ring.wait_for_room(len(self._staged[0][0]), timeout)

    def _stage(self, signal: Any) -> None:
        """Run the usual flush against a `_FrameStage` instead of the ring, then add the message: the
        batching paths (keyed switches, the pickle fallback, adaptive batch length) stay in one place."""
        stage = _FrameStage(self._ring.max_body)
        ring = self._ring
        self._ring = cast(ringmod.RingWriter, stage)   # write / commit / pending_bytes are all a flush uses
        try:
            self.flush()
        finally:
            self._ring = ring
        data = pickle.dumps(signal)
        stage.write([data], len(data), ringmod.FLAG_CONTROL)
        self._staged, self._staged_signal = stage.frames, signal

    def _write_staged(self) -> None:
        """Write what `try_send_control` kept, waiting for room as `write` does (a caller gave up on
        trying: flush, send_control)."""
        staged = self._staged
        assert staged is not None
        while staged:
            body, flags = staged.popleft()
            self._ring.write([body], len(body), flags)
        self._ring.commit()
        self._staged = self._staged_signal = None

    def flush(self) -> None:
        if self._staged is not None:
            self._write_staged()
        if self._pending:
            self._write_pending()
        if self._batch:
            self._write_batch()
        self._ring.commit()

    @property
    def has_pending(self) -> bool:
        return bool(self._pending) or bool(self._batch) or self._ring.pending_bytes > 0 or bool(self._staged)

    @property
    def blocked_seconds(self) -> float:  # type: ignore[override]
        return self._ring.blocked_seconds + (self.slabs.blocked_seconds if self.slabs is not None else 0.0)

    def close(self) -> None:
        self._ring.close()
        if self.slabs is not None:
            self.slabs.close()


class _FrameStage:
    """Stands in for a writer's ring while `try_send_control` stages its flush: keeps each frame the
    flush writes, split into FLAG_MORE fragments where it exceeds a ring frame (as RingWriter.write
    splits them), so that each fits the ring on its own when room appears. Copies the bodies: the
    writer reuses its batch buffer at once."""

    pending_bytes = 0   # nothing here waits to be published: the batching paths' commit checks pass

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self.frames: deque[tuple[memoryview | bytes, int]] = deque()   # (body, flags)

    def write(self, parts: list, nbytes: int, flags: int = 0) -> None:
        body = b"".join(parts)
        if len(body) <= self._max_body:
            self.frames.append((body, flags))
            return
        chunk = self._max_body & ~7
        view = memoryview(body)
        for start in range(0, len(body), chunk):
            last = start + chunk >= len(body)
            self.frames.append((view[start:start + chunk], flags if last else flags | ringmod.FLAG_MORE))

    def commit(self) -> None:
        """Nothing to publish: the frames reach the ring through `try_send_control`."""


# Ring bytes decoded per input channel per read(): bounds the Python objects a consumer holds at once
# (a full 4 MiB ring of tiny records would otherwise become a million records in one list).
READ_BUDGET = 128 << 10


class ShmInputGate(InputGate):
    def __init__(self, segment: SharedSegment, input_indices: tuple[int, ...], capacity: int) -> None:
        self._doorbell = ringmod.Doorbell(segment)
        self._readers = [ringmod.RingReader(segment, slot, capacity) for slot in range(len(input_indices))]
        self.slabs = slabmod.SlabViews()
        self._decoders = [BatchDecoder(slot, idx, self.slabs) for slot, idx in enumerate(input_indices)]
        self._out: list = []
        self._capacity = capacity * max(len(input_indices), 1)
        self._spin = ringmod.SpinPolicy()
        self._handed_at = time.perf_counter()   # when the last read returned: the task has worked since
        self._slab_bytes = 0                     # bytes of slab arrays this read has handed out
        # Input slots held back by checkpoint alignment (BaseTask): not read until released. A control
        # frame ends a drain (`_handle`), so nothing behind a barrier is decoded before the task holds it.
        self._held: set[int] = set()
        # poll_period > 0 (InputGate): a consumer that needs no prompt wake-ups (collect batches results
        # for 100 ms anyway) polls its rings this often instead of sleeping on the doorbell, which every
        # producer commit rings: behind two 1 ms-flushing maps, 2000 wake-ups a second on 2 cores.

    def fill(self) -> float:
        """Bytes waiting in all of this task's rings, as a fraction of their total capacity."""
        return sum(r.queued_bytes() for r in self._readers) / self._capacity

    def read(self, timeout: float | None) -> list:
        # The task asks again only once it has processed what the last read returned.
        busy_s = time.perf_counter() - self._handed_at
        for reader in self._readers:
            reader.publish_done(busy_s)
        self.slabs.settle()
        deadline = None if timeout is None else time.monotonic() + timeout
        self._slab_bytes = 0
        spins = 0
        out = self._out
        while True:
            seen = self._doorbell.seen()
            progressed = False
            for reader, decoder in zip(self._readers, self._decoders):
                if reader.has_data() and decoder.slot not in self._held:
                    before = len(out)
                    progressed |= reader.drain(partial(self._handle, decoder), READ_BUDGET) > 0
                    taken = sum(len(b) for b in out[before:] if type(b) is RecordBatch)
                    if taken:   # for a balancing producer (balance.py)
                        reader.publish_taken(taken)
            if out:
                self._out = []
                self._handed_at = time.perf_counter()
                return out
            if progressed:
                # Bytes consumed without a record (a wrap marker, a fragment): the producer already rang
                # for what follows, so sleeping on `seen` now could miss it until the timeout.
                continue
            if deadline is None:
                if self.poll_period:
                    time.sleep(self.poll_period)
                    continue
                if spins < self._spin.budget:
                    spins += 1
                    continue
                started = time.perf_counter()
                self._doorbell.wait(seen, 1.0)
                self._spin.slept(time.perf_counter() - started)
                continue
            wait = deadline - time.monotonic()
            if wait <= 0:
                return []
            self._doorbell.wait(seen, wait)

    def _handle(self, decoder: BatchDecoder, flags: int, body: memoryview) -> bool:
        """Decode one frame into `_out`; True once this read holds READ_BUDGET bytes of slab arrays.

        Why stop there: a slab is freed only when the task is done with its array, at the earliest
        once it asks for more. A read that took every array in flight (their frames are small) would
        leave the producer nothing to fill until the whole batch is processed; one at a time, it fills
        the others meanwhile, as it did the ring space freed behind each copied array."""
        if not flags & (ringmod.FLAG_LIST | ringmod.FLAG_BATCH | ringmod.FLAG_CONTROL):
            handed = self.slabs.handed_bytes
            decoder.single(body, self._out)
            self._slab_bytes += self.slabs.handed_bytes - handed
            return self._slab_bytes >= READ_BUDGET
        if flags & ringmod.FLAG_LIST:
            decoder.array(body, bool(flags & ringmod.FLAG_KEYED), self._out, bool(flags & ringmod.FLAG_TUPLES))
        elif flags & ringmod.FLAG_BATCH:
            decoder.batch(body, bool(flags & ringmod.FLAG_KEYED), self._out)
        else:
            decoder.control(pickle.loads(body), self._out)
            return True   # what follows a barrier must wait until the task has seen it (hold)
        return False

    def hold(self, slot: int) -> None:
        """Read nothing more from input `slot` until `release_all()` (checkpoint alignment)."""
        self._held.add(slot)

    def release_all(self) -> None:
        self._held.clear()

    def close(self) -> None:
        for reader in self._readers:
            reader.close()
        self._readers = []
        self.slabs.close()
