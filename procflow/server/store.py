"""The job table in SQLite (stdlib sqlite3, WAL): what a restarted server knows about every job.

One row per job, written by the server only (drivers write files in their job folder, never the
database). The connection is shared by the socket server and the web app; a lock serialises it because
the web app may call from a worker thread.

    insert(record)          a queued job
    update(id, **fields)    status changes, timings, pid, exit code, error, final summary
    get(id) / all()         JobRecord dicts, newest first
    mark_lost()             at start: rows left "running" by a server that died
"""

from __future__ import annotations

import json
import sqlite3
import threading
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    target TEXT NOT NULL,
    status TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    exit_code INTEGER,
    error TEXT,
    parallelism TEXT NOT NULL DEFAULT '{}',
    checkpoint_dir TEXT,
    cwd TEXT,
    cores INTEGER NOT NULL DEFAULT 1,
    pid INTEGER,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    summary TEXT
)
"""

# The keys of a JobRecord, as list_jobs() returns them (the contract with the web app).
RECORD_KEYS = ("id", "name", "target", "status", "submitted_at", "started_at", "finished_at", "exit_code", "error")
# Kept in the row, shown by `procflow status --json`, not part of the record contract.
EXTRA_KEYS = ("parallelism", "checkpoint_dir", "cwd", "cores", "pid", "stop_requested")
_COLUMNS = RECORD_KEYS + EXTRA_KEYS + ("summary",)
_JSON_COLUMNS = ("parallelism", "summary")


class JobStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        # check_same_thread=False: the lock above serialises use from the loop and from web workers.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def insert(self, row: dict[str, Any]) -> None:
        names = [k for k in _COLUMNS if k in row]
        values = [_encode(k, row[k]) for k in names]
        with self._lock:
            self._db.execute(f"INSERT INTO jobs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                             values)

    def update(self, job_id: str, **fields: Any) -> None:
        unknown = set(fields) - set(_COLUMNS)
        if unknown:
            raise KeyError(f"no such job columns: {sorted(unknown)}")
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?",
                             [_encode(k, v) for k, v in fields.items()] + [job_id])

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            cur = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,))
            row = cur.fetchone()
        return None if row is None else _decode(row)

    def all(self) -> list[dict[str, Any]]:
        """Every row, newest first (rowid breaks ties between jobs submitted in the same instant)."""
        with self._lock:
            cur = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs ORDER BY submitted_at DESC, rowid DESC")
            rows = cur.fetchall()
        return [_decode(r) for r in rows]

    def with_status(self, *statuses: str) -> list[dict[str, Any]]:
        """Rows in these states, oldest first (the queue's order)."""
        marks = ", ".join("?" * len(statuses))
        with self._lock:
            cur = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE status IN ({marks}) "
                                   "ORDER BY submitted_at, rowid", statuses)
            rows = cur.fetchall()
        return [_decode(r) for r in rows]


def record_of(row: dict[str, Any]) -> dict[str, Any]:
    """The JobRecord part of a row (the contract's keys only)."""
    return {k: row[k] for k in RECORD_KEYS}


def _encode(key: str, value: Any) -> Any:
    if key in _JSON_COLUMNS and value is not None:
        return json.dumps(value, default=str)
    if key == "stop_requested":
        return int(bool(value))
    return value


def _decode(row: tuple) -> dict[str, Any]:
    out = dict(zip(_COLUMNS, row))
    for key in _JSON_COLUMNS:
        if out[key] is not None:
            out[key] = json.loads(out[key])
    out["stop_requested"] = bool(out["stop_requested"])
    return out
