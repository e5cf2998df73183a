"""A JobService stand-in for the web tests: jobs whose live snapshot moves with the clock.

It speaks the contract of procflow.server.jobs.JobService (list_jobs, get_job, stop_job, list_logs,
read_log) and records every call, so a test can show that a refused request ran nothing. A running
job's numbers are computed from the time since it started, so they change between two looks without
any thread or process behind them.
"""

from __future__ import annotations

import os
import time
from typing import Any

FINAL = ("succeeded", "failed", "stopped", "lost")


class UnknownJobError(KeyError):
    """As procflow.server.jobs.UnknownJobError: a KeyError."""


GRAPH = {
    "nodes": [{"name": "source", "parallelism": 2, "chain": 0},
              {"name": "parse", "parallelism": 2, "chain": 0},
              {"name": "enrich", "parallelism": 4, "chain": 1},
              {"name": "count", "parallelism": 2, "chain": 2},
              {"name": "sink", "parallelism": 2, "chain": 2}],
    "edges": [{"from": "source", "to": "parse", "kind": "forward"},
              {"from": "parse", "to": "enrich", "kind": "balance"},
              {"from": "enrich", "to": "count", "kind": "hash"},
              {"from": "count", "to": "sink", "kind": "forward"}],
}
TOTAL = 5_000_000


class FakeJob:
    def __init__(self, job_id: str, name: str, status: str, log_dir: str, *, submitted_at: float) -> None:
        self.id = job_id
        self.name = name
        self.status = status
        self.log_dir = log_dir
        self.submitted_at = submitted_at
        self.started = time.monotonic()
        self.frozen_elapsed: float | None = None if status == "running" else 12.0
        self.error: dict[str, str] | None = None

    def elapsed(self) -> float:
        return self.frozen_elapsed if self.frozen_elapsed is not None else time.monotonic() - self.started

    def record(self) -> dict[str, Any]:
        ended = self.status in FINAL
        return {"id": self.id, "name": self.name, "target": "examples/etl.py:pipeline", "status": self.status,
                "submitted_at": self.submitted_at,
                "started_at": None if self.status == "queued" else self.submitted_at + 0.1,
                "finished_at": self.submitted_at + 12.0 if ended else None,
                "exit_code": {"succeeded": 0, "failed": 1, "stopped": 130}.get(self.status),
                "error": self.error["message"] if self.error else None}

    def live(self) -> dict[str, Any]:
        t = self.elapsed()
        rate = 40_000 + 9_000 * ((int(t * 2) % 7) - 3)       # wobbles every half second
        done = min(TOTAL, int(t * 40_000))
        history = [[k / 2, int(k / 2 * 40_000), 40_000 + 9_000 * ((k % 7) - 3)] for k in range(1, int(t * 2) + 1)]
        operators = []
        for i, node in enumerate(GRAPH["nodes"]):
            busy = 97.0 if node["name"] == "enrich" else 35.0 + 8 * i + (int(t * 2) % 5)
            operators.append({"name": node["name"], "tasks": node["parallelism"], "records_in": done if i else 0,
                              "records_out": done, "rate": float(rate + i), "busy_pct": busy,
                              "cpu_pct": busy - 2.0, "fill_pct": None if i == 0 else (88.0 if i == 2 else 12.0 + i),
                              "errors": 1 if self.error and node["name"] == "enrich" else 0})
        fraction = done / TOTAL
        return {"job_id": self.id, "status": self.status, "elapsed": t,
                "progress": {"done": done, "total": TOTAL, "unit": "records", "fraction": fraction,
                             "eta_s": (TOTAL - done) / 40_000},
                "throughput": float(rate), "operators": operators, "bottleneck": "enrich", "graph": GRAPH,
                "history": history[-600:], "checkpoints": [], "error": self.error}


class FakeJobService:
    """Four jobs, newest first: `queued01` (waiting: no live snapshot yet), `running1` (running),
    `done0001` (succeeded), `fail0001` (failed with a traceback)."""

    def __init__(self, root: str) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.jobs: dict[str, FakeJob] = {}
        now = time.time()
        for index, (job_id, name, status) in enumerate([("fail0001", "nightly <b>etl</b>", "failed"),
                                                        ("done0001", "word count", "succeeded"),
                                                        ("running1", "clickstream etl", "running"),
                                                        ("queued01", "waiting job", "queued")]):
            log_dir = os.path.join(root, job_id, "logs")
            os.makedirs(os.path.join(log_dir, "0a1b2c3d"), mode=0o700)
            with open(os.path.join(log_dir, "driver.log"), "w") as f:
                f.write(f"driver of {job_id}\n")
            with open(os.path.join(log_dir, "0a1b2c3d", "enrich_0_info.log"), "w") as f:
                f.write("".join(f"enrich_0: batch {i} <script>alert(1)</script>\n" for i in range(50)))
            self.jobs[job_id] = FakeJob(job_id, name, status, log_dir, submitted_at=now - 100 + index)
        self.jobs["fail0001"].error = {"task": "enrich_1", "message": "ValueError: bad record {'id': 7}",
                                       "traceback": "Traceback (most recent call last):\n  File \"etl.py\", "
                                                    "line 12, in execute\nValueError: bad record {'id': 7}\n"}
        # A symlink out of the log folder, which read_log must refuse (the real service does too).
        outside = os.path.join(root, "secret.txt")
        with open(outside, "w") as f:
            f.write("not a log\n")
        os.symlink(outside, os.path.join(self.jobs["running1"].log_dir, "escape.log"))

    def _job(self, job_id: str) -> FakeJob:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise UnknownJobError(job_id) from None

    def list_jobs(self) -> list[dict[str, Any]]:
        self.calls.append(("list_jobs", ()))
        return [job.record() for job in sorted(self.jobs.values(), key=lambda j: -j.submitted_at)]

    def get_job(self, job_id: str) -> dict[str, Any]:
        self.calls.append(("get_job", (job_id,)))
        job = self._job(job_id)
        return {**job.record(), "live": None if job.status == "queued" else job.live(), "summary": None}

    def stop_job(self, job_id: str) -> dict[str, Any]:
        self.calls.append(("stop_job", (job_id,)))
        job = self._job(job_id)
        if job.status in ("running", "queued"):
            job.frozen_elapsed = job.elapsed()
            job.status = "stopped"
        return job.record()

    def list_logs(self, job_id: str) -> list[str]:
        self.calls.append(("list_logs", (job_id,)))
        job = self._job(job_id)
        names = []
        for folder, _, files in os.walk(job.log_dir):
            names += [os.path.relpath(os.path.join(folder, f), job.log_dir) for f in files]
        return sorted(names)

    def read_log(self, job_id: str, name: str, offset: int = 0, limit: int = 65536) -> tuple[str, int]:
        self.calls.append(("read_log", (job_id, name, offset, limit)))
        job = self._job(job_id)
        path = os.path.realpath(os.path.join(job.log_dir, name))
        if os.path.commonpath([path, os.path.realpath(job.log_dir)]) != os.path.realpath(job.log_dir):
            raise ValueError(f"log name {name!r} leaves the job's log folder")
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(limit)
        return data.decode("utf-8", "replace"), offset + len(data)
