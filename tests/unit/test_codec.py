"""Codec round trips: msgpack data, tuples, numpy arrays of every layout, and the pickle fallback.

Each value goes both ways a record can travel: as its own codec frame (`codec.encode` / `decode`) and
batched (the router's msgpack packer, unpacked by the input gate's BatchDecoder).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from enum import IntEnum

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from procflow.runtime.communication import codec
from procflow.runtime.communication.packet import packets
from procflow.runtime.communication.queue_descriptor.base import BatchDecoder, ChannelWriter
from procflow.runtime.communication.router import BaseRouter, OutputGroup

SETTINGS = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def single_trip(value, key=None, keyed=False):
    parts, nbytes = codec.encode(value, key, keyed)
    data = b"".join(bytes(p) for p in parts)
    assert len(data) == nbytes
    record, got_key, got_keyed = codec.decode_bytes(data)
    assert got_keyed == keyed
    if keyed:
        assert_same(got_key, key)
    return record


class _Writer(ChannelWriter):
    """Receives what the router sends and decodes it as an input gate would."""

    def __init__(self) -> None:
        self.out: list = []
        self.decoder = BatchDecoder(0, 0)
        self.batched = 0

    def send_record(self, packed, key_packed):
        self.batched += 1
        self.decoder.batch(packed if key_packed is None else key_packed + packed, key_packed is not None,
                           self.out)

    def send_single(self, parts, nbytes):
        self.decoder.single(memoryview(b"".join(bytes(p) for p in parts)), self.out)

    def send_control(self, signal):
        pass

    def flush(self):
        pass

    has_pending = False

    def close(self):
        pass


def batch_trip(values):
    """Through the router's data path: batched msgpack when it can, a single frame otherwise."""
    writer = _Writer()
    router = BaseRouter([OutputGroup("down", "round_robin", [writer])])
    for v in values:
        router.route(v, None, False)
    return [p.payload for p in packets(writer.out)]


def assert_same(got, want):
    """Equal, with the same types all the way down (a tuple stays a tuple, bytes stay bytes)."""
    assert type(got) is type(want), (got, want)
    if isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and got.shape == want.shape
        if want.dtype.hasobject:
            for g, w in zip(got.ravel().tolist(), want.ravel().tolist()):
                assert_same(g, w)
        else:
            assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes()
            assert got.flags.writeable        # a copy the user may modify, not a view into the ring
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert_same(g, w)
    elif isinstance(want, dict):
        assert list(got.keys()) == list(want.keys())
        for k in want:
            assert_same(got[k], want[k])
    elif isinstance(want, float) and math.isnan(want):
        assert math.isnan(got)
    else:
        assert got == want


def round_trip(value):
    assert_same(single_trip(value), value)
    assert_same(batch_trip([value, value])[1], value)


# -- plain data ------------------------------------------------------------------------------------

leaves = (st.none() | st.booleans() | st.integers(min_value=-2**63, max_value=2**64 - 1) | st.floats()
          | st.text(max_size=20) | st.binary(max_size=20))
hashable = st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.text(max_size=8) | st.tuples(st.integers())
plain = st.recursive(
    leaves,
    lambda children: (st.lists(children, max_size=5) | st.lists(children, max_size=5).map(tuple)
                      | st.dictionaries(hashable, children, max_size=5)),
    max_leaves=30)


@SETTINGS
@given(plain)
def test_plain_data_round_trips_with_types_kept(value):
    round_trip(value)


@SETTINGS
@given(plain, plain)
def test_keyed_frames_round_trip(value, key):
    assert_same(single_trip(value, key, True), value)


@pytest.mark.parametrize("value", [
    (), (1,), ((),), ([(1, 2)], {"a": (3, [4])}), {(1, 2): "tuple key"},
    b"bytes", "str", [b"", ""], 2**64 - 1, -2**63, 2**64, -2**63 - 1, 10**40, float("inf"), float("nan"),
    -0.0, "\x00", "é∑\U0001F600", {1: 2, "1": 3}, [None, True, False, 0, 0.0],
])
def test_edge_values_round_trip(value):
    round_trip(value)


def test_bytes_and_str_stay_distinct():
    got = single_trip([b"abc", "abc", {b"k": "v", "k": b"v"}])
    assert got == [b"abc", "abc", {b"k": "v", "k": b"v"}]
    assert [type(x) for x in got[:2]] == [bytes, str]


class Color(IntEnum):
    RED = 1


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return type(other) is Point and (self.x, self.y) == (other.x, other.y)


@pytest.mark.parametrize("value", [
    OrderedDict(a=1, b=2), Color.RED, Point(1, (2, 3)), {1, 2}, frozenset("ab"), complex(1, 2),
    np.int64(7), np.float32(1.5), np.datetime64("2020-01-02"), [Point(0, 0), 1], {"p": Point(1, 1)},
    range(3), slice(1, 2),
])
def test_other_python_objects_fall_back_to_pickle_with_their_type(value):
    round_trip(value)


def test_lambdas_inside_records_travel_with_dill():
    fn = single_trip({"f": lambda x: x + 1})["f"]
    assert fn(1) == 2


def test_unencodable_record_raises_encode_error():
    def gen():
        yield 1

    with pytest.raises(codec.EncodeError, match="generator"):
        codec.encode(gen())


# -- bytearray and memoryview (issue 22 item 6: they came back as bytes) ---------------------------

BUFFER_RECORDS = [
    bytearray(b"ab"), bytearray(), bytearray(b"\xc4\xc5\xc6"), [bytearray(b"x"), b"y", "z"],
    (bytearray(b"t"), (1, bytearray(b"u"))), {"k": bytearray(b"v"), "b": b"w", "n": [1, {"d": bytearray()}]},
    [b"plain bytes", 196, 1.5, "\u0104"],   # bin markers without any bytearray: nothing to convert
    {(1, 2): [bytearray(b"tuple key")]}, [np.arange(3), bytearray(b"with an array")],
]


@pytest.mark.parametrize("value", BUFFER_RECORDS)
def test_bytearrays_come_back_as_bytearrays_nested_or_not(value):
    round_trip(value)
    assert_same(single_trip("payload", value, True), "payload")    # as a key too


with_buffers = st.recursive(
    leaves | st.binary(max_size=8).map(bytearray) | st.binary(max_size=8).map(memoryview),
    lambda children: (st.lists(children, max_size=4) | st.lists(children, max_size=4).map(tuple)
                      | st.dictionaries(st.text(max_size=4), children, max_size=4)),
    max_leaves=12)


@SETTINGS
@given(st.lists(with_buffers, min_size=33, max_size=80))
def test_a_batch_keeps_bytearrays_and_memoryviews_at_any_depth(records):
    """A batch (the shm writer packs hundreds of records as one list) is searched level by level."""
    packer = msgpack.Packer(default=codec._default, strict_types=True, use_bin_type=True)
    got = codec._unpackb(codec.pack(packer, records))
    assert_same_buffers(got, records)


def assert_same_buffers(got, want):
    """assert_same, where a memoryview arrives as a read-only memoryview with the same contents."""
    if type(want) is memoryview:
        assert type(got) is memoryview and got.readonly and got.tobytes() == want.tobytes()
    elif type(want) in (list, tuple):
        assert type(got) is type(want) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_same_buffers(g, w)
    elif type(want) is dict:
        assert type(got) is dict and list(got) == list(want)
        for k in want:
            assert_same_buffers(got[k], want[k])
    else:
        assert_same(got, want)


def _view_facts(view: memoryview) -> tuple:
    return view.format, view.shape, view.tolist(), view.readonly


@pytest.mark.parametrize("view", [
    memoryview(b"abc"), memoryview(bytearray(b"writable")), memoryview(b""),
    memoryview(np.arange(6, dtype=np.int32)), memoryview(np.arange(12, dtype=np.float64).reshape(3, 4)),
    memoryview(np.arange(6, dtype=np.uint8)[::2]), memoryview(np.array(7, dtype=np.int64)),
])
def test_a_memoryview_comes_back_read_only_with_its_format_shape_and_contents(view):
    for got in (single_trip(view), batch_trip([view, view])[1], single_trip([view])[0],
                batch_trip([(view,)])[0][0]):
        assert type(got) is memoryview
        assert _view_facts(got) == (view.format, view.shape, view.tolist(), True)


@pytest.mark.parametrize("view", [memoryview(np.zeros(2, dtype=np.float16)),
                                  memoryview(np.zeros((2, 0), dtype=np.int64))])
def test_a_memoryview_the_receiver_cannot_rebuild_is_refused_with_what_to_do(view):
    with pytest.raises(codec.EncodeError, match=r"cannot travel between tasks.*Instead, send bytes\(view\)"):
        codec.encode({"v": view})


# -- numpy -----------------------------------------------------------------------------------------

DTYPES = ["bool", "int8", "uint8", "<i2", ">i2", "<i4", ">i4", "<i8", ">i8", "<u8", ">u4", "<f2", ">f4", "<f8",
          ">f8", "<c8", ">c16", "S3", "<U2", ">U3"]


def arrays_of(dtype):
    return hnp.arrays(np.dtype(dtype), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))


numpy_arrays = st.sampled_from(DTYPES).flatmap(arrays_of)


def views(arr: np.ndarray) -> list:
    """The array plus non-contiguous views of it: strided, transposed, reversed."""
    out = [arr]
    if arr.ndim >= 1:
        out += [arr[::2], arr[::-1]]
    if arr.ndim >= 2:
        out += [arr.T, arr[:, ::2], np.asfortranarray(arr)]
    return out


@SETTINGS
@given(numpy_arrays)
def test_numpy_arrays_round_trip_in_every_layout(arr):
    for view in views(arr):
        round_trip(view)
        assert_same(single_trip([view, (view,)]), [view, (view,)])   # nested: the ndarray ext type


@pytest.mark.parametrize("arr", [
    np.array(5), np.array(1.5, dtype=">f8"), np.empty((0,)), np.empty((3, 0, 2), dtype="<i4"),
    np.zeros((2, 3), dtype="U0"), np.arange(24, dtype=">i8").reshape(2, 3, 4)[:, ::2, ::-1],
    np.array([b"a", b"bc"]), np.zeros(3, dtype="V4"), np.array(["x", "yz"]), np.arange(10)[::3],
])
def test_numpy_edge_arrays(arr):
    round_trip(arr)


def test_top_level_array_travels_raw_and_comes_back_writable():
    arr = np.arange(1000, dtype="<f8")
    parts, nbytes = codec.encode(arr)
    assert parts[0][0] == codec.NDARRAY
    assert nbytes < arr.nbytes + 64          # header plus raw bytes, no serialiser overhead
    got = single_trip(arr)
    got[0] = -1                               # a private copy
    assert arr[0] == 0


@pytest.mark.parametrize("arr", [
    np.array([1, "a", None, (2,)], dtype=object),
    np.array([[{"k": 1}, [2]], [3.5, b"x"]], dtype=object),
    np.zeros(3, dtype=[("a", "<i4"), ("b", ">f8")]),
    np.zeros((2, 2), dtype=[("name", "U4"), ("xy", "<f4", (2,))]),
    np.arange("2020-01-01", "2020-01-04", dtype="datetime64[D]"), np.arange(3, dtype="timedelta64[ms]"),
    np.ma.masked_array([1, 2, 3], mask=[0, 1, 0]),
])
def test_object_structured_and_exotic_arrays_keep_their_dtype(arr):
    def same(got):
        assert type(got) is type(arr) and got.dtype == arr.dtype and got.shape == arr.shape
        if arr.dtype.hasobject or isinstance(arr, np.ma.MaskedArray):
            assert got.tolist() == arr.tolist()
        else:
            assert got.tobytes() == arr.tobytes()

    same(single_trip(arr))
    same(single_trip([arr])[0])
    same(batch_trip([(arr,)])[0][0])
    same(batch_trip([arr])[0])


def test_pickle_out_of_band_buffers_round_trip():
    arrays = [np.arange(5, dtype=object), np.ones((3, 3), dtype="<f4")]   # the object array forces pickle
    kind, _ = codec.encode_body(arrays)
    assert kind == codec.PICKLED
    got = single_trip(arrays)
    assert got[1].dtype == np.float32 and np.array_equal(got[1], arrays[1]) and got[0].tolist() == [0, 1, 2, 3, 4]
