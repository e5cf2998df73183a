"""The closed sets of names the layers pass to each other, as enums instead of strings.

A string compared in several files is a name that one file can misspell and no check will notice (the
operator kinds were compared as "batch", "collect", "join", ... in graph/, runtime/ and api/; job statuses
and stop/kill requests likewise). Each enum here is string-valued (`enum.StrEnum` needs Python 3.11;
procflow supports 3.10): a member equals, hashes, prints and formats as its value, so user code that
compares `job.status == "finished"`, and logs, JSON and pickles holding the plain strings, keep working,
while procflow's own code names the member and a typo is an AttributeError.
"""

from __future__ import annotations

from enum import Enum


class StrEnum(str, Enum):
    """str() and f-strings give the value, not `Kind.MEMBER`, so an operator named after its kind stays
    `map`, not `OperatorKind.MAP`."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, format_spec: str) -> str:
        return str.__format__(self, format_spec)


class JobStatus(StrEnum):
    """A job's status (`job.status`).

        created ─► running ─► finished          every task reported Stopped after draining
                       │  └─► stopped           env.stop(): sources ended early, everything in flight drained
                       └───► failed / killed    a task failed or died, or the user interrupted or killed it
    """

    CREATED = "created"
    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"
    KILLED = "killed"

    @property
    def terminal(self) -> bool:
        """Whether the job has ended (no later transition)."""
        return self in _TERMINAL


_TERMINAL = frozenset({JobStatus.FINISHED, JobStatus.STOPPED, JobStatus.FAILED, JobStatus.KILLED})


class ControlRequest(StrEnum):
    """What another thread asks of a running job's dispatcher (`Dispatcher.request`)."""

    STOP = "stop"   # graceful: sources end, everything in flight drains
    KILL = "kill"   # now: every task is terminated, nothing drains


class OperatorKind(StrEnum):
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
