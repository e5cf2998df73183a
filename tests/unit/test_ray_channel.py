"""The Ray channel's input gate, in one process (no Ray instance): batches come back in send order per
input slot even when a threaded actor runs the push() calls out of order, and the StopSignal stays last."""

from __future__ import annotations

import threading

import msgpack
import pytest

from procflow.core.signals import StopSignal
from procflow.runtime.communication.packet import ChannelEnd, Packet, packets

channel = pytest.importorskip("procflow.backends.ray.channel")


def records(*values) -> tuple:
    return (channel._RECORDS, b"".join(msgpack.packb(v) for v in values))


def test_gate_reorders_batches_per_slot():
    gate = channel.RayInputGate((0, 1))
    gate.push(0, 2, [(channel._CONTROL, StopSignal("a"))])
    gate.push(0, 1, [records(3, 4)])
    gate.push(1, 0, [records("x")])
    assert [p.payload for p in packets(gate.read(0))] == ["x"]        # slot 0 still waits for its batch 0
    gate.push(0, 0, [records(1, 2)])
    out = list(packets(gate.read(0)))
    assert [p.payload for p in out if isinstance(p, Packet)] == [1, 2, 3, 4]
    assert isinstance(out[-1], ChannelEnd) and out[-1].slot == 0
    assert all(p.input_index == 0 for p in out if isinstance(p, Packet))


def test_gate_read_blocks_until_a_push():
    gate = channel.RayInputGate((0,))
    assert gate.read(0) == []
    pusher = threading.Thread(target=gate.push, args=(0, 0, [records("late")]))
    pusher.start()
    got = gate.read(None)
    pusher.join()
    assert [p.payload for p in packets(got)] == ["late"]


class _DirectActor:
    """Stands in for the consumer actor: push.remote() hands the frames straight to its gate."""

    def __init__(self, gate) -> None:
        self.push = self
        self._gate = gate

    def remote(self, slot, seq, frames):
        self._gate.push(slot, seq, frames)
        return None


def test_bytearrays_and_memoryviews_keep_their_types_through_the_ray_channel():
    """Issue 22 item 6: the Ray channel encodes with the same codec as shm and mp."""
    gate = channel.RayInputGate((0,))
    writer = channel.RayChannelWriter(_DirectActor(gate), "consumer", 0, 1 << 16, 8)
    writer.send_object([bytearray(b"x"), {"v": memoryview(b"y")}], bytearray(b"key"), True)
    writer.send_object(bytearray(b"plain"), None, False)
    writer.flush()
    first, second = packets(gate.read(0))
    assert type(first.partition_key) is bytearray and first.partition_key == b"key"
    blob, view = first.payload[0], first.payload[1]["v"]
    assert type(blob) is bytearray and blob == b"x"
    assert type(view) is memoryview and view.tobytes() == b"y" and view.readonly
    assert type(second.payload) is bytearray and second.payload == b"plain"


def test_gate_stops_at_a_barrier_and_holds_the_slot_until_released():
    """Checkpoint alignment (issue 20): nothing behind a Barrier is decoded in the read that returns it,
    and a held slot gives nothing until release_all(), in order; the other slots go on meanwhile."""
    from procflow.runtime.checkpoint.barrier import Barrier

    gate = channel.RayInputGate((0, 1))
    gate.push(0, 0, [records(1), (channel._CONTROL, Barrier(1)), records(2)])
    gate.push(0, 1, [records(3)])
    gate.push(1, 0, [records("a")])
    first = list(packets(gate.read(0)))
    assert [p.payload for p in first if isinstance(p, Packet)] == [1, "a"]
    assert [p.signal for p in first if isinstance(p, ChannelEnd)] == [Barrier(1)]
    gate.hold(0)   # what the task does on seeing the barrier
    gate.push(1, 1, [records("b"), (channel._CONTROL, Barrier(1))])
    assert [p.payload for p in packets(gate.read(0)) if isinstance(p, Packet)] == ["b"]   # slot 0 held
    assert gate.read(0.01) == []   # slot 0 held, slot 1 empty: the read times out
    gate.release_all()
    assert [p.payload for p in packets(gate.read(0))] == [2, 3]
