"""The queue and the job drivers: which job runs when, how it starts, stops and is reaped.

    submit ─► row "queued" ─► _schedule(): FIFO; the head starts while fewer than --max-jobs run and
                              its cores fit in --cores (a job larger than --cores runs when nothing else
                              does); the head waits otherwise, and so does everything behind it
    _run(job) ─► `python -m procflow.server.job_driver` in a new session (its own process group), output
                 to logs/driver.log ─► row "running" (pid, started_at) ─► await its exit
    stop(job) ─► queued: "stopped" at once; running: SIGTERM to the driver (a graceful stop: sources
                 end, tasks drain, the driver frees everything and exits 130), SIGKILL to its whole
                 process group after the grace period
    exit ─► whatever is left of its process group is killed, shared memory of a dead driver is swept,
            the row gets its final state, exit code, error and summary; waiters wake; _schedule()

Every driver is a child of the server's main thread with a parent-death signal (job_driver.py), so a
server that dies stops its jobs too; the next server marks their rows "lost".
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import procflow
from procflow.runtime.communication.shm import sweep_orphans
from procflow.runtime.private_files import PrivateDir, private_dir
from procflow.server import paths
from procflow.server.store import JobStore

# The exit codes of a job (what `procflow wait` exits with), the same as `procflow run`'s.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
FINAL_STATES = ("succeeded", "failed", "stopped", "lost")


@dataclass
class Running:
    """A job the runner has started (or is starting)."""

    job_id: str
    cores: int
    pid: int | None = None
    kill_timer: asyncio.TimerHandle | None = None
    task: asyncio.Task | None = None


class Runner:
    def __init__(self, store: JobStore, state: str, *, max_jobs: int = 1, cores: int | None = None,
                 stop_grace: float = 10.0) -> None:
        if max_jobs < 1:
            raise ValueError(f"--max-jobs must be at least 1, got {max_jobs}")
        self.store = store
        self.state = state
        self.max_jobs = max_jobs
        self.cores = cores if cores is not None else (os.cpu_count() or 1)
        if self.cores < 1:
            raise ValueError(f"--cores must be at least 1, got {self.cores}")
        self.stop_grace = stop_grace
        self.running: dict[str, Running] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._closing = False

    # -- life of the runner ----------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> list[str]:
        """Take over the job table: rows a dead server left "running" become "lost", unless they have a
        checkpoint folder: those are queued again and resume from their latest checkpoint. Queued rows
        wait for their turn again. Returns the ids marked lost."""
        self._loop = loop
        self._loop_thread = threading.get_ident()
        lost = []
        for row in self.store.with_status("running"):
            if row["checkpoint_dir"]:
                self.store.update(row["id"], status="queued", pid=None)
                _say(f"job {row['id']} was running when the server stopped: queued to resume from its "
                     f"checkpoints in {row['checkpoint_dir']}")
                continue
            self.store.update(row["id"], status="lost", finished_at=time.time(), exit_code=EXIT_FAILED,
                              error="the server stopped while this job ran (its driver ended with it); "
                                    "submit it again")
            lost.append(row["id"])
        self.wake()
        return lost

    async def shutdown(self) -> None:
        """Stop every job: queued ones at once, running ones gracefully, then by force; wait for all."""
        self._closing = True
        for row in self.store.with_status("queued"):
            self._finish_queued(row["id"], "the server shut down before the job started")
        for job_id in list(self.running):
            self._signal_stop(job_id)
        tasks = [r.task for r in self.running.values() if r.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- the queue -------------------------------------------------------------------------------

    def wake(self) -> None:
        """Look at the queue again, from any thread."""
        self._in_loop(self._schedule)

    def _in_loop(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    def _schedule(self) -> None:
        if self._closing:
            return
        used = sum(r.cores for r in self.running.values())
        for row in self.store.with_status("queued"):
            if row["id"] in self.running:
                continue
            cores = max(1, int(row["cores"] or 1))
            if len(self.running) >= self.max_jobs:
                return
            if self.running and used + cores > self.cores:
                return   # FIFO: the head waits for room, and so does everything behind it
            running = Running(row["id"], cores)
            self.running[row["id"]] = running
            used += cores
            assert self._loop is not None
            running.task = self._loop.create_task(self._run(row, running))

    # -- one job ---------------------------------------------------------------------------------

    async def _run(self, row: dict[str, Any], running: Running) -> None:
        job_id = row["id"]
        try:
            proc = await self._spawn(row)
        except Exception as exc:   # a bad working folder, no such python: the job fails, the server stays
            self.running.pop(job_id, None)
            self.store.update(job_id, status="failed", started_at=time.time(), finished_at=time.time(),
                              exit_code=EXIT_FAILED, error=f"could not start the job's driver: {exc}")
            self._finished(job_id)
            return
        running.pid = proc.pid
        self.store.update(job_id, status="running", started_at=time.time(), pid=proc.pid)
        _say(f"job {job_id} started ({row['target']}, driver pid {proc.pid})")
        now = self.store.get(job_id)
        if (now is not None and now["stop_requested"]) or self._closing:   # asked while it was starting
            self._signal_stop(job_id)
        rc = await proc.wait()
        if running.kill_timer is not None:
            running.kill_timer.cancel()
        await self._clear_process_group(proc.pid)
        final = self.store.get(job_id) or row
        outcome = self._outcome(job_id, rc, final["stop_requested"])
        self.store.update(job_id, **outcome)
        _say(f"job {job_id} {outcome['status']} (exit code {outcome['exit_code']})")
        self.running.pop(job_id, None)
        self._finished(job_id)
        self._schedule()

    async def _spawn(self, row: dict[str, Any]) -> asyncio.subprocess.Process:
        job_id = row["id"]
        folder = paths.job_dir(self.state, job_id)
        private_dir(os.path.dirname(folder))
        private_dir(folder)
        private_dir(os.path.join(folder, paths.LOGS_DIR))
        with PrivateDir(os.path.join(folder, paths.LOGS_DIR)) as logs:
            log_fd = logs.open_file(paths.DRIVER_LOG, exclusive=False)
        argv = self.driver_argv(row, folder)
        env = dict(os.environ)
        # The driver runs in the submitter's folder; procflow must stay importable from there.
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(procflow.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        try:
            return await asyncio.create_subprocess_exec(
                *argv, cwd=row["cwd"] or None, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log_fd,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        finally:
            os.close(log_fd)

    def driver_argv(self, row: dict[str, Any], folder: str) -> list[str]:
        """The job driver's command line for this row."""
        job_id = row["id"]
        argv = [sys.executable, "-m", "procflow.server.job_driver", "--job-id", job_id, "--job-dir", folder,
                "--target", row["target"], "--name", row["name"], "--server-pid", str(os.getpid())]
        for op, n in (row["parallelism"] or {}).items():
            argv += ["--parallelism", f"{op}={n}"]
        # The driver kills its own tasks (freeing their shared memory) a little before the server would
        # kill the whole process group.
        argv += ["--stop-timeout", f"{max(self.stop_grace - 3.0, self.stop_grace / 2):g}"]
        if row["checkpoint_dir"]:
            argv += ["--checkpoint-dir", row["checkpoint_dir"]]
            if row["started_at"] is not None:   # it ran before (a server stopped under it): continue it
                argv += ["--resume"]
        return argv

    async def _clear_process_group(self, pgid: int) -> None:
        """Kill what is left of the job's process group (tasks of a driver that was SIGKILLed end by
        themselves, but not at once), wait until it is gone, then sweep shared memory a dead driver
        left (the sweep only takes segments whose owner is provably gone)."""
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        delay = 0.01
        deadline = time.monotonic() + 30
        while _group_alive(pgid) and time.monotonic() < deadline:
            await asyncio.sleep(delay)   # polling OS state with backoff: nothing else says a group ended
            delay = min(delay * 2, 0.2)
        await asyncio.get_running_loop().run_in_executor(None, sweep_orphans)

    def _outcome(self, job_id: str, rc: int, stop_requested: bool) -> dict[str, Any]:
        folder = paths.job_dir(self.state, job_id)
        live = read_json(os.path.join(folder, paths.LIVE_NAME))
        summary = read_json(os.path.join(folder, paths.SUMMARY_NAME))
        error = (live or {}).get("error") or None
        message = error.get("message") if isinstance(error, dict) else None
        out: dict[str, Any] = {"finished_at": time.time(), "summary": summary}
        if rc == EXIT_OK:
            out.update(status="succeeded", exit_code=EXIT_OK, error=None)
        elif rc == EXIT_INTERRUPTED or (rc < 0 and stop_requested):
            how = "" if rc >= 0 else f" (killed: it did not stop within {self.stop_grace:g}s)"
            out.update(status="stopped", exit_code=EXIT_INTERRUPTED, error=f"stopped{how}")
        elif rc < 0:
            name = _signal_name(-rc)
            hint = " (SIGKILL often means the OOM killer, or someone killed it)" if -rc == signal.SIGKILL else ""
            out.update(status="failed", exit_code=EXIT_FAILED,
                       error=f"the job's driver process was killed by {name}{hint}; its tasks were stopped "
                             "and its shared memory freed")
        else:
            out.update(status="failed", exit_code=rc,
                       error=message or f"the job's driver exited with code {rc}; see `procflow logs "
                                        f"{job_id} --task driver`")
        return out

    def _finished(self, job_id: str) -> None:
        event = self._events.pop(job_id, None)
        if event is not None:
            event.set()

    def _finish_queued(self, job_id: str, why: str) -> None:
        self.store.update(job_id, status="stopped", stop_requested=True, finished_at=time.time(),
                          exit_code=EXIT_INTERRUPTED, error=why)
        self._finished(job_id)

    # -- stop and wait ---------------------------------------------------------------------------

    def stop(self, job_id: str) -> None:
        """Ask a job to stop (any thread): queued -> stopped now; running -> graceful, then killed."""
        row = self.store.get(job_id)
        if row is None or row["status"] in FINAL_STATES:
            return
        self.store.update(job_id, stop_requested=True)
        self._in_loop(self._stop_in_loop, job_id)

    def _stop_in_loop(self, job_id: str) -> None:
        row = self.store.get(job_id)
        if row is None:
            return
        if row["status"] == "queued" and job_id not in self.running:
            self._finish_queued(job_id, "stopped before it started")
            self._schedule()
        elif job_id in self.running:
            self._signal_stop(job_id)

    def _signal_stop(self, job_id: str) -> None:
        running = self.running.get(job_id)
        if running is None or running.pid is None:
            return   # still starting: _run signals it once the driver exists
        try:
            os.kill(running.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if running.kill_timer is None and self._loop is not None:
            running.kill_timer = self._loop.call_later(self.stop_grace, self._kill, job_id)

    def _kill(self, job_id: str) -> None:
        running = self.running.get(job_id)
        if running is not None and running.pid is not None:
            try:
                os.killpg(running.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    async def wait_finished(self, job_id: str) -> None:
        """Return once the job is in a final state (loop thread only)."""
        row = self.store.get(job_id)
        if row is None or row["status"] in FINAL_STATES:
            return
        event = self._events.setdefault(job_id, asyncio.Event())
        await event.wait()


def _say(line: str) -> None:
    """One line on the server's stderr (what `procflow serve` shows in its terminal or log)."""
    print(f"procflow: {line}", file=sys.stderr, flush=True)


def read_json(path: str) -> Any:
    """A JSON file a driver wrote (atomically), or None if it is missing or unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _group_alive(pgid: int) -> bool:
    """True while a live (not zombie) process is in the group. A zombie counts as gone: it no longer
    holds memory or segments, and where PID 1 does not reap orphans it would never leave the group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


