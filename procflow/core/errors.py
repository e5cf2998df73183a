"""Every exception procflow raises, in one tree.

    ProcflowError
    ├── JobFailedError        a task, service or the job itself failed at run time
    ├── ShmCapacityError      /dev/shm has no room for the job's rings (also an OSError: ENOSPC)
    ├── ServiceError          a service raised; the remote traceback is chained as __cause__
    │   ├── ServiceTimeoutError
    │   └── UnknownServiceError
    ├── ChannelError          transport problems; "you closed it" vs "the peer broke" stay distinct
    │   ├── ChannelClosedError
    │   └── BrokenChannelError
    ├── UnsafePathError       a log folder or file is not private to this user (also a PermissionError)
    ├── InputFormatError      a line or row of an input file cannot be parsed (also a ValueError)
    └── OutputExistsError     a file sink's folder holds output already (also a FileExistsError)
Graph and argument mistakes raise the built-in ValueError / TypeError before any process starts.
"""

from __future__ import annotations

from typing import Any


class ProcflowError(Exception):
    """Base class of procflow's own errors."""


class RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised in another process (set as `__cause__`)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f"\n\n--- traceback in the task process ---\n{self.tb}"


class JobFailedError(ProcflowError):
    """A job failed. `task`, `record`, `exitcode` and `remote_traceback` say where and how."""

    def __init__(self, message: str, *, task: str | None = None, record: str | None = None,
                 exitcode: int | None = None, remote_traceback: str | None = None,
                 error_type: str | None = None) -> None:
        super().__init__(message)
        self.task = task
        self.record = record
        self.exitcode = exitcode
        self.remote_traceback = remote_traceback
        self.error_type = error_type


class ShmCapacityError(ProcflowError, OSError):
    """/dev/shm cannot hold the shared memory a job needs. Raised before any task starts, instead of
    the SIGBUS a task would otherwise die of when it first touches a ring page that has no memory."""

    def __init__(self, message: str) -> None:
        import errno

        super().__init__(message)
        self.errno = errno.ENOSPC   # for callers that handle OSError by errno; str() stays the message


class ServiceError(ProcflowError):
    """The service raised while handling a call."""

    def __init__(self, message: str, *, service: str | None = None, remote_traceback: str | None = None,
                 error_type: str | None = None) -> None:
        super().__init__(message)
        self.service = service
        self.remote_traceback = remote_traceback
        self.error_type = error_type


class ServiceTimeoutError(ServiceError, TimeoutError):
    """No answer within the call's timeout."""


class UnknownServiceError(ServiceError, LookupError):
    """No service, or no method, of that name."""


class ServiceUnavailableError(ServiceError):
    """The replica that was to answer is gone (its actor died). The job fails naming the replica: the
    Dispatcher gives the replica's own death a moment to arrive before this caller's report."""


class ChannelError(ProcflowError):
    pass


class ChannelClosedError(ChannelError):
    """This side closed the channel and then used it."""


class BrokenChannelError(ChannelError):
    """The other side died."""


class UnsafePathError(ProcflowError, PermissionError):
    """A folder or file procflow would write to is not private to this user: another user's, a symlink,
    or open to others (issue 22). The message names the path and what to do."""


class EncodeError(ProcflowError, TypeError):
    """A record, or a service call's arguments or result, that no codec procflow has can carry.

    Carries the record when there is one: channels encode batches after the fact, so the record being
    processed when this is raised may be a later one than the culprit.
    """

    def __init__(self, message: str, record: Any = None) -> None:
        super().__init__(message)
        self.record = record


class UnstableKeyError(ProcflowError, TypeError):
    """A partition key whose type has no stable, equality-consistent hash.

    A TypeError, because it is the key's type that is wrong; raised at the first record that has such a
    key, before any record is placed.
    """


def unhashable_key_error(key: Any, operator: str) -> UnstableKeyError:
    """A keyed reduce holds its state in a dict: a key that a dict cannot hold (a list, a dict, a set) has
    a stable hash for routing but fails there, with the message Python gives for it, "unhashable type"."""
    return UnstableKeyError(f"reduce {operator!r} keeps one value per key, but the key {key!r} is a "
                            f"{type(key).__name__}, which cannot be a dict key; return a hashable key from "
                            "the key selector (a tuple instead of a list, a frozenset instead of a set)")


def describe_exit(exitcode: Any) -> str:
    """Explain a child's exit status the way a user needs it."""
    import signal

    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = ""
        if name == "SIGKILL":
            # Nothing in the exit status says who sent it; guessing "the OOM killer" misled users whose
            # tasks died for another reason (issue 22.8: a death signal armed by an ended thread).
            hint = (" (procflow cannot tell who sent it: the kernel's OOM killer if memory ran out (check "
                    "`dmesg` and memory use), a `kill -9`, or a supervisor: a container, cgroup or job "
                    "scheduler limit)")
        elif name == "SIGSEGV":
            hint = " (a crash in native code: a C extension, or numpy given a bad buffer)"
        elif name == "SIGABRT":
            hint = " (the process aborted, usually from a failed assertion in native code)"
        return f"was killed by {name}{hint}"
    # sys.exit() in user code is reported like any exception; only os._exit() leaves unreported.
    return f"exited with code {exitcode} without reporting an error (os._exit() in user code?)"


class InputFormatError(ProcflowError, ValueError):
    """A record of an input file (a JSONL line, a CSV row) cannot be parsed. `path`, `line` (1-based, or
    None where unknown) and `reason` (the parser's message) say where and why; `text` is the raw line."""

    def __init__(self, path: str, line: int | None, reason: str, text: str = "") -> None:
        where = f"{path}, line {line}" if line is not None else path
        shown = text if len(text) <= 120 else text[:117] + "..."
        super().__init__(
            f"{where}: {reason} (the line: {shown!r}). To set bad lines aside instead of failing the job, "
            "pass on_error='skip' or on_error='dead_letter' to the reader.")
        self.path = path
        self.line = line
        self.reason = reason
        self.text = text

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its fields: the default would call __init__ with the message alone.
        return type(self), (self.path, self.line, self.reason, self.text)


class OutputExistsError(ProcflowError, FileExistsError):
    """A file sink's folder is not empty (mode="error"), or another running job writes into it. Raised in
    the driver before any process starts; the message names the folder and mode="overwrite"."""


class CheckpointWarning(RuntimeWarning):
    """A checkpoint could not be used (corrupt or partial): resume restores the one before it instead."""
