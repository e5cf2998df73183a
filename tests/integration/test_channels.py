"""Channels under load and at rest: idle cost, backpressure, huge records, a producer/consumer pair."""

from __future__ import annotations

import os
import time
import zlib

import multiprocess
import numpy as np
import pytest

from procflow import BatchFunction, MapFunction, SourceFunction
from procflow.runtime.communication import ring as ringmod
from procflow.runtime.communication.shm import SharedSegment, segment_name

from .conftest import wait_for

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS      # utime + stime


class Nothing(SourceFunction):
    def open(self):
        with open(self.path, "w") as f:
            f.write(str(os.getpid()))

    def __init__(self, path):
        self.path = path

    def execute(self):
        return None          # nothing right now: the source backs off


class PidMap(MapFunction):
    def __init__(self, path):
        self.path = path

    def open(self):
        with open(self.path, "w") as f:
            f.write(str(os.getpid()))

    def execute(self, record):
        return record


@pytest.mark.timeout(60)
def test_a_task_waiting_on_empty_input_burns_no_cpu(make_env, mode, tmp_path):
    env = make_env(mode)
    src_file, map_file = tmp_path / "source.pid", tmp_path / "map.pid"
    env.from_source(Nothing, str(src_file)).map(PidMap, str(map_file)).collect()
    job = env.submit(autostop=False)
    consumer = int(wait_for(lambda: map_file.exists() and map_file.read_text(), what="the map's pid"))
    source = int(wait_for(lambda: src_file.exists() and src_file.read_text(), what="the source's pid"))
    wait_for(lambda: job.metrics["map_0"]["started"] > 0, what="the map to start")
    c0, s0, t0 = cpu_seconds(consumer), cpu_seconds(source), time.monotonic()
    time.sleep(3.0)          # the measurement window, not synchronisation
    c1, s1, t1 = cpu_seconds(consumer), cpu_seconds(source), time.monotonic()
    env.stop()
    assert job.status == "stopped"
    window = t1 - t0
    consumer_share, source_share = (c1 - c0) / window, (s1 - s0) / window
    print(f"idle CPU over {window:.1f}s: consumer {consumer_share:.2%}, backing-off source {source_share:.2%}")
    assert consumer_share < 0.02
    assert source_share < 0.10      # the back-off caps at 50 ms, so a quiet source stays cheap too


class Blobs(BatchFunction):
    def __init__(self, count, size):
        self.count, self.size = count, size

    def open(self):
        self.i = 0

    def execute(self):
        if self.i == self.count:
            return None
        self.i += 1
        return self.i.to_bytes(4, "little") * (self.size // 4)


class Slow(MapFunction):
    def execute(self, record):
        time.sleep(0.0003)     # a slow consumer
        return zlib.crc32(record)


@pytest.mark.timeout(60)
def test_a_small_ring_applies_backpressure_and_loses_nothing(make_env):
    env = make_env(("shm", "fork"), ring_bytes=64 << 10)
    # start_new_chain: a ring between source and map (chained, they would share a task, and no ring)
    result = env.from_batch(Blobs, 3000, 1024).map(Slow).start_new_chain().collect()
    job = env.submit()
    expected = sorted(zlib.crc32(i.to_bytes(4, "little") * 256) for i in range(1, 3001))
    assert sorted(result.results()) == expected
    m = job.metrics
    assert m["batch_0"]["blocked_s"] > 0.1, m["batch_0"]
    assert m["map_0"]["records_in"] == 3000


N_FLOATS = 200 * (1 << 20) // 8      # 200 MiB of float64


class BigArray(BatchFunction):
    def open(self):
        self.sent = False

    def execute(self):
        if self.sent:
            return None
        self.sent = True
        return np.arange(N_FLOATS, dtype=np.float64)


class CheckBig(MapFunction):
    def execute(self, arr):
        ok = np.array_equal(arr, np.arange(N_FLOATS, dtype=np.float64))
        return ok, arr.dtype.str, arr.shape, arr.flags.writeable


@pytest.mark.timeout(90)
def test_a_200_mib_array_crosses_a_4_mib_ring_intact(make_env):
    env = make_env(("shm", "fork"), ring_bytes=4 << 20)
    result = env.from_batch(BigArray).map(CheckBig).disable_chaining().collect()   # over the ring
    started = time.monotonic()
    env.submit()
    print(f"200 MiB through a 4 MiB ring in {time.monotonic() - started:.2f}s")
    # Read-only: it arrives as a view on the slab it travelled in (issue 19, zero-copy arrays).
    assert result.results() == [(True, "<f8", (N_FLOATS,), False)]


# -- a raw ring between two processes ------------------------------------------------------------------

N_RECORDS = 1_000_000
_END = ringmod.FLAG_CONTROL


def _produce(name: str, capacity: int, count: int) -> None:
    seg = SharedSegment(name)
    writer = ringmod.RingWriter(seg, 0, capacity)
    crc = 0
    pending = 0
    for i in range(count):
        body = i.to_bytes(8, "little")
        crc = zlib.crc32(body, crc)
        writer.write([body], 8)
        pending += 1
        if pending == 256:
            writer.commit()
            pending = 0
    end = crc.to_bytes(4, "little") + count.to_bytes(8, "little")
    writer.write([end], len(end), _END)
    writer.close()
    seg.close()


@pytest.mark.timeout(90)
def test_a_million_records_between_two_processes_with_checksum():
    capacity = 256 << 10
    seg = SharedSegment(segment_name("ringpair", "in"), ringmod.inbox_size(1, capacity), create=True)
    reader = ringmod.RingReader(seg, 0, capacity)
    doorbell = ringmod.Doorbell(seg)
    state = {"crc": 0, "count": 0, "expected_next": 0, "end": None}

    def handle(flags, body):
        if flags & _END:
            state["end"] = bytes(body)
            return
        value = int.from_bytes(body, "little")
        assert value == state["expected_next"], "record out of order"
        state["expected_next"] += 1
        state["crc"] = zlib.crc32(body, state["crc"])
        state["count"] += 1

    proc = multiprocess.get_context("fork").Process(target=_produce, args=(seg.name, capacity, N_RECORDS))
    started = time.monotonic()
    proc.start()
    try:
        while state["end"] is None:
            seen = doorbell.seen()
            if not reader.drain(handle):
                assert proc.is_alive() or reader.has_data(), "producer died before the end frame"
                doorbell.wait(seen, 0.5)
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
        reader.close()
        seg.close()
        seg.unlink()
    elapsed = time.monotonic() - started
    print(f"{N_RECORDS} records through one ring in {elapsed:.2f}s ({N_RECORDS / elapsed:,.0f}/s)")
    assert proc.exitcode == 0
    assert state["count"] == N_RECORDS
    assert state["end"] == state["crc"].to_bytes(4, "little") + N_RECORDS.to_bytes(8, "little")


# -- bytes-like records keep their types (issue 22 item 6: bytearray and memoryview arrived as bytes) ---

def _buffer_records() -> list:
    return [bytearray(b"top level"), memoryview(b"view"), b"plain bytes",
            [bytearray(b"in a list"), b"bytes", "str"],
            {"blob": bytearray(b"in a dict"), "pair": (memoryview(np.arange(4, dtype=np.int32)), bytearray())},
            (1, [memoryview(np.arange(6, dtype=np.float64).reshape(2, 3))], bytearray(b"\xc4\x00"))]


def _describe(value, views_read_only=None):
    """Types, formats and contents all the way down, as plain data the driver can collect."""
    if isinstance(value, memoryview):
        readonly = value.readonly if views_read_only is None else views_read_only
        return "memoryview", value.format, value.shape, readonly, value.tolist()
    if isinstance(value, (list, tuple)):
        return type(value).__name__, [_describe(v, views_read_only) for v in value]
    if isinstance(value, dict):
        return "dict", {k: _describe(v, views_read_only) for k, v in value.items()}
    return type(value).__name__, bytes(value) if isinstance(value, (bytes, bytearray)) else value


class BufferSource(BatchFunction):
    """Emits the records of `_buffer_records`, built in the source task (a memoryview cannot be pickled)."""

    def open(self):
        self.items = _buffer_records()

    def execute(self):
        return self.items.pop(0) if self.items else None


class Describe(MapFunction):
    def execute(self, record):
        return _describe(record), _describe(self.ctx.get_key())


def _run_buffer_pipeline(env) -> list:
    result = (env.from_batch(BufferSource).keyby(lambda r: bytearray(b"key"))
              .map(Describe, parallelism=2).collect())
    env.submit()
    return sorted(result.results(), key=repr)


def _expected_buffer_descriptions() -> list:
    # What was sent, except that every memoryview arrives read-only (it views a received copy).
    key = _describe(bytearray(b"key"))
    return sorted(((_describe(r, views_read_only=True), key) for r in _buffer_records()), key=repr)


def test_bytearrays_and_memoryviews_keep_their_types_on_every_backend(backend):
    assert _run_buffer_pipeline(backend.make_env()) == _expected_buffer_descriptions()
