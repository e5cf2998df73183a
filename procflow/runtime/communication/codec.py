"""Record codec: each record is encoded once into a few buffers that a channel copies into its ring.

Wire format of one encoded record (the frame body of a ring slot)::

    byte 0      tag: PLAIN | NDARRAY | PICKLED | SLAB, plus KEYED when a partition key travels with it
    [key]       if KEYED: u32 length + msgpack(key)            (keys are small and usually plain data)
    body        PLAIN:   msgpack(record)
                NDARRAY: u32 header length + msgpack([dtype.str, shape]) + raw C-order bytes
                PICKLED: u32 count + u64 length per out-of-band buffer + pickle-5 bytes + the buffers
                SLAB:    the NDARRAY header, then u16 length + the name of the slab holding the raw
                         bytes (slabs.py: a large array on a shm edge; received as a read-only view)

msgpack carries plain data fast; tuples travel as an extension type so they come back as tuples, and
`strict_types` sends subclasses (an OrderedDict, an IntEnum) to pickle instead of flattening them. A
top-level numpy array skips both serialisers: the raw bytes are copied straight into the ring.

Every record comes back as the type it was sent as, nested ones included (issue 22 item 6):

    sent                        received
    bytes                       bytes
    bytearray                   bytearray (a writable copy)
    memoryview                  memoryview: read-only, same format, shape and contents, over a copy
                                (it no longer shares memory with what it viewed); a view the receiver
                                cannot rebuild with memoryview.cast (a format beyond the native single
                                characters, an empty multi-dimensional shape) raises EncodeError
    tuple / list / dict         the same, members converted alike (a memoryview dict key arrives as
                                bytes: only a read-only one is hashable, and it hashes and compares
                                equal to its bytes)

msgpack's packer writes bytearrays and memoryviews as plain bytes without asking `default`, so `pack`
checks the packed bytes for a bin marker and, only if it finds one, looks for them in the record and packs
it again with those replaced by extension types. Scalars pay nothing; containers without a marker pay three
`in` scans of their packed bytes; with one (a bytes value, but also many numbers), a look at every member
that costs about as much as packing them (`_holds_buffers`).
"""

from __future__ import annotations

import pickle
import struct
import threading
from itertools import chain
from typing import Any

import msgpack
import numpy as np

from procflow.core.errors import EncodeError

PLAIN, NDARRAY, PICKLED, SLAB = 0, 1, 2, 3
KEYED = 0x10
_KIND_MASK = 0x0F

_EXT_TUPLE = 1
_EXT_NDARRAY = 2
_EXT_BYTEARRAY = 3
_EXT_MEMORYVIEW = 4

# The formats memoryview.cast can rebuild a received memoryview with ('@' is the native default).
_CASTABLE_FORMATS = frozenset("bBhHiIlLqQnNfd?Pc") | frozenset("@" + f for f in "bBhHiIlLqQnNfd?Pc")

_U16 = struct.Struct("<H")
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


def all_tuples(records: list) -> bool:
    """Whether every record of a batch is a plain tuple: the shape of keyed pipelines' (key, value)
    records, which then travel as msgpack arrays (`tuples_as_lists`) instead of one extension each."""
    return bool(records) and set(map(type, records)) == {tuple}


def tuples_as_lists(pending: list, keyed: bool) -> list:
    """A batch whose records are all tuples, with each record as a list: msgpack packs a list natively,
    while a tuple goes through `_default` as an extension holding a nested pack (about 1.5 us a record,
    most of a keyed hop's cost). The frame says so (ring FLAG_TUPLES), and the receiver turns the
    top-level arrays back into tuples; what is inside a record travels as before, tuples included."""
    if not keyed:
        return list(map(list, pending))
    out = pending[:]
    out[1::2] = map(list, pending[1::2])
    return out


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_TUPLE:
        return tuple(_unpackb(data))
    if code == _EXT_NDARRAY:
        return _array_from(memoryview(data), copy=True)
    if code == _EXT_BYTEARRAY:
        return bytearray(data)
    if code == _EXT_MEMORYVIEW:
        (hlen,) = _U32.unpack_from(data, 0)
        fmt, shape = _unpackb(data[4:4 + hlen])
        view = memoryview(data[4 + hlen:])   # over bytes: read-only
        return view if fmt == "B" and len(shape) == 1 else view.cast(fmt, shape)
    return msgpack.ExtType(code, data)


# -- bytearrays and memoryviews (see the module docstring) ------------------------------------------

# Containers msgpack packs natively or through `_default`; anything else is a leaf or goes to pickle,
# which keeps bytearrays as they are (and refuses memoryviews).
_DESCEND = (list, tuple, dict)
_NEEDS_LOOK = frozenset({list, tuple, dict, bytearray, memoryview})


def pack(packer: msgpack.Packer, obj: Any) -> bytes:
    """`packer.pack(obj)`, keeping bytearrays and memoryviews in `obj` as themselves."""
    try:
        packed = packer.pack(obj)
    except BufferError:   # a non-contiguous memoryview; tobytes() copies it in order
        return packer.pack(_tag_buffers(obj))
    if type(obj) in _NEEDS_LOOK and _must_tag(obj, packed):
        return packer.pack(_tag_buffers(obj))
    return packed


def _must_tag(obj: Any, packed: bytes) -> bool:
    # Every bytearray or memoryview became a msgpack bin (0xc4-0xc6): no marker, none to fix, and the
    # common case costs these scans alone. A marker may also be a real bytes value or part of a number.
    # (An int needle: `0xc4 in packed` is a memchr, five times faster on small records than b"\xc4".)
    return (0xC4 in packed or 0xC5 in packed or 0xC6 in packed) and _holds_buffers(obj)


def _holds_buffers(obj: Any) -> bool:
    """Whether a bytearray or memoryview is anywhere in `obj`'s lists, tuples and dict values.

    Dict keys are not looked at: a bytearray cannot be one, and a memoryview can only when it is
    read-only, and then it hashes and compares equal to its bytes, which is what it arrives as.
    """
    if (type(obj) is list or type(obj) is tuple) and len(obj) > _WALK_LIMIT:
        return _holds_buffers_wide(obj)
    return _holds_buffers_walk(obj)


# A record is walked recursively; a batch (hundreds of records) level by level with the iteration in C,
# which costs about as much as packing it, where the recursive walk costs several times more.
_WALK_LIMIT = 32


def _holds_buffers_walk(obj: Any) -> bool:
    t = type(obj)
    if t is bytearray or t is memoryview:
        return True
    if t is dict:
        obj = obj.values()
    elif t is not list and t is not tuple:
        return False
    for member in obj:
        if type(member) in _NEEDS_LOOK and _holds_buffers_walk(member):
            return True
    return False


def _holds_buffers_wide(level: Any) -> bool:
    types = set(map(type, level))
    while True:
        if _NEEDS_LOOK.isdisjoint(types):
            return False
        if bytearray in types or memoryview in types:
            return True
        # The usual end, records of scalars: one pass over their members, nothing built.
        if _NEEDS_LOOK.isdisjoint(map(type, _members(level, types))):
            return False
        level = list(_members(level, types))
        types = set(map(type, level))


def _members(level: Any, types: set) -> Any:
    """An iterator over the members of the lists, tuples and dicts (values) in `level`."""
    parts = []
    for t in _DESCEND:
        if t in types:
            containers = level if len(types) == 1 else [m for m in level if type(m) is t]
            parts.append(chain.from_iterable(map(dict.values, containers) if t is dict else containers))
    return chain.from_iterable(parts)


def _tag_buffers(obj: Any) -> Any:
    """A copy of `obj` with each bytearray and memoryview (dict keys aside) replaced by its extension
    type."""
    t = type(obj)
    if t is bytearray:
        return msgpack.ExtType(_EXT_BYTEARRAY, bytes(obj))
    if t is memoryview:
        return _memoryview_ext(obj)
    if t is list:
        return [_tag_buffers(m) for m in obj]
    if t is tuple:
        return tuple(_tag_buffers(m) for m in obj)
    if t is dict:
        return {k: _tag_buffers(v) for k, v in obj.items()}
    return obj


class _UntravelableView(TypeError):
    """A memoryview the receiver could not rebuild; pickle cannot carry one either (see encode_body)."""


def _memoryview_ext(view: memoryview) -> msgpack.ExtType:
    # memoryview.cast rebuilds the received view: it takes native single-character formats only, and no
    # multi-dimensional shape with a zero in it.
    shape = view.shape or ()   # typeshed allows None; CPython gives () for a 0-d view
    if view.format not in _CASTABLE_FORMATS or (view.ndim > 1 and 0 in shape):
        raise _UntravelableView(
            f"a memoryview of format {view.format!r} and shape {shape} cannot travel between tasks: "
            "only views of a native single-character format (and, if multi-dimensional, not empty) can "
            "be rebuilt by the receiver. Instead, send bytes(view) or a numpy array (np.asarray(view))")
    header = _packb([view.format, list(shape)])
    return msgpack.ExtType(_EXT_MEMORYVIEW, _U32.pack(len(header)) + header + view.tobytes())


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


def _pack_top(obj: Any) -> bytes:
    """A whole record or key with this thread's packer (not re-entrant: nested tuples use `_packb`)."""
    try:
        packed = _packb(obj)
    except BufferError:   # a non-contiguous memoryview; tobytes() copies it in order
        return _packb(_tag_buffers(obj))
    if type(obj) in _NEEDS_LOOK and _must_tag(obj, packed):
        return _packb(_tag_buffers(obj))
    return packed


def _unpackb(data: bytes | bytearray | memoryview) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False,
                           use_list=True)


def _array_bytes(arr: np.ndarray) -> memoryview:
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    # arr.data is memoryview(arr), typed: numpy's stubs give ndarray the buffer protocol only from 3.12.
    return arr.data.cast("B") if arr.size else memoryview(b"")


def _array_from(view: memoryview, *, copy: bool) -> np.ndarray:
    (hlen,) = _U32.unpack_from(view, 0)
    dtype_str, shape = _unpackb(view[4:4 + hlen])
    dtype = np.dtype(dtype_str)
    raw = view[4 + hlen:]
    arr = np.frombuffer(raw, dtype=dtype) if len(raw) else np.empty(0, dtype=dtype)
    arr = arr.reshape(shape)
    return arr.copy() if copy else arr


def encode_body(record: Any) -> tuple[int, list]:
    """Encode a record once; returns (kind, buffers). The buffers are concatenated on the wire."""
    if type(record) is np.ndarray and _raw_dtype(record.dtype):
        header = _packb([record.dtype.str, list(record.shape)])
        return NDARRAY, [_U32.pack(len(header)) + header, _array_bytes(record)]
    try:
        return PLAIN, [_pack_top(record)]
    except _UntravelableView as exc:
        raise EncodeError(f"cannot encode record of type {type(record).__name__}: {exc}", record) from None
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
        packed = b"\x00" + _pack_top(key)
    except (TypeError, ValueError, OverflowError):
        packed = b"\x01" + pickle.dumps(key, protocol=5)
    return _U32.pack(len(packed)) + packed


def decode(view: memoryview, slabs: Any = None) -> tuple[Any, Any, bool]:
    """Decode one frame body into (record, key, keyed). Never keeps a reference into `view`.

    `slabs` (a slabs.SlabViews) resolves SLAB frames, which only a shm channel sends."""
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
    if kind == SLAB:
        return _slab_array(body, slabs), key, keyed
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


def _slab_array(body: memoryview, slabs: Any) -> np.ndarray:
    (hlen,) = _U32.unpack_from(body, 0)
    dtype_str, shape = _unpackb(body[4:4 + hlen])
    (nlen,) = _U16.unpack_from(body, 4 + hlen)
    name = bytes(body[6 + hlen:6 + hlen + nlen]).decode()
    return slabs.array(name, np.dtype(dtype_str), shape)


def array_bytes_of(parts: list) -> memoryview | None:
    """The raw bytes of a frame that carries one numpy array (NDARRAY), else None."""
    if parts[0][0] & _KIND_MASK != NDARRAY:
        return None
    return parts[-1]


def slab_frame(parts: list, slab_name: str) -> tuple[list, int]:
    """An NDARRAY frame's parts (`frame`) turned into a SLAB frame: the same tag bits, key and header,
    the slab's name in place of the raw bytes, which the caller has put in that slab."""
    name = slab_name.encode()
    parts = [bytes((parts[0][0] & KEYED | SLAB,)), *parts[1:-1], _U16.pack(len(name)) + name]
    return parts, sum(len(p) for p in parts)


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


def decode_bytes(data: bytes | bytearray | memoryview) -> tuple[Any, Any, bool]:
    return decode(memoryview(data))
