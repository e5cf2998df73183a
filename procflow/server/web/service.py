"""What the HTTP layer needs from the job server: the JobService's methods, as a Protocol.

The web package types against this Protocol, not against procflow.server.jobs, so that it can be tested
with a fake service (tests/web/fake_jobs.py) and so that it only depends on the contract:

    list_jobs()                         JobRecord dicts, newest first
    get_job(id)                         the record plus "live" (live.json) and "summary"; KeyError if unknown
    stop_job(id)                        graceful stop, then kill; the record
    list_logs(id)                       log names relative to the job's log folder
    read_log(id, name, offset, limit)   (text, next offset); ValueError if `name` escapes the log folder

An unknown job raises procflow.server.jobs.UnknownJobError, a KeyError: the HTTP layer catches KeyError.
"""

from __future__ import annotations

from typing import Any, Protocol

# Job states after which nothing changes any more (procflow.server.jobs.JOB_STATES less queued/running).
FINAL_STATES = frozenset({"succeeded", "failed", "stopped", "lost"})


class JobServiceLike(Protocol):
    def list_jobs(self) -> list[dict[str, Any]]: ...

    def get_job(self, job_id: str) -> dict[str, Any]: ...

    def stop_job(self, job_id: str) -> dict[str, Any]: ...

    def list_logs(self, job_id: str) -> list[str]: ...

    def read_log(self, job_id: str, name: str, offset: int = 0, limit: int = 65536) -> tuple[str, int]: ...
