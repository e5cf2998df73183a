"""JobService: the server's in-process API, called by the socket server and by the web app alike.

Methods are synchronous and quick (SQLite reads, small file reads), safe from the event loop's thread and
from a web worker thread. What happens to a job is the runner's business (runner.py); this class checks
requests, reads the table and the job folders, and hands submit / stop to the runner.

    JobRecord (list_jobs, and the base of get_job):
      {"id", "name", "target", "status" (one of JOB_STATES), "submitted_at", "started_at" | None,
       "finished_at" | None, "exit_code" | None, "error" | None}
    get_job adds "live" (the latest live.json, see live.py) and "summary" (job.summary() at the end)
"""

from __future__ import annotations

import os
import re
import secrets
import time
from typing import Any

from procflow.server import paths
from procflow.server.logs import list_log_files, read_log_file
from procflow.server.runner import Runner, read_json
from procflow.server.store import EXTRA_KEYS, JobStore, record_of

JOB_STATES = ("queued", "running", "succeeded", "failed", "stopped", "lost")

_JOB_ID = re.compile(r"[0-9a-f]{8}")
_OPERATOR = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,99}")
MAX_TARGET = 4096


class UnknownJobError(KeyError):
    """No job has this id (on this server's state folder)."""

    def __str__(self) -> str:
        return f"no job {self.args[0]!r}; `procflow list` shows the jobs"


class JobService:
    """The server's in-process API: the socket server and the HTTP app both call it (same event loop;
    methods are synchronous and quick: SQLite reads and small file reads)."""

    def __init__(self, store: JobStore, runner: Runner, state_dir: str) -> None:
        self.store = store
        self.runner = runner
        self.state_dir = state_dir

    # -- reading ---------------------------------------------------------------------------------

    def list_jobs(self) -> list[dict]:
        """Every job, newest first, as JobRecord dicts."""
        return [record_of(row) for row in self.store.all()]

    def get_job(self, job_id: str) -> dict:
        """The JobRecord plus "live" (the latest live.json, or None) and "summary" (None until it ends)."""
        row = self._row(job_id)
        folder = paths.job_dir(self.state_dir, row["id"])
        record = record_of(row)
        record["live"] = read_json(os.path.join(folder, paths.LIVE_NAME))
        record["summary"] = row["summary"] if row["summary"] is not None else (
            read_json(os.path.join(folder, paths.SUMMARY_NAME)))
        return record

    def job_details(self, job_id: str) -> dict:
        """get_job plus what the server keeps besides the record (parallelism, cores, pid, ...)."""
        row = self._row(job_id)
        details = self.get_job(job_id)
        details.update({k: row[k] for k in EXTRA_KEYS})
        return details

    def list_logs(self, job_id: str) -> list[str]:
        """The job's log files, relative to its log folder (driver.log, <runtime job>/<task>_info.log, ...)."""
        row = self._row(job_id)
        return list_log_files(paths.job_log_dir(self.state_dir, row["id"]))

    def read_log(self, job_id: str, name: str, offset: int = 0, limit: int = 65536) -> tuple[str, int]:
        """Text of log `name` from byte `offset` (at most `limit` bytes) and the next offset. A name that
        escapes the job's log folder (.., absolute, a symlink) raises ValueError."""
        row = self._row(job_id)
        return read_log_file(paths.job_log_dir(self.state_dir, row["id"]), name, int(offset), int(limit))

    # -- acting ----------------------------------------------------------------------------------

    def submit_job(self, target: str, *, name: str | None = None, parallelism: dict[str, int] | None = None,
                   checkpoint_dir: str | None = None, cores: int | None = None, cwd: str | None = None) -> dict:
        """Queue a job; it starts when the queue's limits allow. `cores`: how many it counts against
        --cores (default 1 when unknown; `procflow submit` sends the pipeline's task count). `cwd`: the
        folder the driver runs in (the submitter's), which must be absolute."""
        target = _check_target(target)
        parallelism = _check_parallelism(parallelism)
        if name is None:
            name = _name_of(target)
        if not isinstance(name, str) or not name or len(name) > 200 or "\0" in name:
            raise ValueError("name must be a non-empty string of at most 200 characters")
        if checkpoint_dir is not None and (not isinstance(checkpoint_dir, str) or "\0" in checkpoint_dir
                                           or not checkpoint_dir):
            raise ValueError("checkpoint_dir must be a path")
        if cores is not None and (not isinstance(cores, int) or isinstance(cores, bool) or cores < 1):
            raise ValueError(f"cores must be an integer >= 1, got {cores!r}")
        if cwd is not None and (not isinstance(cwd, str) or not os.path.isabs(cwd) or "\0" in cwd):
            raise ValueError("cwd must be an absolute path")
        job_id = self._new_id()
        self.store.insert({"id": job_id, "name": name, "target": target, "status": "queued",
                           "submitted_at": time.time(), "parallelism": parallelism,
                           "checkpoint_dir": checkpoint_dir, "cwd": cwd, "cores": cores or 1})
        self.runner.wake()
        return record_of(self._row(job_id))

    def stop_job(self, job_id: str) -> dict:
        """Ask the job to stop: a queued job is stopped at once, a running one gracefully (SIGTERM to its
        driver: sources end, tasks drain), then killed after the grace period. Returns the record (a
        running job shows "running" until its driver has exited)."""
        row = self._row(job_id)
        self.runner.stop(row["id"])
        return record_of(self._row(job_id))

    async def wait_job(self, job_id: str) -> dict:
        """The record once the job has ended (event loop only)."""
        row = self._row(job_id)
        await self.runner.wait_finished(row["id"])
        return record_of(self._row(job_id))

    # -- helpers ---------------------------------------------------------------------------------

    def _row(self, job_id: str) -> dict[str, Any]:
        if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
            raise UnknownJobError(job_id)
        row = self.store.get(job_id)
        if row is None:
            raise UnknownJobError(job_id)
        return row

    def _new_id(self) -> str:
        while True:
            job_id = secrets.token_hex(4)
            if self.store.get(job_id) is None:
                return job_id


def _check_target(target: Any) -> str:
    if not isinstance(target, str) or not target.strip() or len(target) > MAX_TARGET or "\0" in target:
        raise ValueError("target must look like 'package.module:build' or 'path/to/file.py:build'")
    return target.strip()


def _check_parallelism(parallelism: Any) -> dict[str, int]:
    if parallelism is None:
        return {}
    if not isinstance(parallelism, dict):
        raise ValueError("parallelism must map operator names to task counts, e.g. {\"map\": 4}")
    out = {}
    for op, n in parallelism.items():
        if not isinstance(op, str) or not _OPERATOR.fullmatch(op):
            raise ValueError(f"parallelism: {op!r} is not an operator name")
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 4096:
            raise ValueError(f"parallelism: {op}={n!r}; expected an integer from 1 to 4096")
        out[op] = n
    return out


def _name_of(target: str) -> str:
    """The environment name `procflow run` would use: the module's last part, or the file's stem."""
    module = target.rpartition(":")[0] or target
    base = os.path.basename(module)
    if base.endswith(".py"):
        base = base[:-3]
    return base.rsplit(".", 1)[-1] or "job"
