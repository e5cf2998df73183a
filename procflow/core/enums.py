"""Enums for the words that used to be magic strings compared in several files.

Each is a str-valued Enum (`enum.StrEnum` needs Python 3.11; procflow supports 3.10): a member *is* its
string (`JobStatus.FINISHED == "finished"`; `str()`, f-strings and JSON give the bare value), so user code
and tools that compare `job.status == "finished"` keep working, while procflow's own code names the member
and a typo is an AttributeError instead of a silent mismatch.
"""

from __future__ import annotations

from enum import Enum


class StrEnum(str, Enum):
    """A str-valued Enum whose str() is its bare value, as `enum.StrEnum` of Python 3.11 gives."""

    def __str__(self) -> str:
        return str(self.value)


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
