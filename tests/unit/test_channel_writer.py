"""The shm channel's writer and gate in one process: batching paths and waking rules."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from procflow.runtime.communication import codec
from procflow.runtime.communication import ring as ringmod
from procflow.runtime.communication.packet import ChannelEnd, Packet, packets
from procflow.runtime.communication.queue_descriptor import shm_queue
from procflow.runtime.communication.queue_descriptor.shm_queue import ShmInbox


@pytest.fixture
def inbox():
    box = ShmInbox(f"procflow_{os.getpid()}_unit_{time.monotonic_ns()}", (0,), 1 << 20)
    owner = box.create()
    yield box
    shm_queue.detach_all()
    owner.close()
    owner.unlink()


def read_all(gate) -> list:
    got = []
    while True:
        items = gate.read(5.0)
        assert items, "the gate slept through published data"
        for item in packets(items):
            if isinstance(item, ChannelEnd):
                return got
            got.append(item)


def test_switching_between_keyed_and_unkeyed_records_loses_nothing(inbox):
    # Regression: the record that switched the batch's keyedness was appended to the batch just
    # written, and vanished (a join's end-of-input records after its keyed output).
    writer = inbox.edge(0).open_writer()
    gate = inbox.open_gate()
    writer.send_object("k1", "a", True)
    writer.send_object("plain", None, False)
    writer.send_object("k2", 0, True)
    writer.send_control("stop")
    got = [(p.payload, p.keyed, p.partition_key) for p in read_all(gate)]
    assert got == [("k1", True, "a"), ("plain", False, None), ("k2", True, 0)]
    writer.close()
    gate.close()


@pytest.mark.timeout(30)
def test_a_record_larger_than_the_ring_arrives_without_stalls(inbox):
    # Regression: a bounded read that consumed only fragments returned nothing, and the gate then
    # slept on a doorbell the producer had already rung, once per fragment (about 1 s each).
    array = np.arange(6 << 20 >> 3, dtype=np.float64)   # 6 MiB through a 1 MiB ring
    writer = inbox.edge(0).open_writer()
    gate = inbox.open_gate()

    def produce() -> None:
        writer.send_single(*codec.encode(array))
        writer.send_control("stop")

    thread = threading.Thread(target=produce)
    started = time.monotonic()
    thread.start()
    got = read_all(gate)
    elapsed = time.monotonic() - started
    thread.join()
    assert len(got) == 1 and isinstance(got[0], Packet) and np.array_equal(got[0].payload, array)
    assert elapsed < 2.0, f"took {elapsed:.1f}s: the gate waited on a stale doorbell"
    writer.close()
    gate.close()


def test_spin_policy_grows_after_short_sleeps_and_stops_after_long_ones():
    policy = ringmod.SpinPolicy(budget=0)
    for _ in range(8):
        policy.slept(ringmod.SHORT_SLEEP / 10)
    assert policy.budget == ringmod.SPIN_CHECKS      # quick answers: spin the full budget
    for _ in range(8):
        policy.slept(ringmod.SHORT_SLEEP * 10)
    assert policy.budget == 0                        # slow producer: sleep at once, burn nothing


@pytest.mark.timeout(30)
def test_a_gate_behind_a_slow_producer_stops_spinning(inbox):
    # A consumer woken every few milliseconds (a collector behind 1 ms-per-record maps) that spun before
    # each sleep took a quarter of a core from the maps on a 2-core machine.
    writer = inbox.edge(0).open_writer()
    gate = inbox.open_gate()
    assert gate._spin.budget == ringmod.SPIN_CHECKS
    stop = threading.Event()

    def produce() -> None:
        i = 0
        while not stop.wait(0.003):        # a slow producer: one record per 3 ms
            writer.send_object(i, None, False)
            writer.flush()
            i += 1

    thread = threading.Thread(target=produce)
    thread.start()
    try:
        for _ in range(10):
            assert gate.read(None)
    finally:
        stop.set()
        thread.join()
    assert gate._spin.budget == 0
    writer.close()
    gate.close()


def test_a_router_with_one_shm_channel_sends_straight_to_it_and_counts_every_record(inbox):
    from procflow.runtime.communication.router import BaseRouter, OutputGroup

    writer = inbox.edge(0).open_writer()
    gate = inbox.open_gate()
    router = BaseRouter([OutputGroup("down", "round_robin", [writer])])
    assert router.fast_route == writer.send_object     # what operators call: no routing layer per record
    sent = [{"a": 1}, np.arange(3), ("t", 1), {"k": 2}, np.zeros((2, 2), dtype=np.float32), "end"]
    keys = [None, None, None, "key", 7, None]
    for i, (record, key) in enumerate(zip(sent, keys)):
        router.route(record, key, key is not None)
        assert router.records_out == i + 1               # pending records count too
    writer.send_control("stop")
    got = read_all(gate)
    assert len(got) == len(sent) == router.records_out
    for packet, record, key in zip(got, sent, keys):
        assert (packet.keyed, packet.partition_key) == (key is not None, key)
        if isinstance(record, np.ndarray):
            assert packet.payload.dtype == record.dtype and np.array_equal(packet.payload, record)
        else:
            assert packet.payload == record and type(packet.payload) is type(record)
    writer.close()
    gate.close()


def test_send_many_keeps_order_through_arrays_and_keyed_records_and_bounds_each_frame(inbox):
    writer = inbox.edge(0).open_writer()
    gate = inbox.open_gate()
    sent: list = []
    writer.send_object("keyed", "k", True)          # a keyed batch in progress
    sent.append(("keyed", "k"))
    chunks = [list(range(5000)), [{"a": 1}, np.arange(4), "after-array"], [], list(range(5000, 5300))]
    for chunk in chunks:
        writer.send_many(chunk)
        sent += [(r, None) for r in chunk]
        assert len(writer._pending) < writer._pending_limit    # whole frames leave as soon as they fill
    writer.send_control("stop")
    batches = []
    got = []
    while True:
        items = gate.read(5.0)
        assert items, "the gate slept through published data"
        batches += [len(i) for i in items if not isinstance(i, ChannelEnd)]
        expanded = list(packets(items))
        got += [p for p in expanded if not isinstance(p, ChannelEnd)]
        if any(isinstance(p, ChannelEnd) for p in expanded):
            break
    assert len(got) == len(sent) == writer.objects_sent
    for packet, (record, key) in zip(got, sent):
        assert packet.partition_key == key
        if isinstance(record, np.ndarray):
            assert np.array_equal(packet.payload, record)
        else:
            assert packet.payload == record
    assert max(batches) <= shm_queue.ShmChannelWriter._MAX_PENDING
    writer.close()
    gate.close()


def test_the_gate_publishes_what_it_took_and_what_the_task_finished(inbox):
    writer = inbox.edge(0).open_writer()
    gate = inbox.open_gate()
    writer.send_many(list(range(10)))
    assert writer.progress() == (10, 0, 0, 0.0)
    writer.flush()
    assert sum(len(b) for b in gate.read(5.0)) == 10
    handed_at = time.perf_counter()
    assert writer.progress() == (10, 10, 0, 0.0)  # taken, still being processed
    worked = busy_wait(0.02)                      # the task works on the batch for 20 ms
    assert gate.read(0) == []                     # asking again means the last batch is finished
    returned_at = time.perf_counter()
    sent, taken, done, busy_s = writer.progress()
    assert (sent, taken, done) == (10, 10, 10)
    # the time it worked on the batch, not the time the records waited in the ring before it
    assert worked <= busy_s <= returned_at - handed_at + 0.005
    assert gate.read(0) == [] and writer.progress()[3] == busy_s   # no new records, no more busy time
    writer.close()
    gate.close()


class ListQueue:
    """Stands in for the multiprocessing queue: keeps what is put."""

    def __init__(self) -> None:
        self.items: list = []

    def put_nowait(self, item) -> None:
        self.items.append(item)


def test_mp_queue_items_are_bounded_in_bytes_as_well_as_records():
    # The mp queue's bound counts items, so an item's bytes bound the memory a fast source can park
    # in front of a slow sink: 512 records of 16 KiB made 8 MiB items.
    from procflow.runtime.communication.queue_descriptor import mp_queue

    q = ListQueue()
    writer = mp_queue.MpChannelWriter(q, slot=0, batch_records=512)
    record = {"payload": b"x" * (16 << 10)}
    for _ in range(100):
        writer.send_object(record, None, False)
    writer.flush()
    sizes = [sum(len(data) for _, data, _ in batch) for _, batch in q.items]
    assert sum(len(batch) for _, batch in q.items) == 100
    assert max(sizes) <= mp_queue.ITEM_BYTES + len(record["payload"]) + 64
    assert len(q.items) >= 100 * (16 << 10) // (mp_queue.ITEM_BYTES + (16 << 10) + 64)


def busy_wait(seconds: float) -> float:
    """Work (not sleep) for `seconds`; returns how long it took."""
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        pass
    return time.perf_counter() - started


def test_bytearrays_in_a_batch_come_back_as_bytearrays(inbox):
    """Issue 22 item 6, on the shm writer's batched path (records packed as one list)."""
    records = list(range(300)) + [{"row": i, "blob": bytearray([i % 256]), "v": i * 0.5} for i in range(300)]
    writer = inbox.edge(0).open_writer()
    gate = inbox.open_gate()
    writer.send_many(records)
    writer.send_control("stop")
    got = [p.payload for p in read_all(gate)]
    assert got == records
    assert [type(r["blob"]) for r in got[300:]] == [bytearray] * 300
    writer.close()
    gate.close()


def _frame_flags(writer) -> list[int]:
    """The flags of every frame the writer wrote so far, read back from its ring without consuming."""
    seen: list[int] = []
    real_write = writer._ring.write

    def spy(parts, nbytes, flags=0):
        seen.append(flags)
        return real_write(parts, nbytes, flags)

    writer._ring.write = spy
    return seen


@pytest.mark.parametrize("keyed", [False, True], ids=["unkeyed", "keyed"])
def test_tuple_records_travel_as_arrays_and_arrive_as_tuples_with_their_insides_intact(inbox, keyed):
    # Issue 19: a (key, value) tuple went through msgpack's extension hook, a nested pack per record (a
    # third of a keyed hop). A batch of plain tuples now travels as arrays, flagged, and is rebuilt.
    writer = inbox.edge(0).open_writer()
    flags = _frame_flags(writer)
    gate = inbox.open_gate()
    records = [("user1", i, (i, "inner tuple"), [i, "inner list"], {"d": (1, 2)}) for i in range(300)]
    for r in records:
        writer.send_object(r, r[0], keyed)
    writer.send_control("stop")
    got = read_all(gate)
    assert [p.payload for p in got] == records
    assert all(type(p.payload) is tuple and type(p.payload[2]) is tuple and type(p.payload[3]) is list
               for p in got)
    assert [p.partition_key for p in got] == ([r[0] for r in records] if keyed else [None] * 300)
    data_frames = [f for f in flags if not f & ringmod.FLAG_CONTROL]
    assert data_frames and all(f & ringmod.FLAG_TUPLES for f in data_frames)
    writer.close()
    gate.close()


def test_a_batch_mixing_tuples_and_lists_keeps_each_type(inbox):
    writer = inbox.edge(0).open_writer()
    flags = _frame_flags(writer)
    gate = inbox.open_gate()
    records = [(i, "t") if i % 2 else [i, "l"] for i in range(50)]
    for r in records:
        writer.send_object(r, None, False)
    writer.send_control("stop")
    got = [p.payload for p in read_all(gate)]
    assert got == records and [type(r) for r in got] == [type(r) for r in records]
    assert not any(f & ringmod.FLAG_TUPLES for f in flags)
    writer.close()
    gate.close()
