"""Committing two-phase sinks' tokens (prepare_commit() / commit(token)) in the driver, in order.

    checkpoint n complete ─► submit(tokens of n)  ──queue──►  committer thread: sink.commit(token), in order
    job end               ─► close()  (every queued commit done)  ─► commit_now(the tails)
    a commit raises       ─► on_failure(what, task, exc): the job fails; no later token is committed

Why a thread of its own: commit(token) is the user's (an upload, a database transaction) and may take
seconds. Run by the monitor loop, it held up the next checkpoint and every message behind it. Order is
kept (one thread, one queue), and committing late is safe: a checkpoint is complete before its tokens are
committed, and a resumed job commits the restored checkpoint's tokens again (commit must be idempotent).

A backend that runs the job in the driver's own thread (inline) commits at once instead: its runs stay
single-threaded and repeatable.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any

# (operator, task, checkpoint number or FINAL, token)
Token = tuple[str, str, int, Any]


class TokenCommitter:
    def __init__(self, committers: Mapping[str, Any], on_failure: Callable[[str, str, Exception], None],
                 job_id: str, background: bool) -> None:
        self._committers = committers
        self._on_failure = on_failure
        self._job_id = job_id
        self._background = background
        self._committed: set[tuple[str, int]] = set()   # a finished task's token rides every later checkpoint
        self._queue: queue.Queue[tuple[list[Token], str] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.failed = False

    def submit(self, tokens: list[Token], when: str) -> None:
        """Commit `tokens` (of a completed checkpoint) after those submitted before; returns at once."""
        if not tokens:
            return
        if not self._background:
            self.commit_now(tokens, when)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"procflow-commit-{self._job_id}", daemon=True)
            self._thread.start()
        self._queue.put((tokens, when))

    def commit_now(self, tokens: list[Token], when: str) -> None:
        """Commit each token once, in this thread; the first that raises fails the job and ends committing."""
        for operator, task, checkpoint, token in tokens:
            committer = self._committers.get(operator)
            if self.failed or committer is None or (task, checkpoint) in self._committed:
                continue
            try:
                committer.commit(token)
            except Exception as exc:
                self.failed = True
                self._on_failure(f"job {self._job_id}: {operator}.commit(token) of {task} at {when}", task, exc)
                return
            self._committed.add((task, checkpoint))

    def close(self, timeout: float | None = None) -> bool:
        """Commit what is queued (those checkpoints are complete), then end the thread. False if a commit
        still runs after `timeout` (a failed job does not wait for ever on a stuck commit: the resumed job
        commits those tokens again)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self.commit_now(*item)
