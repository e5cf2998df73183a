"""Record codec: each record is encoded once into a few buffers that a channel copies into its ring.

Wire format of one encoded record (the frame body of a ring slot)::

    byte 0      tag: PLAIN | NDARRAY | PICKLED, plus KEYED when a partition key travels with the record
    [key]       if KEYED: u32 length + msgpack(key)            (keys are small and usually plain data)
    body        PLAIN:   msgpack(record)
                NDARRAY: u32 header length + msgpack([dtype.str, shape]) + raw C-order bytes
                PICKLED: u32 count + u64 length per out-of-band buffer + pickle-5 bytes + the buffers

msgpack carries plain data fast; tuples travel as an extension type so they come back as tuples, and
`strict_types` sends subclasses (an OrderedDict, an IntEnum) to pickle instead of flattening them. A
top-level numpy array skips both serialisers: the raw bytes are copied straight into the ring.
"""

from __future__ import annotations

import pickle
import struct
import threading
from typing import Any

import msgpack
import numpy as np

PLAIN, NDARRAY, PICKLED = 0, 1, 2
KEYED = 0x10
_KIND_MASK = 0x0F

_EXT_TUPLE = 1
_EXT_NDARRAY = 2

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _raw_dtype(dtype: np.dtype) -> bool:
    """Whether `dtype.str` alone rebuilds the dtype, so the array can travel as raw bytes.

    Structured dtypes are excluded: their `.str` is a bare void ("|V12") that drops the field names.
    """
    return dtype.kind in "biufcSUV?" and not dtype.hasobject and dtype.names is None


def _default(obj: Any) -> Any:
    if type(obj) is tuple:
        return msgpack.ExtType(_EXT_TUPLE, _packb(list(obj)))
    if type(obj) is np.ndarray and _raw_dtype(obj.dtype):
        header = _packb([obj.dtype.str, list(obj.shape)])
        return msgpack.ExtType(_EXT_NDARRAY, _U32.pack(len(header)) + header + _array_bytes(obj))
    raise TypeError(f"msgpack cannot carry {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_TUPLE:
        return tuple(_unpackb(data))
    if code == _EXT_NDARRAY:
        return _array_from(memoryview(data), copy=True)
    return msgpack.ExtType(code, data)


_packer_opts = dict(default=_default, strict_types=True, use_bin_type=True)
# Building a Packer costs ~25 us (it allocates its buffer), so keep one per nesting depth per thread:
# `_default` packs tuples and arrays re-entrantly while an outer pack is still running.
_local = threading.local()


def _packb(obj: Any) -> bytes:
    packers = getattr(_local, "packers", None)
    if packers is None:
        packers = _local.packers = []
        _local.depth = 0
    depth = _local.depth
    if depth == len(packers):
        packers.append(msgpack.Packer(**_packer_opts))
    _local.depth = depth + 1
    try:
        return packers[depth].pack(obj)
    finally:
        _local.depth = depth


def _unpackb(data) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False,
                           use_list=True)


def _array_bytes(arr: np.ndarray) -> memoryview:
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return memoryview(arr).cast("B") if arr.size else memoryview(b"")


def _array_from(view: memoryview, *, copy: bool) -> np.ndarray:
    (hlen,) = _U32.unpack_from(view, 0)
    dtype_str, shape = _unpackb(view[4:4 + hlen])
    dtype = np.dtype(dtype_str)
    raw = view[4 + hlen:]
    arr = np.frombuffer(raw, dtype=dtype) if len(raw) else np.empty(0, dtype=dtype)
    arr = arr.reshape(shape)
    return arr.copy() if copy else arr


class EncodeError(TypeError):
    """Neither msgpack nor pickle could encode a record.

    Carries the record: channels encode batches after the fact, so the record being processed when
    this is raised may be a later one than the culprit.
    """

    def __init__(self, message: str, record: Any = None) -> None:
        super().__init__(message)
        self.record = record


def encode_body(record: Any) -> tuple[int, list]:
    """Encode a record once; returns (kind, buffers). The buffers are concatenated on the wire."""
    if type(record) is np.ndarray and _raw_dtype(record.dtype):
        header = _packb([record.dtype.str, list(record.shape)])
        return NDARRAY, [_U32.pack(len(header)) + header, _array_bytes(record)]
    try:
        return PLAIN, [_packb(record)]
    except (TypeError, ValueError, OverflowError):
        pass
    buffers: list[pickle.PickleBuffer] = []
    try:
        data = pickle.dumps(record, protocol=5, buffer_callback=buffers.append)
    except Exception:
        try:
            import dill  # multiprocess's serializer: lambdas and closures inside records

            data, buffers = dill.dumps(record, protocol=5), []
        except Exception as exc:
            raise EncodeError(
                f"cannot encode record of type {type(record).__name__}: {exc}. Records must be "
                "msgpack-able data, numpy arrays or picklable objects.", record) from exc
    raws = [b.raw() for b in buffers]
    head = _U32.pack(len(raws)) + b"".join(_U64.pack(r.nbytes) for r in raws)
    return PICKLED, [head, data, *raws]


def encode_key(key: Any) -> bytes:
    """A partition key as it travels in a frame: u32 length + msgpack (pickle when msgpack can't)."""
    try:
        packed = b"\x00" + _packb(key)
    except (TypeError, ValueError, OverflowError):
        packed = b"\x01" + pickle.dumps(key, protocol=5)
    return _U32.pack(len(packed)) + packed


def decode(view: memoryview) -> tuple[Any, Any, bool]:
    """Decode one frame body into (record, key, keyed). Never keeps a reference into `view`."""
    tag = view[0]
    pos = 1
    key = None
    keyed = bool(tag & KEYED)
    if keyed:
        (klen,) = _U32.unpack_from(view, pos)
        kview = view[pos + 4:pos + 4 + klen]
        key = _unpackb(kview[1:]) if kview[0] == 0 else pickle.loads(kview[1:])
        pos += 4 + klen
    kind = tag & _KIND_MASK
    body = view[pos:]
    if kind == PLAIN:
        return _unpackb(body), key, keyed
    if kind == NDARRAY:
        return _array_from(body, copy=True), key, keyed
    (count,) = _U32.unpack_from(body, 0)
    lens = [_U64.unpack_from(body, 4 + 8 * i)[0] for i in range(count)]
    pos = 4 + 8 * count
    data_end = len(body) - sum(lens)
    data = body[pos:data_end]
    bufs = []
    pos = data_end
    for n in lens:
        bufs.append(bytearray(body[pos:pos + n]))
        pos += n
    return pickle.loads(data, buffers=bufs), key, keyed


def frame(kind: int, body: list, key_bytes: bytes | None) -> tuple[list, int]:
    """Assemble the buffers of one frame; returns (buffers, total length)."""
    if key_bytes is None:
        parts = [bytes((kind,)), *body]
    else:
        parts = [bytes((kind | KEYED,)), key_bytes, *body]
    return parts, sum(memoryview(p).nbytes for p in parts)


def encode(record: Any, key: Any = None, keyed: bool = False) -> tuple[list, int]:
    kind, body = encode_body(record)
    return frame(kind, body, encode_key(key) if keyed else None)


def decode_bytes(data) -> tuple[Any, Any, bool]:
    return decode(memoryview(data))
