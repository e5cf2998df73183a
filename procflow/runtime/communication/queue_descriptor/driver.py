"""The edge into a collect() that runs in the driver: records travel as Results over the control pipe.

    map_0 ──Results(collect, batch)──► driver ──► CollectResult
    map_1 ──Results(collect, batch)──┘

A collect task did nothing but decode what its upstream tasks encoded into its rings, and pickle it again
for the driver. In a job of fine-grained records it cost a process (a fork, a start-up, a wake-up every
few ms) and a second serialisation per record: on 2 cores the 20 us CPU-scaling job ran 11% longer with
one than with no result shipping at all. So where a collect has nothing to decide (one instance, its
input not keyed) the local and Ray backends run none (on Ray a task is an actor: seconds of start-up);
each upstream task batches its records here and ships them itself, on the control channel it already
has (ordered before its Stopped message, so the driver holds every result when the job ends).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from procflow.runtime.communication import codec
from procflow.runtime.communication.queue_descriptor.base import ChannelWriter
from procflow.runtime.communication.slabs import owned
from procflow.runtime.control import Results, short_repr

# Results travel when BATCH records are waiting or SEND_INTERVAL has passed (and all at end of input):
# a message per record or per 1 ms flush would cost a pipe write, a driver wake-up and an unpickle each,
# CPU taken from the workers.
BATCH = 2048
SEND_INTERVAL = 0.1


@dataclass(frozen=True)
class DriverEdge:
    """Descriptor of one task's edge into a driver-side collect; `target` names the collect operator."""

    target: str
    slot: int          # the edge's input slot at the collect: one per upstream instance
    kind: str = "driver"

    @property
    def inbox(self) -> str:
        return f"driver:{self.target}"

    def open_writer(self) -> DriverWriter:
        return DriverWriter(self.target)


class DriverWriter(ChannelWriter):
    """Batches records as objects and ships them as Results; the task binds its control pipe."""

    sends_anything = True

    def __init__(self, target: str) -> None:
        self.target = target
        self.control: Any = None
        self.sender = ""
        self._buffer: list = []
        self._last_send = time.monotonic()
        self.objects_sent = 0

    def bind_control(self, control: Any, sender: str = "") -> None:
        """Ship over `control`, as task instance `sender`."""
        self.control = control
        self.sender = sender

    # Records wait here up to SEND_INTERVAL: an array received on a slab is copied (slabs.owned), or
    # it would hold the slab, and its producer would fall back to copying through the ring.
    def send_object(self, record: Any, key: Any, keyed: bool) -> None:
        self._buffer.append(owned(record) if type(record) is np.ndarray else record)
        self.objects_sent += 1
        if len(self._buffer) >= BATCH:
            self._ship()

    def send_many(self, records: list) -> None:
        if np.ndarray in map(type, records):
            records = [owned(r) for r in records]
        self._buffer += records
        self.objects_sent += len(records)
        if len(self._buffer) >= BATCH:
            self._ship()

    # A task that fans records out to several operators encodes each once and hands the bytes to every
    # channel; this one turns them back into the record.
    def send_record(self, packed: bytes, key_packed: bytes | None) -> None:
        self.send_object(codec._unpackb(packed), None, False)

    def send_single(self, parts: list, nbytes: int) -> None:
        record, _, _ = codec.decode_bytes(b"".join(bytes(memoryview(p)) for p in parts))
        self.send_object(record, None, False)

    def send_control(self, signal: Any) -> None:
        self._ship()   # end of input: everything goes now, before the task reports Stopped

    def flush(self) -> None:
        if self._buffer and time.monotonic() - self._last_send >= SEND_INTERVAL:
            self._ship()

    @property
    def has_pending(self) -> bool:
        return bool(self._buffer)

    def ship(self) -> None:
        """Ship what is buffered now, whatever the time (a task's final checkpoint ack follows)."""
        self._ship()

    def _ship(self) -> None:
        self._last_send = time.monotonic()
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        try:
            self.control.send(Results(self.target, batch, self.sender))
        except Exception as exc:
            raise _unshippable(self.target, batch, exc) from exc

    def close(self) -> None:
        self._buffer = []


def _unshippable(target: str, batch: list, exc: Exception) -> Exception:
    """Name the record that could not be pickled to the driver (the batch failed as a whole)."""
    import dill

    for record in batch:
        try:
            dill.dumps(record)
        except Exception as record_exc:
            return codec.EncodeError(
                f"record {short_repr(record)} cannot be shipped to the driver for collect {target!r}: "
                f"{type(record_exc).__name__}: {record_exc}. Records a collect() returns must be "
                "picklable; instead, convert it to plain data in the operator before collect()",
                record=record)
    return exc
