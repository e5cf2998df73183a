"""Typed messages on the control pipe, from each task process to the driver.

    task ──Ready──► driver         after open(); sources then wait for the start signal
    task ──Results─► driver        batches of collect() records
    task ──DeadLetter─► driver     records that failed under on_error="dead_letter"
    task ──Stopped──► driver       after the StopSignals went out; carries final metrics
    task ──Failed──► driver        an exception escaped; the task exits right after
    replica ──ServiceReady──► driver     a service replica ran setup() and serves
    replica ──ServiceStopped──► driver   after stop() and cleanup(); carries its metrics
"""

from __future__ import annotations

import pickle
import traceback
from dataclasses import dataclass, field
from typing import Any

RECORD_REPR_LIMIT = 200


def short_repr(obj: Any, limit: int = RECORD_REPR_LIMIT) -> str:
    try:
        text = repr(obj)
    except Exception as exc:  # a broken __repr__ must not hide the real error
        text = f"<unrepresentable {type(obj).__name__}: {exc}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Ready:
    task: str
    pid: int


@dataclass(frozen=True)
class Results:
    task: str
    records: list
    # The task instance that shipped them: with checkpoints, the driver keeps each sender's results up to
    # its barrier (runtime/checkpoint/coordinator.py), so a resumed job's collect() holds every record once.
    sender: str = ""

    def __reduce__(self) -> tuple:
        # Pickled by dill (a control pipe's own send(), or the fallback of the local ControlWriter),
        # records cost about 3 us each, which made the collect task the busiest process of a
        # fine-grained job. The C pickler packs a batch in microseconds; dill stays the fallback for
        # records only it can carry (lambdas, closures).
        try:
            return _results_from_pickle, (self.task, pickle.dumps(self.records, protocol=5), self.sender)
        except Exception:
            return Results, (self.task, self.records, self.sender)


def _results_from_pickle(task: str, data: bytes, sender: str = "") -> Results:
    return Results(task, pickle.loads(data), sender)


@dataclass(frozen=True)
class ErrorReport:
    """Everything the driver needs to tell the user what went wrong, without unpickling user types."""

    task: str
    pid: int
    function: str
    record: str | None
    error_type: str
    message: str
    traceback: str
    context: str = ""   # where the task was in its stream, e.g. "after emitting 500 records"

    @classmethod
    def from_exception(cls, exc: BaseException, *, task: str, pid: int, function: str,
                       record: Any = None, has_record: bool = False, context: str = "") -> ErrorReport:
        return cls(task, pid, function, short_repr(record) if has_record else None,
                   type(exc).__name__, _message(exc),
                   "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), context)


def _message(exc: BaseException) -> str:
    """str(exc), or a stand-in when the exception's own __str__ raises: a report must always reach the
    driver (an exception escaping the failure handler left a task "exiting without reporting")."""
    try:
        return str(exc)
    except Exception as inner:
        return f"<str() of the {type(exc).__name__} raised {type(inner).__name__}>"


@dataclass(frozen=True)
class DeadLetter:
    task: str
    entries: list   # of dicts: record (the value when picklable, else its repr), error, traceback


@dataclass(frozen=True)
class Failed:
    report: ErrorReport
    # The live exception, only where the task ran in the driver's own thread (the inline backend): the
    # job's error then chains it, so pdb.post_mortem() lands in the user's frame. A task process never
    # sets it: the report's traceback text is what crosses a process boundary.
    cause: BaseException | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Stopped:
    task: str
    metrics: dict = field(default_factory=dict)
    # A two-phase sink's token for the records after its last barrier (prepare_commit() at end of
    # input), which the driver commits once the job has succeeded; () for every other task.
    commit: tuple = ()


@dataclass(frozen=True)
class ServiceReady:
    replica: str
    pid: int


@dataclass(frozen=True)
class ServiceStopped:
    replica: str
    metrics: dict = field(default_factory=dict)
