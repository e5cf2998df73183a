"""The `inline` channel kind: one deque per consuming task, inside the driver process.

    producer task (same process)             consumer task (same process)
    InlineEdge.open_writer()                 InlineInbox.open_gate()
        send_record / send_single  ──deque──►    read(0) -> [RecordBatch | ChannelEnd]
        send_control / flush                     (never blocks: the scheduler only reads when it
                                                  has run the producers)

Records are encoded exactly as the shared-memory channel encodes them (msgpack batches, codec frames for
arrays and pickled objects) and decoded by the same BatchDecoder, so a record that could not cross a
process boundary fails here too, and what a function receives is a decoded copy, never the producer's
object.
"""

from __future__ import annotations

import pickle
from collections import deque
from typing import Any

from procflow.runtime.checkpoint.barrier import Barrier
from procflow.runtime.communication.queue_descriptor.base import BatchDecoder, ChannelWriter, InputGate

_BATCH, _SINGLE, _CONTROL = 0, 1, 2


class InlineInbox:
    """Descriptor of a task's inbox. `input_indices[slot]` is the logical input each edge feeds."""

    kind = "inline"

    def __init__(self, name: str, input_indices: tuple[int, ...], batch_bytes: int = 32 * 1024) -> None:
        self.name = name
        self.input_indices = input_indices
        self.batch_bytes = batch_bytes
        self.queue: deque = deque()

    def create(self) -> InlineInbox:
        return self

    def close(self) -> None:
        pass

    def unlink(self) -> None:
        self.queue.clear()

    def edge(self, slot: int) -> InlineEdge:
        return InlineEdge(self, slot)

    def open_gate(self) -> InlineInputGate:
        return InlineInputGate(self.queue, self.input_indices)


class InlineEdge:
    kind = "inline"

    def __init__(self, inbox: InlineInbox, slot: int) -> None:
        self.inbox_ref = inbox
        self.inbox = inbox.name     # for queue ids: "<inbox>#<slot>", as the other kinds
        self.slot = slot

    def open_writer(self) -> InlineChannelWriter:
        return InlineChannelWriter(self.inbox_ref.queue, self.slot, self.inbox_ref.batch_bytes)


class InlineChannelWriter(ChannelWriter):
    def __init__(self, queue: deque, slot: int, batch_bytes: int) -> None:
        self._queue = queue
        self._slot = slot
        self._batch = bytearray()
        self._batch_keyed = False
        self._batch_bytes = batch_bytes
        self.blocked_seconds = 0.0

    def send_record(self, packed: bytes, key_packed: bytes | None) -> None:
        keyed = key_packed is not None
        if keyed is not self._batch_keyed:
            self._write_batch()
            self._batch_keyed = keyed
        if key_packed is not None:
            self._batch += key_packed
        self._batch += packed
        if len(self._batch) >= self._batch_bytes:
            self._write_batch()

    def _write_batch(self) -> None:
        if self._batch:
            self._queue.append((self._slot, _BATCH, bytes(self._batch), self._batch_keyed))
            self._batch.clear()

    def send_single(self, parts: list, nbytes: int) -> None:
        self._write_batch()
        self._queue.append((self._slot, _SINGLE, b"".join(bytes(p) for p in parts), False))

    def send_control(self, signal: Any) -> None:
        self._write_batch()
        self._queue.append((self._slot, _CONTROL, pickle.dumps(signal), False))

    def flush(self) -> None:
        self._write_batch()

    @property
    def has_pending(self) -> bool:
        return bool(self._batch)

    def close(self) -> None:
        self._batch.clear()


class InlineInputGate(InputGate):
    """Checkpoint alignment (`hold`): the frames of a held input wait aside, in arrival order, and go back
    to the front of the inbox on `release_all`; a read ends right after a Barrier, so nothing behind it
    is decoded before the task has held its input."""

    def __init__(self, queue: deque, input_indices: tuple[int, ...]) -> None:
        self._queue = queue
        self._decoders = [BatchDecoder(slot, idx) for slot, idx in enumerate(input_indices)]
        self._held: set[int] = set()
        self._aside: list[tuple] = []

    def read(self, timeout: float | None) -> list:
        """Everything queued so far, decoded; [] when nothing is there (inline tasks never wait)."""
        out: list = []
        queue = self._queue
        held = self._held
        while queue:
            frame = queue.popleft()
            slot, tag, data, keyed = frame
            if held and slot in held:
                self._aside.append(frame)
                continue
            decoder = self._decoders[slot]
            if tag == _BATCH:
                decoder.batch(data, keyed, out)
            elif tag == _SINGLE:
                decoder.single(memoryview(data), out)
            else:
                signal = pickle.loads(data)
                decoder.control(signal, out)
                if type(signal) is Barrier:
                    break
        return out

    def hold(self, slot: int) -> None:
        self._held.add(slot)

    def release_all(self) -> None:
        self._held.clear()
        self._queue.extendleft(reversed(self._aside))   # before anything that arrived after them
        self._aside.clear()

    def close(self) -> None:
        pass
