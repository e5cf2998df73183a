"""The SPSC ring inside one process: framing, wrap-around, exact fits, empty and full, fragments."""

from __future__ import annotations

import random
import threading
import zlib

import pytest

from procflow.runtime.communication import ring as ringmod
from procflow.runtime.communication.shm import SharedSegment, segment_name


class Ring:
    """One inbox segment with a writer and a reader on each slot; unlinked at the end of the test."""

    def __init__(self, capacity: int, slots: int = 1) -> None:
        self.capacity = capacity
        self.segment = SharedSegment(segment_name("ringtest", "in"), ringmod.inbox_size(slots, capacity),
                                     create=True)
        self.writers = [ringmod.RingWriter(self.segment, s, capacity) for s in range(slots)]
        self.readers = [ringmod.RingReader(self.segment, s, capacity) for s in range(slots)]
        self.doorbell = ringmod.Doorbell(self.segment)
        self.w, self.r = self.writers[0], self.readers[0]

    def drain(self, slot: int = 0) -> list:
        got: list = []
        self.readers[slot].drain(lambda flags, body: got.append((flags, bytes(body))))
        return got

    def close(self) -> None:
        for x in (*self.writers, *self.readers):
            x.close()
        self.segment.close()
        self.segment.unlink()


@pytest.fixture
def make_ring():
    rings: list[Ring] = []

    def make(capacity: int, slots: int = 1) -> Ring:
        rings.append(Ring(capacity, slots))
        return rings[-1]

    yield make
    for r in rings:
        r.close()


def write(ring_writer, body: bytes, flags: int = 0) -> None:
    ring_writer.write([body], len(body), flags)


pytestmark = pytest.mark.timeout(30)


def test_empty_ring_has_nothing_and_frames_appear_only_on_commit(make_ring):
    ring = make_ring(256)
    assert not ring.r.has_data() and ring.drain() == []
    write(ring.w, b"hello", ringmod.FLAG_CONTROL)
    assert ring.w.pending_bytes == 16 and not ring.r.has_data()
    seen = ring.doorbell.seen()
    ring.w.commit()
    assert ring.doorbell.seen() != seen           # the doorbell rang
    assert ring.r.has_data()
    assert ring.drain() == [(ringmod.FLAG_CONTROL, b"hello")]
    assert not ring.r.has_data() and ring.drain() == []


def test_frames_of_every_small_size_keep_their_bytes_and_order(make_ring):
    ring = make_ring(1024)
    bodies = [bytes(range(n % 256)) * 1 for n in range(0, 120)]
    for b in bodies:
        write(ring.w, b)
        ring.w.commit()
        assert ring.drain() == [(0, b)]


def test_wrap_around_many_times(make_ring):
    ring = make_ring(256)
    rng = random.Random(1)
    expected = []
    got = []
    flag_choices = [0, ringmod.FLAG_BATCH, ringmod.FLAG_BATCH | ringmod.FLAG_KEYED, ringmod.FLAG_CONTROL]
    for i in range(2000):
        body = rng.randbytes(rng.randrange(0, 100))
        flags = flag_choices[i % 4]
        if ring.capacity - (ring.w._wpos - ring.r._rpos) < 2 * 112:   # the next frame might not fit
            ring.w.commit()
            got += ring.drain()
        write(ring.w, body, flags)
        expected.append((flags, body))
        if rng.random() < 0.5:
            ring.w.commit()
    ring.w.commit()
    got += ring.drain()
    assert got == expected
    assert ring.w._wpos > 100 * 256            # positions never wrap, the offsets did


def test_a_frame_that_does_not_fit_the_tail_wraps_to_offset_zero(make_ring):
    ring = make_ring(256)
    write(ring.w, b"a" * 100)                  # 8 + 104 = 112 bytes at 0
    write(ring.w, b"b" * 100)                  # 112 bytes at 112, tail now 32
    ring.w.commit()
    assert ring.drain() == [(0, b"a" * 100), (0, b"b" * 100)]
    write(ring.w, b"c" * 40)                   # 48 > 32: WRAP marker, frame at offset 0
    ring.w.commit()
    assert ring.w._wpos == 256 + 48
    assert ring.drain() == [(0, b"c" * 40)]


def test_exact_fits_fill_the_ring_to_the_byte_without_a_wrap_marker(make_ring):
    ring = make_ring(256)
    for rnd in range(3):
        for i in range(4):
            write(ring.w, bytes([rnd * 4 + i]) * 56)   # 8 + 56 = 64 bytes: four fill the ring exactly
        assert ring.w._wpos - ring.r._rpos == 256    # full, and no padding or marker was needed
        ring.w.commit()
        assert [b for _, b in ring.drain()] == [bytes([rnd * 4 + i]) * 56 for i in range(4)]
    # a frame exactly as large as the tail goes there; the next one starts at offset 0
    write(ring.w, b"w" * 56)                           # 64 bytes at 0
    write(ring.w, b"x" * 120)                          # 128 bytes at 64 (120 is the largest whole body)
    write(ring.w, b"y" * 56)                           # exactly the 64-byte tail
    write_pos = ring.w._wpos
    ring.w.commit()
    assert ring.drain() == [(0, b"w" * 56), (0, b"x" * 120), (0, b"y" * 56)]
    assert write_pos % 256 == 0
    assert ring.w.max_body == 120


def test_a_full_ring_blocks_the_producer_until_the_consumer_frees_space(make_ring):
    ring = make_ring(256)
    for i in range(4):
        write(ring.w, bytes([i]) * 56)
    ring.w.commit()
    done = threading.Event()

    def produce():
        write(ring.w, b"late" * 10)
        ring.w.commit()
        done.set()

    t = threading.Thread(target=produce)
    t.start()
    try:
        assert not done.wait(0.3)                  # full: the producer sleeps on the space futex
        got = ring.drain()
        assert len(got) == 4
        assert done.wait(5), "producer did not wake up after the consumer freed space"
    finally:
        t.join(5)
    assert ring.drain() == [(0, b"late" * 10)]
    assert ring.w.blocked_seconds >= 0.2


def _consume_until(ring: Ring, count: int, timeout: float = 10.0) -> list:
    import time

    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        seen = ring.doorbell.seen()
        got += ring.drain()
        if len(got) >= count:
            break
        assert time.monotonic() < deadline, f"only {len(got)} of {count} frames arrived"
        ring.doorbell.wait(seen, 0.5)
    return got


@pytest.mark.parametrize("size", [10_000, 4096 * 3 + 5, 1 << 20])
def test_a_message_larger_than_the_ring_arrives_whole(make_ring, size):
    ring = make_ring(4096)
    big = random.Random(size).randbytes(size)
    parts = [big[:1000], memoryview(big)[1000:size // 2], bytearray(big[size // 2:])]

    def produce():
        ring.w.write(parts, size, ringmod.FLAG_BATCH)
        write(ring.w, b"after", ringmod.FLAG_CONTROL)
        ring.w.commit()

    t = threading.Thread(target=produce)
    t.start()
    try:
        got = _consume_until(ring, 2)
    finally:
        t.join(10)
    assert got[0][0] == ringmod.FLAG_BATCH and len(got[0][1]) == size and got[0][1] == big
    assert got[1] == (ringmod.FLAG_CONTROL, b"after")


def test_many_records_with_checksum_in_one_process(make_ring):
    ring = make_ring(64 << 10)
    rng = random.Random(7)
    n = 200_000
    sent_crc = recv_crc = 0
    received = 0

    def handle(flags, body):
        nonlocal recv_crc, received
        recv_crc = zlib.crc32(body, recv_crc)
        received += 1

    for i in range(n):
        body = i.to_bytes(4, "little") * rng.randrange(0, 8)
        sent_crc = zlib.crc32(body, sent_crc)
        write(ring.w, body)
        if ring.capacity - (ring.w._wpos - ring.r._rpos) < 128:   # about full: publish and drain
            ring.w.commit()
            ring.r.drain(handle)
    ring.w.commit()
    ring.r.drain(handle)
    assert received == n and recv_crc == sent_crc


def test_rings_of_one_inbox_are_independent_and_share_the_doorbell(make_ring):
    ring = make_ring(512, slots=3)
    seen = ring.doorbell.seen()
    for s in (2, 0, 1):
        write(ring.writers[s], f"slot{s}".encode())
        ring.writers[s].commit()
    assert (ring.doorbell.seen() - seen) & 0xFFFFFFFF == 3
    assert [ring.drain(s) for s in range(3)] == [[(0, b"slot0")], [(0, b"slot1")], [(0, b"slot2")]]


@pytest.mark.timeout(30)
def test_a_ring_holds_as_many_power_of_two_arrays_as_its_size_says(make_ring):
    # Four 1 MiB arrays, each framed with a few dozen bytes of headers, in a ring for 4 MiB of records:
    # without room for the headers the fourth wrapped and waited for the reader.
    import numpy as np

    from procflow.runtime.communication import codec

    ring = make_ring(ringmod.ring_capacity(4 << 20))
    arrays = [np.full(1 << 17, float(i)) for i in range(4)]   # 1 MiB of float64 each
    all_written = threading.Event()

    def write_all():
        for a in arrays:
            ring.w.write(*codec.encode(a))
        ring.w.commit()
        all_written.set()

    writer = threading.Thread(target=write_all)
    writer.start()
    fitted = all_written.wait(5)
    got = []
    while len(got) < 4:          # drain in any case, so a blocked writer finishes
        got += ring.drain()
    writer.join(10)
    assert fitted, "the fourth 1 MiB array did not fit in a ring sized for 4 MiB"
    assert [codec.decode_bytes(body)[0][0] for _, body in got] == [0.0, 1.0, 2.0, 3.0]
