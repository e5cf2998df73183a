"""Partition keys: a hash that is the same in every process, run and backend, and agrees with `==`.

Hash partitioning sends a record to instance `stable_hash(key) % n`. Two promises hold for every key type
accepted here:

- **Stable.** The value depends on the key alone, never on the process: the built-in `hash` of a str,
  bytes, datetime or Enum is salted per process (PYTHONHASHSEED), and a frozenset's pickle (what used to
  be hashed) follows its salted iteration order, so under spawn the same key reached different instances
  (issue 22, item 4).
- **Consistent with equality.** Keys that are equal in Python land together: `1`, `1.0`, `True`,
  `np.int64(1)`, `Fraction(1)` and `Decimal(1)` are one dict key and must be one partition; so are
  `b"a"` and `bytearray(b"a")`, `(1, "a")` and `(1.0, "a")`, a namedtuple and the plain tuple (item 5).

How: the key becomes canonical bytes, then crc32. Numbers go through Python's own numeric hash, which is
defined (not salted) so that equal numbers of any type hash alike, on every 64-bit CPython; NaN, whose
built-in hash follows the object's identity, gets one fixed encoding. Composite keys are encoded
recursively with a one-byte type tag and lengths, so the encoding is unambiguous; set members and mapping
items are sorted by their own encoding, so iteration order (salted) never matters.

    key type                              canonical form
    str (and subclasses: StrEnum, np.str_)   UTF-8          (top level: crc32 of the UTF-8 alone)
    bytes, bytearray, memoryview          the bytes         (top level: crc32 of the bytes alone)
    int, bool, float, complex, Fraction,  Python's numeric hash as 8 bytes (IntEnum, np.int64,
    Decimal, numpy numbers and bools      np.float32... too); NaN one fixed value
    None, tuple (namedtuple), list        tag, then the members in order
    frozenset / set, dict                 tag, then the members (items) sorted by their encoding
    Enum                                  module + class qualname + member name
    dataclass with eq=True                module + class qualname + the compared fields
    datetime, date, time, timedelta       ISO text / microseconds (aware values at their UTC instant)
    UUID, pathlib paths                   16 bytes / flavour + path text

Anything else raises `UnstableKeyError` at the first record: an arbitrary object's hash or pickle cannot
be trusted to be the same in another process.

The common keys (str, int, float, tuple) take a short path: this runs once per keyed record.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import struct
import uuid
import zlib
from decimal import Decimal
from fractions import Fraction
from pathlib import PurePath, PureWindowsPath
from typing import Any

import numpy as np

from procflow.core.errors import UnstableKeyError

_I64 = struct.Struct("<q")
_U32 = struct.Struct("<I")

# One-byte type tags of the nested encoding (bytes, so they concatenate without a conversion).
_NONE, _NUMBER, _NAN, _STR, _BYTES = b"N", b"I", b"n", b"S", b"B"
_TUPLE, _LIST, _SET, _MAP = b"T", b"L", b"F", b"M"
_ENUM, _DATACLASS, _UUID, _PATH = b"E", b"C", b"U", b"P"
_NAIVE_DATETIME, _AWARE_DATETIME, _DATE, _NAIVE_TIME, _AWARE_TIME, _TIMEDELTA = b"W", b"A", b"d", b"t", b"u", b"R"

# NaN != NaN, so any fixed value is consistent with equality; the built-in hash of a NaN is its id().
_NAN_BYTES = _NAN + b"\x00" * 8

# Numbers whose built-in hash is Python's numeric hash (equal numbers hash alike, unsalted). A
# user-defined numbers.Number is not trusted: its __hash__ could be anything.
_NUMBER_TYPES = (int, float, complex, Fraction, Decimal, np.number, np.bool_)


def stable_hash(key: Any) -> int:
    """crc32 of the key's canonical bytes: identical in every process and run, equal for equal keys."""
    t = type(key)
    if t is str:
        return zlib.crc32(key.encode("utf-8", "surrogatepass"))
    if t is int:
        return zlib.crc32(_I64.pack(hash(key)))
    if t is bytes:
        return zlib.crc32(key)
    if t is float:
        return zlib.crc32(_I64.pack(hash(key)) if key == key else _NAN_BYTES)
    if t is tuple:
        out = bytearray()
        _encode(key, out)
        return zlib.crc32(out)
    return zlib.crc32(_top_level_bytes(key))


def _top_level_bytes(key: Any) -> bytes:
    """The bytes hashed for a key outside the short paths; matches them for equal str, int and bytes."""
    if isinstance(key, str):
        return str.encode(key, "utf-8", "surrogatepass")
    if isinstance(key, (bytes, bytearray)):
        return bytes(key)
    if isinstance(key, memoryview):
        return key.tobytes()
    if isinstance(key, _NUMBER_TYPES):
        number = _number_bytes(key)
        return number[1:] if number is not _NAN_BYTES else number
    out = bytearray()
    _encode(key, out)
    return bytes(out)


def _number_bytes(key: Any) -> bytes:
    """Tag + 8 bytes of Python's numeric hash, which equal numbers of every type share."""
    if isinstance(key, Decimal):
        if key.is_nan():   # a signalling NaN would raise on `!=` and on hash()
            return _NAN_BYTES
    elif key != key:
        return _NAN_BYTES
    return _NUMBER + _I64.pack(hash(key))


def _encode(key: Any, out: bytearray) -> None:
    """Append the tagged canonical encoding of `key` (see the module docstring) to `out`."""
    t = type(key)
    # Exact str, int and tuple first: the members of the usual composite keys.
    if t is str:
        data = key.encode("utf-8", "surrogatepass")
        out += _STR
        out += _U32.pack(len(data))
        out += data
    elif t is int:
        out += _NUMBER
        out += _I64.pack(hash(key))
    elif t is tuple:
        out += _TUPLE
        out += _U32.pack(len(key))
        for member in key:
            _encode(member, out)
    elif key is None:
        out += _NONE
    elif isinstance(key, str):
        data = str.encode(key, "utf-8", "surrogatepass")
        out += _STR + _U32.pack(len(data)) + data
    elif isinstance(key, _NUMBER_TYPES):
        out += _number_bytes(key)
    elif isinstance(key, (bytes, bytearray, memoryview)):
        data = key.tobytes() if isinstance(key, memoryview) else key
        out += _BYTES + _U32.pack(len(data)) + data
    elif isinstance(key, tuple):
        out += _TUPLE + _U32.pack(len(key))
        for member in key:
            _encode(member, out)
    elif isinstance(key, list):
        out += _LIST + _U32.pack(len(key))
        for member in key:
            _encode(member, out)
    elif isinstance(key, (frozenset, set)):
        # A set's iteration order follows its members' salted hashes: sort by the stable encodings.
        out += _SET + _U32.pack(len(key)) + b"".join(sorted(_nested_bytes(m) for m in key))
    elif isinstance(key, dict):
        out += _MAP + _U32.pack(len(key)) + b"".join(
            sorted(_nested_bytes(k) + _nested_bytes(v) for k, v in key.items()))
    elif isinstance(key, enum.Enum):
        _encode_name(_ENUM, t, out)
        _encode(key.name, out)
    elif dataclasses.is_dataclass(key) and not isinstance(key, type) and t.__dataclass_params__.eq:
        # The generated __eq__ compares the class and the fields with compare=True, in order.
        _encode_name(_DATACLASS, t, out)
        _encode(tuple(getattr(key, f.name) for f in dataclasses.fields(key) if f.compare), out)
    elif isinstance(key, dt.datetime):
        # As datetime.__hash__ does: the offset of the fold=0 reading, so that the two readings of a
        # repeated wall-clock hour (equal under ==) encode alike.
        offset = key.replace(fold=0).utcoffset()
        if offset is None:
            _encode_text(_NAIVE_DATETIME, key.isoformat(), out)
        else:   # aware values compare by their UTC instant
            _encode_text(_AWARE_DATETIME, (key.replace(tzinfo=None, fold=0) - offset).isoformat(), out)
    elif isinstance(key, dt.date):
        _encode_text(_DATE, key.isoformat(), out)
    elif isinstance(key, dt.time):
        offset = key.replace(fold=0).utcoffset()
        micros = ((key.hour * 60 + key.minute) * 60 + key.second) * 1_000_000 + key.microsecond
        if offset is None:
            out += _NAIVE_TIME + _I64.pack(micros)
        else:
            out += _AWARE_TIME + _I64.pack(micros - offset // dt.timedelta(microseconds=1))
    elif isinstance(key, dt.timedelta):
        out += _TIMEDELTA + _I64.pack(key // dt.timedelta(microseconds=1))
    elif isinstance(key, uuid.UUID):
        out += _UUID + key.bytes
    elif isinstance(key, PurePath):
        # Windows paths compare case-insensitively; POSIX ones by their text.
        windows = isinstance(key, PureWindowsPath)
        _encode_text(_PATH, ("w" + str(key).lower()) if windows else ("p" + str(key)), out)
    else:
        raise UnstableKeyError(_refusal(key))


def _nested_bytes(key: Any) -> bytes:
    out = bytearray()
    _encode(key, out)
    return bytes(out)


def _encode_name(tag: bytes, cls: type, out: bytearray) -> None:
    _encode_text(tag, f"{cls.__module__}.{cls.__qualname__}", out)


def _encode_text(tag: bytes, text: str, out: bytearray) -> None:
    data = text.encode("utf-8", "surrogatepass")
    out += tag + _U32.pack(len(data)) + data


def _refusal(key: Any) -> str:
    name = f"{type(key).__module__}.{type(key).__qualname__}"
    return (f"cannot hash-partition by a key of type {name} ({key!r:.80}): its hash or pickle is not "
            "guaranteed to be the same in every process, so equal keys could reach different instances. "
            "Instead, return a str, int, tuple, frozenset, Enum, frozen dataclass or datetime from the key "
            "selector (for example a tuple of the fields that identify the key), or pass a partitioner "
            "callable (key, n) -> index as keyby(..., strategy=...)")
