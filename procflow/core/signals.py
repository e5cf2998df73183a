"""End-of-stream marker shared by user functions and the runtime."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StopSignal:
    """Ends a stream. A source returns one to end its batch; each channel carries exactly one.

    `source` names the task that first ended (useful in logs); `reason` is free text.
    """

    source: str = ""
    reason: str = "end of input"
