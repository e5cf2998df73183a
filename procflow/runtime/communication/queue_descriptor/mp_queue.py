"""The `mp` channel kind: one multiprocessing queue per consuming task, batches tagged by input slot.

Kept for comparison and for platforms without futexes. A queue cannot be rebuilt from a name, so the
descriptor carries the queue object itself; it pickles only while a child process is being started, which
is exactly when descriptors travel.
"""

from __future__ import annotations

import queue as queue_mod
import time
from typing import Any

from procflow.runtime.communication.queue_descriptor.base import BatchDecoder, ChannelWriter, InputGate

_RECORD, _SINGLE, _CONTROL = 0, 1, 2
_READ_LIMIT = 4096
# A queue item also ends at this many bytes of records. The queue's bound counts items (maxsize), so
# items of 512 records of 16 KiB (8 MiB each) let a fast source park up to half a gigabyte in front
# of a slow sink (the memory bench: +65 MiB and growing); 64 items of 128 KiB hold at most 8 MiB.
ITEM_BYTES = 128 << 10

# A `multiprocess` queue (and the context that makes one): that package ships no type information.
MpQueue = Any


class MpEdge:
    kind = "mp"

    def __init__(self, q: MpQueue, slot: int, batch_records: int, inbox: str) -> None:
        self.queue, self.slot, self.batch_records = q, slot, batch_records
        # The consuming inbox's name: with the slot it names this channel in routing info (OutputSpec
        # queue_ids), which must tell edges into different consumers apart.
        self.inbox = inbox

    def open_writer(self) -> MpChannelWriter:
        return MpChannelWriter(self.queue, self.slot, self.batch_records)


class MpInbox:
    kind = "mp"

    def __init__(self, name: str, input_indices: tuple[int, ...], context: Any, batch_records: int = 512,
                 maxsize: int = 64) -> None:
        self.name = name
        self.input_indices = input_indices
        self.batch_records = batch_records
        self.maxsize = maxsize
        self.queue = context.Queue(maxsize=maxsize)

    def create(self) -> _QueueOwner:
        return _QueueOwner(self.queue)

    def edge(self, slot: int) -> MpEdge:
        return MpEdge(self.queue, slot, self.batch_records, self.name)

    def open_gate(self) -> MpInputGate:
        return MpInputGate(self.queue, self.input_indices, self.maxsize)


class _QueueOwner:
    def __init__(self, q: MpQueue) -> None:
        self._queue = q

    def close(self) -> None:
        self._queue.close()
        self._queue.cancel_join_thread()

    def unlink(self) -> None:
        pass


class MpChannelWriter(ChannelWriter):
    def __init__(self, q: MpQueue, slot: int, batch_records: int) -> None:
        self._queue = q
        self._slot = slot
        self._batch: list = []
        self._batch_bytes = 0
        self._limit = batch_records
        self.blocked_seconds = 0.0

    def _put(self, item: tuple[int, list[Any]]) -> None:
        try:
            self._queue.put_nowait(item)
        except queue_mod.Full:
            started = time.perf_counter()
            self._queue.put(item)
            self.blocked_seconds += time.perf_counter() - started

    def send_record(self, packed: bytes, key_packed: bytes | None) -> None:
        self._batch.append((_RECORD, packed, key_packed))
        self._batch_bytes += len(packed)
        if len(self._batch) >= self._limit or self._batch_bytes >= ITEM_BYTES:
            self.flush()

    def send_single(self, parts: list, nbytes: int) -> None:
        self._batch.append((_SINGLE, b"".join(bytes(p) for p in parts), None))
        self.flush()

    def send_control(self, signal: Any) -> None:
        self._batch.append((_CONTROL, signal, None))
        self.flush()

    def flush(self) -> None:
        if self._batch:
            batch, self._batch = self._batch, []
            self._batch_bytes = 0
            self._put((self._slot, batch))

    @property
    def has_pending(self) -> bool:
        return bool(self._batch)

    def close(self) -> None:
        # The queue's feeder thread still holds our last batches: wait for it, or they die with us.
        self.flush()
        self._queue.close()
        self._queue.join_thread()


class MpInputGate(InputGate):
    def __init__(self, q: MpQueue, input_indices: tuple[int, ...], maxsize: int = 64) -> None:
        self._queue = q
        self._maxsize = maxsize
        self._decoders = [BatchDecoder(slot, idx) for slot, idx in enumerate(input_indices)]

    def fill(self) -> float:
        """Batches queued over the queue's bound (qsize is a semaphore read on Linux)."""
        try:
            return min(self._queue.qsize() / self._maxsize, 1.0)
        except (NotImplementedError, OSError):
            return 0.0

    def read(self, timeout: float | None) -> list:
        out: list = []
        try:
            item = self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else \
                self._queue.get_nowait()
        except queue_mod.Empty:
            return out
        while True:
            slot, batch = item
            decoder = self._decoders[slot]
            for tag, data, key in batch:
                if tag == _RECORD:
                    if key is None:
                        decoder.batch(data, False, out)
                    else:
                        decoder.batch(key + data, True, out)
                elif tag == _SINGLE:
                    decoder.single(memoryview(data), out)
                else:
                    decoder.control(data, out)
            # Take what is already there, but a bounded amount: a fast producer must not make one
            # read pull the whole stream into memory (the queue bound is our backpressure).
            if len(out) >= _READ_LIMIT:
                return out
            try:
                item = self._queue.get_nowait()
            except queue_mod.Empty:
                return out

    def close(self) -> None:
        pass
