"""Numpy inputs for spawned tasks: mapped from shared memory (or reopened from their file), never pickled.

    LocalBackend.start (spawn / forkserver) ─► share_arrays(functions, make_segment)
        each function with `ship_arrays(share)` (io/sequence.py: from_batch over an array) hands its
        array to `share`, which returns a stand-in:
          np.memmap over a whole file ─► MemmapRef: pickles to (path, dtype, shape, offset, order)
          any other array            ─► SharedArrayRef: copied once into a segment of the job (closed and
                                         unlinked with the job's channels), pickles to (segment, dtype,
                                         shape)
        the same array shared by many instances is copied once
    task process: unpickling a stand-in gives a read-only array over that memory or file

Why: under spawn every task's function is pickled, so a 1 GB array went through pickle once per task
(and through the parent's memory as many times); forked tasks inherit it and need none of this.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from procflow.runtime.communication.shm import SharedSegment


@runtime_checkable
class ShipsArrays(Protocol):
    def ship_arrays(self, share: Callable[[np.ndarray], Any]) -> None: ...


@dataclass(frozen=True)
class SharedArrayRef:
    """An array in a shared segment; unpickles as a read-only ndarray over it."""

    segment: str
    dtype: np.dtype   # the dtype itself: its .str would lose a structured dtype's field names
    shape: tuple[int, ...]

    def __reduce__(self) -> tuple[Callable[..., np.ndarray], tuple]:
        return (_attach_array, (self.segment, self.dtype, self.shape))


@dataclass(frozen=True)
class MemmapRef:
    """A memory-mapped file; unpickles as a read-only np.memmap of the same bytes."""

    path: str
    dtype: np.dtype   # the dtype itself: its .str would lose a structured dtype's field names
    shape: tuple[int, ...]
    offset: int
    order: Literal["C", "F"]

    def __reduce__(self) -> tuple[Callable[..., np.ndarray], tuple]:
        return (_open_memmap, (self.path, self.dtype, self.shape, self.offset, self.order))


def _attach_array(segment: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    array = np.ndarray(shape, dtype, buffer=SharedSegment(segment).buf)
    array.flags.writeable = False
    return array


def _open_memmap(path: str, dtype: np.dtype, shape: tuple[int, ...], offset: int,
                 order: Literal["C", "F"]) -> np.ndarray:
    return np.memmap(path, dtype, mode="r", offset=offset, shape=shape, order=order)


class ArraySharer:
    """`share(array)` for ShipsArrays.ship_arrays; `make_segment(role, size)` creates a segment of the job."""

    def __init__(self, make_segment: Callable[[str, int], SharedSegment]) -> None:
        self._make_segment = make_segment
        self._shared: dict[int, tuple[np.ndarray, Any]] = {}   # id -> (the array, kept alive; stand-in)

    def __call__(self, array: np.ndarray) -> Any:
        if array.dtype.hasobject:
            return array    # Python objects inside: only pickle can move them
        known = self._shared.get(id(array))
        if known is not None:
            return known[1]
        ref = _memmap_ref(array) or self._copy(array)
        self._shared[id(array)] = (array, ref)
        return ref

    def _copy(self, array: np.ndarray) -> SharedArrayRef:
        segment = self._make_segment("arr", max(array.nbytes, 1))
        view = np.ndarray(array.shape, array.dtype, buffer=segment.buf)
        view[...] = array
        del view   # no export of the driver's mapping outlives this call
        return SharedArrayRef(segment.name, array.dtype, tuple(array.shape))


def _memmap_ref(array: np.ndarray) -> MemmapRef | None:
    """A stand-in that reopens the file, for a memmap that maps its file itself (not a slice of one)."""
    if not isinstance(array, np.memmap) or not isinstance(array.base, mmap.mmap) or not array.filename:
        return None
    if not (array.flags.c_contiguous or array.flags.f_contiguous):
        return None
    return MemmapRef(array.filename, array.dtype, tuple(array.shape), int(array.offset),
                     "C" if array.flags.c_contiguous else "F")


def share_arrays(functions: Iterable[Any], make_segment: Callable[[str, int], SharedSegment]) -> None:
    """Let every function that holds numpy input ship it through shared memory (see the module doc)."""
    share = ArraySharer(make_segment)
    for function in functions:
        if isinstance(function, ShipsArrays):
            function.ship_arrays(share)
