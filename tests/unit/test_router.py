"""BaseRouter and stable_hash, driven with in-memory writers (no processes, no shared memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from collections import Counter

import numpy as np
import pytest

from procflow.runtime.communication import codec
from procflow.runtime.communication.keys import UnstableKeyError
from procflow.runtime.communication.packet import packets
from procflow.runtime.communication.queue_descriptor.base import BatchDecoder, ChannelWriter
from procflow.runtime.communication.router import BaseRouter, OutputGroup, stable_hash

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class RecordingWriter(ChannelWriter):
    """Decodes what the router sends, the way a receiving input gate would."""

    def __init__(self) -> None:
        self.items: list = []
        self.controls: list = []
        self._decoder = BatchDecoder(0, 0)

    def send_record(self, packed, key_packed):
        if key_packed is None:
            self._decoder.batch(packed, False, self.items)
        else:
            self._decoder.batch(key_packed + packed, True, self.items)

    def send_single(self, parts, nbytes):
        data = b"".join(bytes(p) for p in parts)
        assert len(data) == nbytes
        self._decoder.single(memoryview(data), self.items)

    def send_control(self, signal):
        self.controls.append(signal)

    def flush(self):
        pass

    @property
    def has_pending(self):
        return False

    def close(self):
        pass

    @property
    def packets(self) -> list:
        return list(packets(self.items))

    @property
    def records(self):
        return [p.payload for p in self.packets]


class BatchingWriter(RecordingWriter):
    """Takes any object and counts them, like the shm channel: what lets a router hand it slices."""

    sends_anything = True

    def __init__(self) -> None:
        super().__init__()
        self.objects_sent = 0
        self.many_calls = 0

    def send_object(self, record, key, keyed):
        self.objects_sent += 1
        super().send_object(record, key, keyed)

    def send_many(self, records):
        self.many_calls += 1
        super().send_many(records)


def make_router(n, strategy, *, selector=None, partitioner=None, parallel_index=0, groups=1,
                writer=RecordingWriter):
    all_writers = []
    specs = []
    for g in range(groups):
        writers = [writer() for _ in range(n)]
        all_writers.append(writers)
        specs.append(OutputGroup(f"down{g}", strategy, writers, selector, partitioner))
    return BaseRouter(specs, parallel_index), all_writers if groups > 1 else all_writers[0]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("upstream_index", [0, 1, 5])
@pytest.mark.parametrize("count", [0, 1, 2, 10, 1001])
def test_round_robin_counts_differ_by_at_most_one(n, upstream_index, count):
    router, writers = make_router(n, "round_robin", parallel_index=upstream_index)
    for i in range(count):
        router.route(i, None, False)
    counts = [len(w.packets) for w in writers]
    assert sum(counts) == count
    assert max(counts) - min(counts) <= 1
    assert sorted(r for w in writers for r in w.records) == list(range(count))
    for w in writers:      # each channel keeps the order of its records
        assert w.records == sorted(w.records)


def test_round_robin_upstream_instances_start_at_different_offsets():
    # one record from each of three upstream instances lands on three different downstream instances
    firsts = []
    for upstream in range(3):
        router, writers = make_router(3, "round_robin", parallel_index=upstream)
        router.route("x", None, False)
        firsts.append(next(i for i, w in enumerate(writers) if w.packets))
    assert sorted(firsts) == [0, 1, 2]


def test_hash_sends_each_key_to_one_instance_and_carries_the_key():
    router, writers = make_router(4, "hash", selector=lambda r: r["k"])
    records = [{"k": k, "i": i} for i in range(50) for k in ("a", "b", 0, "", (), None, (1, "x"), 17, False)]
    for r in records:
        router.route(r, None, False)
    seen: dict = {}
    for idx, w in enumerate(writers):
        for p in w.packets:
            assert p.keyed and p.partition_key == p.payload["k"]
            assert type(p.partition_key) is type(p.payload["k"])
            assert seen.setdefault(repr(p.partition_key), idx) == idx
            assert idx == stable_hash(p.partition_key) % 4
    assert sum(len(w.packets) for w in writers) == len(records)


@pytest.mark.parametrize("key", [0, "", (), False, None, 0.0, b""])
def test_falsy_keys_are_real_keys(key):
    """A falsy key must route by hash (SAGE treated it as "no key" and round-robined it)."""
    router, writers = make_router(5, "hash", selector=lambda r: key)
    for i in range(20):
        router.route(i, None, False)
    used = [i for i, w in enumerate(writers) if w.packets]
    assert used == [stable_hash(key) % 5]
    assert all(p.keyed and p.partition_key == key and type(p.partition_key) is type(key)
               for p in writers[used[0]].packets)


def test_key_carried_from_upstream_routes_by_hash_without_a_selector():
    router, writers = make_router(3, "hash")
    for i in range(30):
        router.route(i, "same", True)
    assert [len(w.packets) for w in writers].count(30) == 1
    # an unkeyed record on a hash edge (nothing to hash) is spread round-robin instead of dropped
    router2, writers2 = make_router(3, "hash")
    for i in range(30):
        router2.route(i, None, False)
    assert [len(w.packets) for w in writers2] == [10, 10, 10]


def test_broadcast_sends_every_record_to_every_instance():
    router, writers = make_router(3, "broadcast", selector=lambda r: r)
    payloads = [1, "two", (3,), np.arange(4), {"five": [5]}]
    for p in payloads:
        router.route(p, None, False)
    for w in writers:
        assert len(w.records) == len(payloads)
        for got, want in zip(w.records, payloads):
            if isinstance(want, np.ndarray):
                assert np.array_equal(got, want)
            else:
                assert got == want and type(got) is type(want)
    assert router.records_out == len(payloads)   # one emit, however many copies


def test_custom_partitioner_one_index():
    router, writers = make_router(4, "custom", selector=lambda r: r, partitioner=lambda key, n: (key * 3) % n)
    for i in range(40):
        router.route(i, None, False)
    for idx, w in enumerate(writers):
        assert all((r * 3) % 4 == idx for r in w.records)
        assert len(w.records) == 10


def test_custom_partitioner_numpy_index_and_several_indices():
    router, writers = make_router(3, "custom", selector=lambda r: r,
                                  partitioner=lambda key, n: np.int64(2) if key == 0 else [0, n - 1])
    router.route(0, None, False)
    router.route(1, None, False)
    assert [w.records for w in writers] == [[1], [], [0, 1]]


@pytest.mark.parametrize("bad", [3, -1, [0, 5]])
def test_custom_partitioner_out_of_range_raises(bad):
    router, _ = make_router(3, "custom", selector=lambda r: r, partitioner=lambda key, n: bad)
    with pytest.raises(ValueError, match="0..2"):
        router.route("x", None, False)


def test_each_group_partitions_independently():
    router, (g0, g1) = make_router(2, "round_robin", groups=2)
    for i in range(4):
        router.route(i, None, False)
    assert [w.records for w in g0] == [[0, 2], [1, 3]]
    assert [w.records for w in g1] == [[0, 2], [1, 3]]


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("upstream_index", [0, 2])
@pytest.mark.parametrize("strategy", ["round_robin", "hash"])
def test_route_many_places_records_exactly_as_route_one_by_one(n, upstream_index, strategy):
    # unkeyed records on a hash edge are spread round robin, so both strategies take slices
    chunked, chunked_writers = make_router(n, strategy, parallel_index=upstream_index, writer=BatchingWriter)
    single, single_writers = make_router(n, strategy, parallel_index=upstream_index, writer=BatchingWriter)
    assert chunked.routes_many
    chunks = [[], [0], list(range(1, 8)), [8, 9], list(range(10, 200)), [None, {"a": 1}, ("t",)]]
    for chunk in chunks:
        chunked.route_many(chunk)
        for record in chunk:
            single.route(record, None, False)
    assert [w.records for w in chunked_writers] == [w.records for w in single_writers]
    assert chunked.records_out == single.records_out == sum(len(c) for c in chunks)
    # a slice per channel per chunk, not a call per record
    assert sum(w.many_calls for w in chunked_writers) <= n * len(chunks)


@pytest.mark.parametrize("case", ["broadcast", "custom", "selector", "two groups", "plain writer"])
def test_route_many_is_off_where_a_record_needs_its_own_routing_decision(case):
    # a key selector or partitioner is user code: an error in it must name its record, so the
    # caller routes record by record there
    kwargs = {"broadcast": dict(strategy="broadcast"),
              "custom": dict(strategy="custom", partitioner=lambda k, n: 0),
              "selector": dict(strategy="hash", selector=lambda r: r),
              "two groups": dict(strategy="round_robin", groups=2),
              "plain writer": dict(strategy="round_robin", writer=RecordingWriter)}[case]
    strategy = kwargs.pop("strategy")
    kwargs.setdefault("writer", BatchingWriter)
    router, _ = make_router(2, strategy, **kwargs)
    assert not router.routes_many


def test_send_stop_puts_one_signal_on_every_channel():
    router, (g0, g1) = make_router(3, "round_robin", groups=2)
    router.send_stop("STOP")
    assert all(w.controls == ["STOP"] for w in g0 + g1)
    info = router.get_connections_info()
    assert [(i["target"], i["instances"]) for i in info] == [("down0", 3), ("down1", 3)]


def test_unpicklable_by_msgpack_records_travel_as_single_frames():
    router, writers = make_router(1, "hash")
    big = "x" * (2 << 20)      # over the 1 MiB batch limit: sent on its own
    for record, key in [(Counter(a=1), "k"), (big, 0), (np.arange(3), ()), (1, Counter(z=2))]:
        router.route(record, key, True)
    got = writers[0].packets
    assert got[0].payload == Counter(a=1) and type(got[0].payload) is Counter and got[0].partition_key == "k"
    assert got[1].payload == big and got[1].partition_key == 0
    assert np.array_equal(got[2].payload, np.arange(3)) and got[2].partition_key == ()
    assert got[3].payload == 1 and got[3].partition_key == Counter(z=2)


# -- stable_hash -------------------------------------------------------------------------------------

HASH_KEYS = ["", "a", "hello world", "é∑", b"", b"\x00\xff", 0, 1, -1, 2**40, -2**63, 1.5, True, False, None,
             (), (1, "a"), [1, [2]], {"a": 1}]


def test_stable_hash_is_pinned_for_strings_and_bytes():
    assert stable_hash("abc") == zlib.crc32(b"abc") == 891568578
    assert stable_hash(b"abc") == zlib.crc32(b"abc")
    # 0 == False in Python, so they are one key (issue 22 item 5); None, () and [] are not equal
    assert stable_hash(0) == stable_hash(False) != stable_hash(None)
    assert stable_hash(()) != stable_hash([])


def test_keys_equal_in_python_reach_one_instance():
    """Issue 22 item 5: 1, 1.0, True and np.int64(1) are one dict key but reached three instances."""
    ones = [1, 1.0, True, np.int64(1), np.float32(1.0)]
    router, writers = make_router(4, "hash", selector=lambda r: r)
    for i in range(20):
        router.route(ones[i % len(ones)], None, False)
    used = [i for i, w in enumerate(writers) if w.packets]
    assert len(used) == 1
    # every key arrives as the type it was sent as
    assert sorted({type(p.partition_key).__name__ for p in writers[used[0]].packets}) == \
        ["bool", "float", "float32", "int", "int64"]


@pytest.mark.parametrize("fan_out", [False, True])
def test_a_key_without_a_stable_hash_fails_at_the_first_record_naming_the_operator(fan_out):
    router, writers = make_router(3, "hash", selector=lambda r: object(), groups=2 if fan_out else 1)
    with pytest.raises(UnstableKeyError, match=r"operator 'down0' by key: cannot hash-partition by a key of "
                                               r"type builtins\.object .*partitioner"):
        router.route("first", None, False)
    for w in (writers[0] if fan_out else writers):
        assert not w.packets


def _hashes_in_subprocess(seed: str) -> list:
    code = ("import json, sys; from procflow.runtime.communication.router import stable_hash; "
            "keys = eval(sys.stdin.read()); print(json.dumps([stable_hash(k) for k in keys]))")
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run([sys.executable, "-c", code], input=repr(HASH_KEYS), capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=60, check=True)
    return json.loads(out.stdout)


@pytest.mark.timeout(60)
def test_stable_hash_is_identical_across_interpreters_and_hash_seeds():
    here = [stable_hash(k) for k in HASH_KEYS]
    a = _hashes_in_subprocess("1")
    b = _hashes_in_subprocess("12345")
    assert here == a == b
    # and the salted built-in hash really does differ between those runs, so the test has teeth
    code = "print(hash('hello world'))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONHASHSEED": s}).stdout for s in ("1", "12345")}
    assert len(outs) == 2


def test_encode_key_round_trips_through_the_codec():
    for key in HASH_KEYS:
        parts, n = codec.encode("payload", key, True)
        record, got, keyed = codec.decode_bytes(b"".join(bytes(p) for p in parts))
        assert keyed and record == "payload" and got == key and type(got) is type(key)
