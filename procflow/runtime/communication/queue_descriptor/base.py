"""What every channel kind provides: picklable descriptors, a writer per edge, one input gate per task.

    driver                         producer task                     consumer task
    InboxDescriptor.create()       inbox.edge(slot).open_writer()    inbox.open_gate()
        (allocates)                   send_record / send_single          read(timeout) -> [RecordBatch |
    InboxDescriptor.unlink()          send_control / flush                               ChannelEnd]
        (frees, once)                 try_send_control / wait_for_room
                                          (a barrier bound for many channels)

Descriptors are small values that pickle to names (plus capacity); the heavy objects are built lazily in
whichever process uses them. A backend adds a channel kind by implementing these three classes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import msgpack

from procflow.runtime.communication import codec
from procflow.runtime.communication.packet import ChannelEnd, RecordBatch


class ChannelWriter(ABC):
    """Producer end of one edge. Batches records; `flush()` makes everything visible downstream."""

    blocked_seconds: float = 0.0
    # True when `send_object` takes any record (numpy arrays included) and counts them in
    # `objects_sent`: a router with this one channel then calls `send_object` directly.
    sends_anything = False
    objects_sent = 0

    def send_object(self, record: Any, key: Any, keyed: bool) -> None:
        """A record bound for this channel alone: kinds may defer encoding to batch it cheaply."""
        try:
            packed = codec.pack(_packer, record)
            key_packed = codec.pack(_packer, key) if keyed else None
        except (TypeError, ValueError, OverflowError):
            parts, nbytes = codec.encode(record, key, keyed)
            self.send_single(parts, nbytes)
            return
        self.send_record(packed, key_packed)

    def send_many(self, records: list) -> None:
        """Unkeyed records bound for this channel, in order: the same as `send_object` on each.
        Kinds that batch Python objects override it to take the whole list at once."""
        for record in records:
            self.send_object(record, None, False)

    @abstractmethod
    def send_record(self, packed: bytes, key_packed: bytes | None) -> None:
        """A msgpack-encoded record (and msgpack-encoded key for keyed streams), batched."""

    @abstractmethod
    def send_single(self, parts: list, nbytes: int) -> None:
        """A codec frame (`codec.frame`) sent on its own: arrays, pickled objects, big records."""

    @abstractmethod
    def send_control(self, signal: Any) -> None:
        """A control message; flushes everything before it."""

    # True where sending runs the consumer itself, by call (a chain link): the router sends control
    # messages there after the channels that only take bytes, which then need not wait for it.
    runs_downstream = False

    def try_send_control(self, signal: Any) -> bool:
        """`send_control` without waiting for a full channel: True once the message is on its way; False
        if the channel has no room yet, having kept what it could not write. Then call `wait_for_room`
        and this again, with the same `signal`, until True, sending nothing else on this channel
        meanwhile. A router sending a barrier to every output uses it, so that one full channel does not
        hold the barrier back from the others (issue 20). Kinds that cannot tell send as usual."""
        self.send_control(signal)
        return True

    def wait_for_room(self, timeout: float | None) -> None:
        """Wait until what `try_send_control` kept may fit, or `timeout` seconds pass (None: until it
        fits); counted in `blocked_seconds`. Kinds whose `try_send_control` always sends have nothing
        to wait for."""
        return

    @abstractmethod
    def flush(self) -> None: ...

    @property
    @abstractmethod
    def has_pending(self) -> bool: ...

    @abstractmethod
    def close(self) -> None: ...


_packer = msgpack.Packer(default=codec._default, strict_types=True, use_bin_type=True)


class InputGate(ABC):
    """Consumer side of all of a task's input channels."""

    # Set by the task: > 0 when its operator needs no prompt wake-up on input (see ShmInputGate);
    # kinds that cannot poll cheaply ignore it.
    poll_period: float = 0.0

    @abstractmethod
    def read(self, timeout: float | None) -> list:
        """Block until something arrives (or `timeout`); returns RecordBatches and ChannelEnds in order."""

    def fill(self) -> float:
        """How full the input channels are, 0.0 (empty) to 1.0 (full); for metrics. 0.0 if unknown."""
        return 0.0

    def hold(self, slot: int) -> None:
        """Read nothing more from input `slot` until `release_all()`: checkpoint alignment. Kinds that
        cannot hold an input do not support checkpoints (the environment refuses them)."""
        raise NotImplementedError(f"{type(self).__name__} cannot hold an input back for checkpoint alignment")

    def release_all(self) -> None:
        """Read every input again (the end of a checkpoint's alignment)."""
        raise NotImplementedError(f"{type(self).__name__} cannot hold an input back for checkpoint alignment")

    @abstractmethod
    def close(self) -> None: ...


class BatchDecoder:
    """Turns received frames into RecordBatches for one input slot; shared by the channel kinds."""

    def __init__(self, slot: int, input_index: int, slabs: Any = None) -> None:
        self.slot = slot
        self.input_index = input_index
        self._slabs = slabs   # a shm gate's slabs.SlabViews: resolves arrays sent in slabs
        self._unpacker = msgpack.Unpacker(ext_hook=codec._ext_hook, raw=False, strict_map_key=False,
                                          max_buffer_size=1 << 31)

    def batch(self, body: bytes | memoryview, keyed: bool, out: list) -> None:
        """A frame of msgpack records one after another (keys interleaved when keyed)."""
        self._unpacker.feed(body)
        self._append(list(self._unpacker), keyed, out)

    def array(self, body: bytes | memoryview, keyed: bool, out: list, tuples: bool = False) -> None:
        """A frame holding one msgpack array of records (keys interleaved when keyed); `tuples`: every
        record was a tuple, sent as an array (codec.tuples_as_lists), and becomes one again here."""
        self._append(codec._unpackb(body), keyed, out, tuples)

    def _append(self, items: list, keyed: bool, out: list, tuples: bool = False) -> None:
        if keyed:
            records = items[1::2]
            out.append(RecordBatch(list(map(tuple, records)) if tuples else records, items[0::2],
                                   self.input_index))
        else:
            out.append(RecordBatch(list(map(tuple, items)) if tuples else items, None, self.input_index))

    def single(self, body: memoryview, out: list) -> None:
        record, key, keyed = codec.decode(body, self._slabs)
        out.append(RecordBatch([record], [key] if keyed else None, self.input_index))

    def control(self, signal: Any, out: list) -> None:
        out.append(ChannelEnd(self.slot, signal))
