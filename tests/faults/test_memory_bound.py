"""A consumer behind a full ring of tiny records decodes it in bounded slices (found by bench/soak.py:
whole-ring reads made the private memory of every middle stage grow by tens of MB)."""

from __future__ import annotations

import msgpack

from procflow.runtime.communication.packet import RecordBatch
from procflow.runtime.communication.queue_descriptor.shm_queue import READ_BUDGET, ShmInbox
from procflow.runtime.communication.shm import segment_name


def test_gate_reads_a_full_ring_in_bounded_slices():
    capacity = 4 << 20
    inbox = ShmInbox(segment_name("membound", "in"), (0,), capacity, 32 << 10)
    owner = inbox.create()
    writer = inbox.edge(0).open_writer()
    gate = inbox.open_gate()
    try:
        packed = msgpack.packb(7)
        n = 0
        while n < 1_000_000:   # about 1 MB of one-byte records, well under the ring's capacity
            writer.send_record(packed, None)
            n += 1
        writer.flush()
        got, reads, largest = 0, 0, 0
        while got < n:
            items = gate.read(0)
            assert items and all(type(b) is RecordBatch for b in items)
            got += sum(len(b) for b in items)
            reads += 1
            largest = max(largest, sum(len(b) for b in items))
        assert got == n
        assert reads > 1
        assert largest <= READ_BUDGET + (32 << 10)   # one ring byte holds at most one such record
    finally:
        writer.close()
        gate.close()
        owner.close()
        owner.unlink()
