"""The closed sets of names the layers pass to each other, as enums instead of strings.

A string compared in several files is a name that one file can misspell and no check will notice (the
operator kinds were compared as "batch", "collect", "join", ... in graph/, runtime/ and api/). Each enum
here is string-valued: a member equals, hashes, prints and formats as its value, so code, logs, JSON and
pickles that still hold the plain strings keep working while they move over.
"""

from __future__ import annotations

from enum import Enum


class _StrValued(str, Enum):
    """`enum.StrEnum` for Python 3.10 too (setup.cfg allows it): str() and f-strings give the value, not
    `Kind.MEMBER`, so an operator named after its kind stays `map`, not `OperatorKind.MAP`."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, format_spec: str) -> str:
        return str.__format__(self, format_spec)


class OperatorKind(_StrValued):
    """What an operator does with records; chooses its runtime operator class (runtime/operators)."""

    BATCH = "batch"       # a bounded source: from_batch(iterable or BatchFunction)
    SOURCE = "source"     # an unbounded source: from_source(SourceFunction)
    MAP = "map"
    FILTER = "filter"
    FLATMAP = "flatmap"
    SINK = "sink"
    COLLECT = "collect"   # records shipped to the driver for `collect()`
    REDUCE = "reduce"     # keyed fold
    COMAP = "comap"       # one method per input of connected streams
    JOIN = "join"         # keyed join of two inputs

    @property
    def is_source(self) -> bool:
        """True for the kinds that have no input and produce records themselves."""
        return self in _SOURCE_KINDS


_SOURCE_KINDS = frozenset({OperatorKind.BATCH, OperatorKind.SOURCE})
