"""Zero-copy arrays on a shm edge, writer and gate in one process: views, their lifetime, slab reuse."""

from __future__ import annotations

import gc
import os
import threading
import time

import numpy as np
import pytest

from procflow.runtime.communication import slabs
from procflow.runtime.communication.packet import ChannelEnd, packets
from procflow.runtime.communication.queue_descriptor import shm_queue
from procflow.runtime.communication.queue_descriptor.shm_queue import ShmInbox
from procflow.runtime.communication.shm import SHM_DIR

BIG = slabs.SLAB_MIN // 8 * 2     # float64 elements of an array that travels in a slab (128 KiB)
ELEMS = slabs.SLAB_MIN            # elements of any dtype: at least SLAB_MIN bytes


@pytest.fixture
def inbox():
    # A small ring (256 KiB): a few dozen arrays wrap it many times over.
    box = ShmInbox(f"procflow_{os.getpid()}_unit_{time.monotonic_ns()}", (0,), 256 << 10)
    owner = box.create()
    yield box
    shm_queue.detach_all()
    owner.close()
    owner.unlink()


def slab_names(box: ShmInbox) -> list[str]:
    return [n for n in os.listdir(SHM_DIR) if n.startswith(box.name + "_")]


def receive(gate, n: int) -> list:
    """The next `n` records (payloads), reading as a task does."""
    got: list = []
    while len(got) < n:
        items = gate.read(5.0)
        assert items, "the gate slept through published data"
        got += [p.payload for p in packets(items) if not isinstance(p, ChannelEnd)]
    return got


def send(writer, records: list, key=None, keyed: bool = False) -> None:
    for r in records:
        writer.send_object(r, key, keyed)
    writer.flush()


def stream(writer, gate, records: list) -> list:
    """Send `records` from a producer thread (it may wait for the consumer, as a producer task does)
    while this thread receives them all, keeping every one; returns what arrived."""
    def produce():
        send(writer, records)
        writer.send_control("stop")

    producer = threading.Thread(target=produce)
    producer.start()
    got: list = []
    try:
        while True:
            items = gate.read(10.0)
            assert items, "the gate slept through published data"
            got += [p.payload for p in packets(items) if not isinstance(p, ChannelEnd)]
            if any(isinstance(p, ChannelEnd) for p in packets(items)):
                return got
    finally:
        producer.join(30)


def test_a_large_array_arrives_as_a_read_only_view_on_a_slab(inbox):
    writer, gate = inbox.edge(0).open_writer(), inbox.open_gate()
    sent = np.arange(BIG, dtype=np.float64)
    send(writer, [sent])
    [got] = receive(gate, 1)
    assert np.array_equal(got, sent)
    assert slabs.is_slab_view(got)
    assert not got.flags.writeable
    with pytest.raises(ValueError):
        got[0] = 1.0
    with pytest.raises(ValueError):
        got.setflags(write=True)
    assert writer.slabs.sent == 1


def test_a_small_array_is_copied_out_of_the_ring_and_stays_writable(inbox):
    writer, gate = inbox.edge(0).open_writer(), inbox.open_gate()
    send(writer, [np.arange(16, dtype=np.int32)])
    [got] = receive(gate, 1)
    assert got.flags.writeable and not slabs.is_slab_view(got)
    assert writer.slabs.sent == 0


@pytest.mark.parametrize("make", [
    lambda: np.arange(ELEMS, dtype=np.float64),
    lambda: np.arange(ELEMS, dtype=np.int16).reshape(64, -1),
    lambda: np.asfortranarray(np.arange(ELEMS, dtype=np.float32).reshape(128, -1)),   # F order
    lambda: np.arange(4 * ELEMS, dtype=np.int64).reshape(256, -1)[::2, 1::2],          # not contiguous
    lambda: (np.arange(ELEMS) % 3 == 0),
    lambda: np.arange(ELEMS // 4, dtype=np.complex128),
    lambda: np.array([b"abcdefgh"] * (ELEMS // 8), dtype="S8"),
    lambda: np.arange(ELEMS, dtype=">u4"),                                              # big-endian
    lambda: np.arange(ELEMS, dtype=np.uint8).reshape(2, 4, -1),                        # 3-d
], ids=["f8", "i2-2d", "f4-fortran", "i8-strided", "bool", "c16", "bytes", "u4-big-endian", "u1-3d"])
def test_arrays_of_any_dtype_shape_and_order_arrive_equal(inbox, make):
    writer, gate = inbox.edge(0).open_writer(), inbox.open_gate()
    sent = make()
    assert sent.nbytes >= slabs.SLAB_MIN
    send(writer, [sent], "key", True)
    [got] = receive(gate, 1)
    assert got.dtype == sent.dtype and got.shape == sent.shape
    assert np.array_equal(got, sent)
    assert slabs.is_slab_view(got)


def test_kept_views_never_see_overwritten_bytes_while_the_ring_wraps_many_times(inbox):
    # The hard rule: a user who keeps received arrays (a sink storing them in a list) must still see
    # what was sent, however much traffic followed. 200 arrays of 128 KiB is 100 turns of the ring.
    writer, gate = inbox.edge(0).open_writer(), inbox.open_gate()
    kept = stream(writer, gate, [np.full(BIG, float(i)) for i in range(200)])
    assert len(kept) == 200
    for i, arr in enumerate(kept):
        assert arr.shape == (BIG,) and arr[0] == i and arr[-1] == i and (arr == i).all(), i
    # The pool lent every slab it may have to views still kept; the rest came through the ring.
    assert writer.slabs.declined > 0
    assert writer.slabs.sent + writer.slabs.declined == 200


def test_a_released_view_frees_its_slab_for_the_next_array(inbox):
    writer, gate = inbox.edge(0).open_writer(), inbox.open_gate()
    for i in range(50):
        send(writer, [np.full(BIG, float(i))])
        [got] = receive(gate, 1)
        assert got[0] == i
        del got
    assert writer.slabs.sent == 50 and writer.slabs.declined == 0
    assert len(slab_names(inbox)) == 1   # one slab, used fifty times


def test_a_view_derived_from_a_received_array_keeps_its_slab(inbox):
    writer, gate = inbox.edge(0).open_writer(), inbox.open_gate()
    send(writer, [np.full(BIG, 7.0)])
    [got] = receive(gate, 1)
    part = got[::4].reshape(4, -1)[1:]
    del got
    gc.collect()
    # More arrays than the pool has slabs, each dropped after its call: the held one is not reused.
    for i in range(20):
        send(writer, [np.full(BIG, float(i))])
        [later] = receive(gate, 1)
        assert later[0] == i
        del later
    assert (part == 7.0).all()
    assert slabs.is_slab_view(part)


def test_the_producer_does_not_wait_for_slabs_the_consumer_keeps(inbox):
    # Every slab held by a view that outlived its call: waiting for one would be for ever. The arrays
    # take the ring instead (pytest-timeout catches a producer that waits).
    writer, gate = inbox.edge(0).open_writer(), inbox.open_gate()
    kept = stream(writer, gate, [np.full(BIG, float(i)) for i in range(30)])
    assert [a[0] for a in kept] == list(range(30))
    assert writer.slabs.declined > 0


def test_owned_copies_slab_views_and_nothing_else(inbox):
    writer, gate = inbox.edge(0).open_writer(), inbox.open_gate()
    send(writer, [np.arange(BIG, dtype=np.float64)])
    [got] = receive(gate, 1)
    mine = slabs.owned(got)
    assert mine is not got and mine.flags.writeable and np.array_equal(mine, got)
    assert slabs.owned(got[1:]).flags.writeable
    plain = np.arange(3)
    assert slabs.owned(plain) is plain
    assert slabs.owned("text") == "text"


def test_slabs_go_when_the_driver_unlinks_the_inbox_even_if_the_producer_did_not_close(inbox):
    writer, gate = inbox.edge(0).open_writer(), inbox.open_gate()
    send(writer, [np.zeros(BIG)])
    receive(gate, 1)
    assert len(slab_names(inbox)) == 1
    # The fixture's owner.unlink() is the driver's cleanup; the autouse leak check then finds nothing.


def test_a_full_dev_shm_sends_arrays_through_the_ring(inbox, monkeypatch):
    from procflow.core.errors import ShmCapacityError

    def no_room(*args, **kwargs):
        raise ShmCapacityError("no room")

    monkeypatch.setattr(slabs._Slab, "__init__", no_room)
    writer, gate = inbox.edge(0).open_writer(), inbox.open_gate()
    got = stream(writer, gate, [np.full(BIG, float(i)) for i in range(5)])
    assert [a[0] for a in got] == list(range(5))
    assert writer.slabs.sent == 0 and writer.slabs.declined == 5
    assert all(a.flags.writeable for a in got)
