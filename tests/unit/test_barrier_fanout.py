"""A control message bound for several shm channels never waits behind one full ring (issue 20).

One router, two shm channels, each read by its own gate in this process; the router's send runs in a
thread. The consumer of channel 1 reads nothing, so its ring stays full: channel 2's consumer must still
get the barrier, and channel 1 must deliver its records, then the barrier, once drained.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from procflow.core.signals import StopSignal
from procflow.runtime.checkpoint.barrier import Barrier
from procflow.runtime.communication.packet import ChannelEnd, packets
from procflow.runtime.communication.queue_descriptor import shm_queue
from procflow.runtime.communication.queue_descriptor.shm_queue import ShmInbox
from procflow.runtime.communication.router import BaseRouter, OutputGroup

pytestmark = pytest.mark.timeout(60)

# Generous against a loaded CI machine: nothing here waits this long unless something hangs.
READ_TIMEOUT = 20.0


@pytest.fixture
def inboxes():
    """Makes shm inboxes of one ring each; detaches and unlinks them all at the end."""
    owners = []

    def make(capacity: int, batch_bytes: int = 32 * 1024) -> ShmInbox:
        box = ShmInbox(f"procflow_{os.getpid()}_unit_{time.monotonic_ns()}", (0,), capacity, batch_bytes)
        owners.append(box.create())
        return box

    yield make
    shm_queue.detach_all()
    for owner in owners:
        owner.close()
        owner.unlink()


def read_to_end(gate) -> tuple[list, ChannelEnd]:
    """The records a gate delivers up to its control message, and that message."""
    got: list = []
    while True:
        items = gate.read(READ_TIMEOUT)
        assert items, f"nothing arrived in {READ_TIMEOUT}s after {len(got)} records"
        for item in packets(items):
            if isinstance(item, ChannelEnd):
                return got, item
            got.append(item.payload)


def record(i: int, pad: int = 100) -> str:
    return f"{i:06d}" + "x" * pad


def fill(writer, start: int) -> list:
    """One-record frames into `writer`'s ring until a frame with a 200-byte body would not fit: then
    nothing bigger fits either (RingWriter.frame_need only grows with the body). Returns the records."""
    ring = writer._ring
    sent = []
    while ring.has_room(ring.frame_need(200)):
        sent.append(record(start + len(sent)))
        writer.send_object(sent[-1], None, False)
        writer.flush()
    return sent


class Sender(threading.Thread):
    """Runs `send` in a thread and keeps what it raised, for the test to re-raise."""

    def __init__(self, send, signal) -> None:
        super().__init__(name="router-send")
        self._send, self._signal = send, signal
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._send(self._signal)
        except BaseException as exc:   # handed to the test thread
            self.error = exc

    def finish(self, gates) -> None:
        """Join the thread, re-raising what it raised. Whatever failed in the test, `gates` are read
        meanwhile so that a send waiting for room can end."""
        deadline = time.monotonic() + READ_TIMEOUT
        while self.is_alive() and time.monotonic() < deadline:
            for gate in gates:
                gate.read(0.01)
            self.join(0.01)
        assert not self.is_alive(), "the router's send did not return once every ring had room"
        if self.error is not None:
            raise self.error


@pytest.mark.parametrize("signal", [Barrier(3), StopSignal("src", "end")], ids=["barrier", "stop"])
def test_a_full_ring_holds_back_only_its_own_channel(inboxes, signal):
    box1, box2 = inboxes(64 << 10), inboxes(64 << 10)
    w1, w2 = box1.edge(0).open_writer(), box2.edge(0).open_writer()
    g1, g2 = box1.open_gate(), box2.open_gate()
    router = BaseRouter([OutputGroup("down", "round_robin", [w1, w2])])
    in_ring1 = fill(w1, 0)
    # Records still batched in the writers: they must go out before the barrier, on both channels. On
    # channel 1 they cannot: they are bigger than the room left.
    pending1 = [record(i) for i in range(len(in_ring1), len(in_ring1) + 3)]
    pending2 = [record(i) for i in range(5)]
    for r in pending1:
        w1.send_object(r, None, False)
    for r in pending2:
        w2.send_object(r, None, False)
    assert w1.has_pending and w2.has_pending

    send = router.send_barrier if isinstance(signal, Barrier) else router.send_stop
    sender = Sender(send, signal)
    sender.start()
    try:
        got2, end2 = read_to_end(g2)
        assert got2 == pending2 and end2.signal == signal
        # Channel 2 has the barrier while nobody has read ring 1, which has no room for it: the router
        # is still waiting for that one channel.
        assert sender.is_alive()
        got1, end1 = read_to_end(g1)
    finally:
        sender.finish([g1])
    assert got1 == in_ring1 + pending1 and end1.signal == signal
    assert not w1.has_pending and not w2.has_pending
    for x in (w1, w2, g1, g2):
        x.close()


def test_flushes_larger_than_the_ring_go_out_in_fragments_on_every_full_channel(inboxes):
    # Each writer holds more batched records than its ring can take at once, so both channels wait,
    # and each staged batch travels as fragments as its consumer makes room.
    boxes = [inboxes(16 << 10), inboxes(16 << 10)]
    writers = [b.edge(0).open_writer() for b in boxes]
    gates = [b.open_gate() for b in boxes]
    router = BaseRouter([OutputGroup("down", "round_robin", writers)])
    sent = [[record(i, pad=4000) for i in range(c * 100, c * 100 + 12)] for c in range(2)]
    for w, records in zip(writers, sent):
        for r in records:
            w.send_object(r, None, False)
    assert all(w.has_pending for w in writers)
    sender = Sender(router.send_barrier, Barrier(1))
    sender.start()
    try:
        results = [read_to_end(g) for g in gates]
    finally:
        sender.finish(gates)
    for (got, end), records in zip(results, sent):
        assert got == records and end.signal == Barrier(1)
    for x in (*writers, *gates):
        x.close()


def test_a_kept_barrier_goes_out_before_anything_a_later_flush_sends(inboxes):
    # A caller that gives up on trying (flush, send_control) still sends the kept frames first.
    box = inboxes(64 << 10)
    writer, gate = box.edge(0).open_writer(), box.open_gate()
    before = fill(writer, 0)
    writer.send_object(record(len(before)), None, False)
    assert writer.try_send_control(Barrier(2)) is False
    with pytest.raises(RuntimeError, match="call it again with that one"):
        writer.try_send_control(Barrier(5))

    def drain_then_stop() -> None:
        writer.flush()                  # waits for room, then the kept record and barrier go out
        writer.send_control(StopSignal("src"))

    sender = Sender(lambda _: drain_then_stop(), None)
    sender.start()
    try:
        got, end = read_to_end(gate)
        assert got == before + [record(len(before))] and end.signal == Barrier(2)
        got, end = read_to_end(gate)
        assert got == [] and end.signal == StopSignal("src")
    finally:
        sender.finish([gate])
    writer.close()
    gate.close()


def test_waiting_for_room_times_out_on_a_stalled_consumer_and_counts_as_blocked(inboxes):
    box = inboxes(64 << 10)
    writer, gate = box.edge(0).open_writer(), box.open_gate()
    before = fill(writer, 0)
    writer.send_object(record(10**5), None, False)
    assert writer.try_send_control(Barrier(1)) is False
    started = time.monotonic()
    writer.wait_for_room(0.2)               # nobody reads: it gives up after the timeout
    assert time.monotonic() - started >= 0.2 and writer.blocked_seconds >= 0.15

    def retry(barrier) -> None:
        while not writer.try_send_control(barrier):
            writer.wait_for_room(None)      # until room, however long

    sender = Sender(retry, Barrier(1))
    sender.start()
    try:
        got, end = read_to_end(gate)
    finally:
        sender.finish([gate])
    assert got == before + [record(10**5)] and end.signal == Barrier(1)
    writer.close()
    gate.close()


class _Recording:
    """A channel writer that notes when a control message reached it; a chain link if `runs_downstream`."""

    def __init__(self, name: str, log: list, runs_downstream: bool) -> None:
        self.name, self.log, self.runs_downstream = name, log, runs_downstream

    def try_send_control(self, signal) -> bool:
        self.log.append(self.name)
        return True


def test_a_chain_link_gets_the_barrier_after_the_channels_that_only_take_bytes():
    """A chain link runs the next member (its snapshot, its own sends) by call: were it first, a full ring
    of that member's would hold up the barrier of this router's other channels."""
    log: list = []
    link = _Recording("link", log, runs_downstream=True)
    ring_a, ring_b = _Recording("a", log, False), _Recording("b", log, False)
    router = BaseRouter([OutputGroup("chained", "round_robin", [link]),
                         OutputGroup("down", "round_robin", [ring_a, ring_b])])
    router.send_barrier(Barrier(1))
    assert log == ["a", "b", "link"]
