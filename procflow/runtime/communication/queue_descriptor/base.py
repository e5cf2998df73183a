"""What every channel kind provides: picklable descriptors, a writer per edge, one input gate per task.

    driver                         producer task                     consumer task
    InboxDescriptor.create()       inbox.edge(slot).open_writer()    inbox.open_gate()
        (allocates)                   send_record / send_single          read(timeout) -> [Packet |
    InboxDescriptor.unlink()          send_control / flush                               ChannelEnd]
        (frees, once)

Descriptors are small values that pickle to names (plus capacity); the heavy objects are built lazily in
whichever process uses them. A backend adds a channel kind by implementing these three classes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import msgpack

from procflow.runtime.communication import codec
from procflow.runtime.communication.packet import ChannelEnd, Packet


class ChannelWriter(ABC):
    """Producer end of one edge. Batches records; `flush()` makes everything visible downstream."""

    blocked_seconds: float = 0.0

    def send_object(self, record: Any, key: Any, keyed: bool) -> None:
        """A record bound for this channel alone: kinds may defer encoding to batch it cheaply."""
        try:
            packed = _packer.pack(record)
            key_packed = _packer.pack(key) if keyed else None
        except (TypeError, ValueError, OverflowError):
            parts, nbytes = codec.encode(record, key, keyed)
            self.send_single(parts, nbytes)
            return
        self.send_record(packed, key_packed)

    @abstractmethod
    def send_record(self, packed: bytes, key_packed: bytes | None) -> None:
        """A msgpack-encoded record (and msgpack-encoded key for keyed streams), batched."""

    @abstractmethod
    def send_single(self, parts: list, nbytes: int) -> None:
        """A codec frame (`codec.frame`) sent on its own: arrays, pickled objects, big records."""

    @abstractmethod
    def send_control(self, signal: Any) -> None:
        """A control message; flushes everything before it."""

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

    @abstractmethod
    def read(self, timeout: float | None) -> list:
        """Block until something arrives (or `timeout`); returns Packets and ChannelEnds in order."""

    def fill(self) -> float:
        """How full the input channels are, 0.0 (empty) to 1.0 (full); for metrics. 0.0 if unknown."""
        return 0.0

    @abstractmethod
    def close(self) -> None: ...


class BatchDecoder:
    """Turns received frames into Packets for one input slot; shared by the channel kinds."""

    def __init__(self, slot: int, input_index: int) -> None:
        self.slot = slot
        self.input_index = input_index
        self._unpacker = msgpack.Unpacker(ext_hook=codec._ext_hook, raw=False, strict_map_key=False,
                                          max_buffer_size=1 << 31)

    def batch(self, body, keyed: bool, out: list) -> None:
        unpacker = self._unpacker
        unpacker.feed(body)
        index = self.input_index
        if keyed:
            it = iter(unpacker)
            for key in it:
                out.append(Packet(next(it), index, key, True))
        else:
            for record in unpacker:
                out.append(Packet(record, index, None, False))

    def array(self, body, keyed: bool, out: list) -> None:
        """A frame holding one msgpack array of records (keys interleaved when keyed)."""
        items = codec._unpackb(body)
        index = self.input_index
        if keyed:
            it = iter(items)
            for key in it:
                out.append(Packet(next(it), index, key, True))
        else:
            for record in items:
                out.append(Packet(record, index, None, False))

    def single(self, body, out: list) -> None:
        record, key, keyed = codec.decode(body)
        out.append(Packet(record, self.input_index, key, keyed))

    def control(self, signal: Any, out: list) -> None:
        out.append(ChannelEnd(self.slot, signal))
