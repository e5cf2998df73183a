"""Call inboxes inside one process: the lean send path, the asleep/blocked flags that replace unconditional
futex wake-ups, and the adaptive poll window. The safety timeouts are raised to a minute here, so a lost
wake-up shows as a hang (pytest-timeout) instead of a short delay."""

from __future__ import annotations

import itertools
import random
import threading
import time
import zlib

import pytest

from procflow.runtime.communication import ring as ringmod
from procflow.runtime.communication.shm import SharedSegment, segment_name
from procflow.runtime.service import rings, waiting
from procflow.runtime.service.rings import CallRingReader, CallRingWriter, asleep_word, call_inbox_size
from procflow.runtime.service.waiting import Waiter

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def no_safety_net(monkeypatch):
    monkeypatch.setattr(waiting, "SAFETY_WAIT", 300.0)
    monkeypatch.setattr(rings, "SAFETY_WAIT", 300.0)


class Inbox:
    """One call inbox with a CallRingWriter and a CallRingReader on each slot, and the consumer's Waiter."""

    def __init__(self, capacity: int, slots: int = 1) -> None:
        self.capacity = capacity
        self.segment = SharedSegment(segment_name("svcringtest", "in"), call_inbox_size(slots, capacity),
                                     create=True)
        self.writers = [CallRingWriter(self.segment, s, capacity, slots) for s in range(slots)]
        self.readers = [CallRingReader(self.segment, s, capacity, slots) for s in range(slots)]
        self.doorbell = ringmod.Doorbell(self.segment)
        self.asleep = asleep_word(self.segment, slots, capacity)
        self.waiter = Waiter(self.doorbell, self.asleep)
        self.w, self.r = self.writers[0], self.readers[0]
        self._extra: list = []

    def plain_reader(self, slot: int = 0) -> ringmod.RingReader:
        self._extra.append(ringmod.RingReader(self.segment, slot, self.capacity))
        return self._extra[-1]

    def plain_writer(self, slot: int = 0) -> ringmod.RingWriter:
        self._extra.append(ringmod.RingWriter(self.segment, slot, self.capacity))
        return self._extra[-1]

    def ready(self) -> bool:
        return any(r.has_data() for r in self.readers)

    def drain(self, reader=None) -> list:
        got: list = []
        (reader or self.r).drain(lambda flags, body: got.append((flags, bytes(body))))
        return got

    def close(self) -> None:
        for x in (*self.writers, *self.readers, *self._extra):
            x.close()
        self.segment.close()
        self.segment.unlink()


@pytest.fixture
def make_inbox():
    inboxes: list[Inbox] = []

    def make(capacity: int, slots: int = 1) -> Inbox:
        inboxes.append(Inbox(capacity, slots))
        return inboxes[-1]

    yield make
    for inbox in inboxes:
        inbox.close()


def _until(predicate, what: str, timeout: float = 10.0) -> None:
    """Deadline loop with backoff on shared-memory state another thread changes."""
    deadline = time.monotonic() + timeout
    delay = 1e-4
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


def test_send_keeps_ring_py_wire_format_across_wraps(make_inbox):
    rng = random.Random(1)
    bodies = [rng.randbytes(rng.randrange(0, 900)) for _ in range(2000)]
    inbox = make_inbox(4096)
    plain = inbox.plain_reader()
    for body in bodies:
        inbox.w.send(body)
        assert inbox.drain(plain) == [(0, body)]
    other = make_inbox(4096)
    writer = other.plain_writer()
    for body in bodies:
        writer.write([body], len(body), 0)
        writer.commit()
        assert other.drain() == [(0, body)]
    assert inbox.w.blocked_seconds == 0.0


def test_plain_writer_frames_reach_a_call_reader(make_inbox):
    inbox = make_inbox(4096, slots=2)
    plain = inbox.plain_writer(slot=1)
    plain.write([b"stop"], 4, ringmod.FLAG_CONTROL)
    plain.commit()
    assert inbox.drain(inbox.readers[1]) == [(ringmod.FLAG_CONTROL, b"stop")]


@pytest.mark.parametrize("size", [3000, 10_000, 50_000])
def test_send_of_a_body_larger_than_half_the_ring_arrives_whole(make_inbox, size):
    inbox = make_inbox(4096)
    big = random.Random(size).randbytes(size)
    t = threading.Thread(target=inbox.w.send, args=(big,))
    t.start()
    got: list = []
    try:
        while not got:
            inbox.waiter.wait(inbox.ready)
            got += inbox.drain()
    finally:
        t.join(10)
    assert got == [(0, big)]


def test_commit_rings_the_doorbell_only_when_the_consumer_is_asleep(make_inbox):
    inbox = make_inbox(4096)
    before = inbox.doorbell.seen()
    inbox.w.send(b"awake")
    assert inbox.doorbell.seen() == before      # no system call, no bump: the consumer polls the ring
    assert inbox.drain() == [(0, b"awake")]
    inbox.asleep.value = 1
    inbox.w.send(b"asleep")
    assert inbox.doorbell.seen() == (before + 1) & 0xFFFFFFFF
    inbox.asleep.value = 0


def test_a_sleeping_consumer_is_always_woken(make_inbox):
    """Many hand-overs, with the commit landing before, during and after the consumer's sleep."""
    inbox = make_inbox(4096)
    rounds = 300
    got: list = []

    def consume():
        while len(got) < rounds:
            if not inbox.ready():
                inbox.waiter.sleep(inbox.ready)
            got.extend(inbox.drain())

    t = threading.Thread(target=consume)
    t.start()
    try:
        for i in range(rounds):
            if i % 3:
                _until(lambda: inbox.asleep.value == 1, "the consumer to flag itself asleep")
            inbox.w.send(i.to_bytes(4, "little"))
            _until(lambda i=i: len(got) > i, f"frame {i} to be consumed")
    finally:
        t.join(10)
    assert not t.is_alive()
    assert [int.from_bytes(body, "little") for _, body in got] == list(range(rounds))


def test_a_producer_waiting_for_room_is_always_woken(make_inbox):
    """Frames over a quarter of the ring: the old size heuristic could skip this wake-up."""
    cap = 4096
    inbox = make_inbox(cap)
    frames = [random.Random(i).randbytes(int(cap * 0.3)) for i in range(200)]
    t = threading.Thread(target=lambda: [inbox.w.send(f) for f in frames])
    t.start()
    got: list = []
    try:
        while len(got) < len(frames):
            if len(got) % 7 == 0:   # now and then, let the producer run into a full ring and sleep
                _until(lambda: inbox.w._blocked.value == 1 or not t.is_alive(), "the producer to block")
            inbox.waiter.wait(inbox.ready)
            got += inbox.drain()
    finally:
        t.join(10)
    assert not t.is_alive()
    assert [zlib.crc32(b) for _, b in got] == [zlib.crc32(f) for f in frames]
    assert inbox.w._blocked.value == 0


def test_poll_window_grows_with_quick_answers_and_halves_when_they_do_not_come(make_inbox, monkeypatch):
    ticks = itertools.count()
    monkeypatch.setattr(waiting, "_perf", lambda: next(ticks) * 1e-6)   # 1 us per reading: deterministic
    monkeypatch.setattr(waiting, "_yield", lambda: None)
    inbox = make_inbox(4096)
    waiter = inbox.waiter
    waiter.window = waiting.MAX_WINDOW
    for _ in range(20):
        assert waiter.poll(lambda: False) is False
    assert waiter.window == waiting.MIN_WINDOW

    calls = itertools.count()
    assert waiter.poll(lambda: next(calls) >= 30) is True   # caught after ~15 us: more than half the window
    assert waiting.MIN_WINDOW < waiter.window <= waiting.MAX_WINDOW
    assert waiter.poll(lambda: True) is True


def test_a_sleep_that_ended_soon_widens_the_window(make_inbox, monkeypatch):
    """Two sides whose windows shrank must not stay in the sleep/wake-up regime for good."""
    monkeypatch.setattr(waiting, "MAX_WINDOW", 10.0)   # "soon", even on a machine busy with other tests
    inbox = make_inbox(4096)

    class WokenAtOnce(Waiter):
        def sleep(self, ready, timeout=None):   # as if the other side answered right after the poll
            pass

    waiter = WokenAtOnce(inbox.doorbell, inbox.asleep)
    waiter.window = waiting.MIN_WINDOW
    waiter.wait(lambda: False)
    assert waiter.window >= 2 * waiting.MIN_WINDOW
