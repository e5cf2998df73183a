"""LocalBackend: one OS process per task on this machine (the Backend of LocalEnvironment's process executor).

    open_job()        sweep segments of dead drivers; create the job segment (JobControl, with the split
                      sources' claim cursors)
    check_capacity()  /dev/shm must hold every ring and service segment (ShmBudget), before any exists
    make_inbox()      one shm inbox (committed memory) or mp inbox per consuming task
    control_channel() one control pipe per task and replica: the task gets the writer, we keep the reader
    start()           under spawn: numpy inputs into shared memory, and refuse a function that cannot
                      be shipped; with the driver's gc paused and SIGINT/SIGTERM/SIGHUP blocked, start
                      every replica then every task through the TaskFactory; close our copies of the
                      writers
    wait()            multiprocessing.connection.wait(control readers + process sentinels + wake pipe);
                      a fired sentinel yields its task's last messages, then Exited(exit code)
    exit_error()      a dead task's error: exit status, last counters, faulthandler's stack if any
    stop_tasks()      SIGTERM (when failed), a grace period, SIGKILL with a warning naming the task
    close_*()         pipes; rings and service segments (close + unlink); the job segment

Only the Dispatcher's monitor thread calls wait(); other threads only write to the wake pipe.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

import multiprocess
from multiprocess import connection

from procflow.core.errors import JobFailedError, RemoteTraceback, describe_exit
from procflow.core.service import ServiceSpec
from procflow.runtime.backend import Exited, JobSetup, ServiceHost, TaskStart
from procflow.runtime.communication import ring as ringmod
from procflow.runtime.communication.queue_descriptor.mp_queue import MpInbox
from procflow.runtime.communication.queue_descriptor.shm_queue import ShmInbox
from procflow.runtime.communication.shm import SharedSegment, segment_name, sweep_orphans
from procflow.runtime.context.task_context import TaskContext
from procflow.runtime.control import ErrorReport
from procflow.runtime.job_control import JobControl
from procflow.runtime.private_files import PrivateDir
from procflow.runtime.shared_arrays import share_arrays
from procflow.runtime.shm_budget import ShmBudget
from procflow.runtime.split_plan import split_counts
from procflow.runtime.stall_watch import ChainProbe, InputProbe
from procflow.runtime.task.entry import (
    STARTUP_SIGNALS,
    crash_log_name,
    crash_log_path,
    gc_paused_for_fork,
    task_main,
)
from procflow.runtime.task.factory import TaskFactory
from procflow.runtime.task.lifeline import DriverLifeline
from procflow.runtime.task.main_guard import REIMPORTING_START_METHODS, check_main_guard, name_error_hint

from .services import LocalServiceHost, shm_segment_sizes
from .shipping import check_shippable


class LocalBackend:
    kind = "local"
    measures_cpu = True
    watches_stalls = True
    collects_in_driver = True
    runs_in_driver_thread = False
    broken_channel_grace = 0.0   # a dead consumer's sentinel fires at once: no need to wait for it
    checkpoints_unsupported = ""
    context_class = TaskContext

    def __init__(self, factory: TaskFactory) -> None:
        self.factory = factory
        self.start_method: str = factory.start_method
        self.job: JobSetup | None = None
        self.job_control: JobControl | None = None
        self.handles: dict[str, Any] = {}            # tasks and service replicas: their processes
        self._tasks: list[str] = []
        self._readers: dict[Any, str] = {}           # every control pipe we read, until cleanup
        self._live: dict[Any, str] = {}              # those not yet at EOF
        self._sentinels: dict[Any, str] | None = None
        self._writers: list[Any] = []
        self._owners: list[Any] = []                 # inboxes and segments we created: close + unlink
        self._probes: dict[str, InputProbe | ChainProbe] = {}
        self._process_of: dict[str, str] = {}        # a chain member -> the task whose process runs it
        self._parent: DriverLifeline | None = None
        self._wake_r, self._wake_w = os.pipe()

    def bind(self, events: Any) -> None:
        pass   # messages come back through wait()

    def preflight(self) -> None:
        # Before anything is created: an unguarded main module under spawn fails here, once, not in
        # every task (see main_guard.py).
        check_main_guard(self.start_method)

    # -- preparing ---------------------------------------------------------------------------------

    def open_job(self, job: JobSetup) -> JobControl:
        self.job = job
        removed = sweep_orphans()
        if removed:
            job.log.warning("removed %d shared-memory segment(s) left by dead drivers", len(removed))
        self.job_control = JobControl.create(segment_name(job.job_id, "job"), len(job.graph.nodes),
                                             split_counts(job.splits))
        return self.job_control

    def check_capacity(self, consumers: list[Any], services: Mapping[str, ServiceSpec],
                       job_control: Any) -> None:
        assert self.job is not None and self.job_control is not None
        self.shm_budget(consumers, services).check(self.job.job_id)

    def shm_budget(self, consumers: list[Any], services: Mapping[str, ServiceSpec]) -> ShmBudget:
        assert self.job is not None and self.job_control is not None
        shm_rings = self.job.config["queue"] == "shm"
        return ShmBudget(
            job_bytes=self.job_control.segment.size,
            ring_slots=tuple(len(node.in_edges) for node in consumers) if shm_rings else (),
            service_bytes=tuple(shm_segment_sizes(services, len(self.job.graph.nodes))),
            ring_bytes=int(self.job.config["ring_bytes"]))

    def make_inbox(self, node: Any) -> Any:
        assert self.job is not None
        config = self.job.config
        indices = tuple(e.input_index for e in node.in_edges)
        inbox: MpInbox | ShmInbox
        if config["queue"] == "mp":
            # A user factory need not carry a multiprocessing context; the mp queues only need one.
            context = getattr(self.factory, "mp_context", None) or multiprocess.get_context(self.start_method)
            inbox = MpInbox(node.name, indices, context)
        else:
            capacity = ringmod.ring_capacity(int(config["ring_bytes"]))
            inbox = ShmInbox(segment_name(self.job.job_id, "in"), indices, capacity, int(config["batch_bytes"]))
        owner = inbox.create()
        self._owners.append(owner)
        self._probes[node.name] = InputProbe(inbox, owner if isinstance(inbox, ShmInbox) else None)
        return inbox

    def edge(self, inbox: Any, edge: Any) -> Any:
        return inbox.edge(edge.slot)

    def control_channel(self, task: str) -> Any:
        reader, writer = self.factory.control_pipe()
        self._readers[reader] = self._live[reader] = task
        self._writers.append(writer)
        return writer

    def job_segment(self) -> str:
        assert self.job_control is not None
        return self.job_control.segment.name

    def segment(self, role: str, size: int) -> SharedSegment:
        """A segment of this job, closed and unlinked at cleanup (for the service host)."""
        assert self.job is not None
        seg = SharedSegment(segment_name(self.job.job_id, role), size, create=True)
        self._owners.append(seg)
        return seg

    def service_host(self) -> ServiceHost:
        return LocalServiceHost(self)

    def stall_probes(self) -> dict[str, Any]:
        return dict(self._probes)

    # -- running -----------------------------------------------------------------------------------

    def start(self, tasks: Mapping[str, TaskStart], before: Callable[[], None]) -> dict[str, Any]:
        if self.start_method != "fork":
            # Numpy inputs go through shared memory once, not pickled into every task (shared_arrays.py).
            share_arrays([t.function for head in tasks.values() for t in (head, *head.chained)], self.segment)
            check_shippable(tasks)   # before any process starts
        assert self.job_control is not None, "open_job() first"
        self._parent = DriverLifeline.of_this_process()
        self._tasks = list(tasks)
        # What the driver holds stays out of its children's garbage collection, so that no finaliser of
        # the driver's objects runs in a task or service (see gc_paused_for_fork).
        with gc_paused_for_fork():
            before()
            # Ctrl-C / SIGTERM / SIGHUP stay blocked while tasks fork: a child inherits the mask and
            # unblocks only after it has set its own handlers (entry.become_child), so a signal arriving
            # during start-up reaches the driver (once the mask is restored) and never half-started
            # children.
            masked = signal.pthread_sigmask(signal.SIG_BLOCK, STARTUP_SIGNALS)
            try:
                for name, task in tasks.items():
                    # One process per chain: it runs `task` and the members chained behind it.
                    self.spawn(name, task_main, (task.ctx, task.function, task.chained))
                    for member in task.chained:
                        self._process_of[member.ctx.name] = name
                        self._probes[member.ctx.name] = ChainProbe(self.job_control.counters, member.ctx.task_slot)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, masked)
        # The driver keeps only the read ends: a task's writer closes with the task.
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        return {name: self.handles[name] for name in tasks}

    def spawn(self, name: str, target: Callable[..., None], args: tuple) -> Any:
        """Start `target(*args, lifeline)` in a process of its own (a task, or a service replica)."""
        handle = self.factory.start(name, target, (*args, self._parent))
        self.handles[name] = handle
        return handle

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def wait(self, timeout: float | None) -> list[Any]:
        if self._sentinels is None:
            self._sentinels = {h.sentinel: name for name, h in self.handles.items()}
        events: list[Any] = []
        for ready in connection.wait([*self._live, *self._sentinels, self._wake_r], timeout):
            if ready == self._wake_r:
                try:
                    os.read(self._wake_r, 4096)
                except OSError:
                    pass
            elif ready in self._live:
                events += self._drain(ready)
        for ready in connection.wait(list(self._sentinels), timeout=0):
            events += self._exited(self._sentinels.pop(ready))
        return events

    def wait_for(self, names: set[str], timeout: float) -> list[Any]:
        """The messages and exits of `names` only (service replicas while they stop)."""
        readers = [r for r, n in self._live.items() if n in names]
        sentinels = {self.handles[n].sentinel: n for n in names}
        events: list[Any] = []
        for ready in connection.wait([*readers, *sentinels], timeout):
            if ready in sentinels:
                events += self._exited(sentinels[ready])
            elif ready in self._live:
                events += self._drain(ready)
        return events

    def _exited(self, name: str) -> list[Any]:
        """A task's last messages, then its exit."""
        events: list[Any] = []
        for conn, task in list(self._live.items()):
            if task == name:
                events += self._drain(conn)
        handle = self.handles[name]
        handle.join(1.0)
        events.append(Exited(name, handle.exitcode))
        return events

    def _drain(self, conn: Any) -> list[Any]:
        messages = []
        try:
            while conn.poll():
                messages.append(conn.recv())
        except (EOFError, OSError):
            self._live.pop(conn, None)
        return messages

    def failure_hint(self, report: ErrorReport) -> str:
        return name_error_hint(report, self.start_method)

    def exit_error(self, exited: Exited, ready: bool, progress: str) -> JobFailedError:
        name = exited.task
        process = self._process_of.get(name, name)
        handle = self.handles[process]
        crash = self._crash_report(process)
        bootstrap = self._died_while_bootstrapping(ready, exited.exitcode)
        how = "exited with code 1 before it was ready" if bootstrap else describe_exit(exited.exitcode)
        error = JobFailedError(
            f"task {name} (pid {handle.pid}) {how}, {progress}; "
            "the job was stopped and every other task ended" + ("; its Python stack is chained below"
                                                                 if crash else "")
            + (self._bootstrap_hint() if bootstrap else ""),
            task=name, exitcode=exited.exitcode, remote_traceback=crash)
        if crash:
            error.__cause__ = RemoteTraceback(crash)
        return error

    def _died_while_bootstrapping(self, ready: bool, exitcode: int | None) -> bool:
        """Under spawn/forkserver a task imports the main module and unpickles its function before any
        procflow code runs in it, and a failure there exits with code 1 after printing its traceback;
        once procflow's code runs, every exception is reported (task_main). So code 1, unreported and
        not ready, means the bootstrap failed: the user should not hunt for an os._exit (issue 23.6)."""
        return not ready and exitcode == 1 and self.start_method in REIMPORTING_START_METHODS

    def _bootstrap_hint(self) -> str:
        return (f". Under start_method={self.start_method!r} this most likely means the new process failed "
                "before the task's code ran, while importing your main module or unpickling the function "
                "(an import error, or failing top-level code): its traceback is on this process's stderr")

    def _crash_report(self, name: str) -> str | None:
        """The Python stack faulthandler wrote when the task died of a fatal signal (SIGSEGV, SIGABRT...)."""
        assert self.job is not None
        try:
            with PrivateDir(self.job.job_dir) as job_dir:
                text = job_dir.read_text(crash_log_name(name)).strip()
        except OSError:
            return None
        return text or None

    # -- cleaning up -------------------------------------------------------------------------------

    def stop_tasks(self, failed: bool, grace: float) -> None:
        """Every process ends: SIGTERM at once when the job failed, else a grace period; then SIGKILL."""
        handles = list(self.handles.items())
        if failed:
            for _, h in handles:
                if h.is_alive():
                    h.terminate()
        deadline = time.monotonic() + (0.5 if failed else grace)
        for name, h in handles:
            h.join(max(deadline - time.monotonic(), 0.01))
            if h.is_alive():
                log = self.job.log if self.job is not None else None
                if log is not None:
                    log.warning("task %s (pid %s) did not exit in time; sending SIGKILL", name, h.pid)
                h.kill()
                h.join(2.0)
            if hasattr(h, "close") and not h.is_alive():
                try:
                    h.close()
                except ValueError:
                    pass
        if self.job is not None:
            self._remove_empty_crash_logs(self.job.job_dir)

    def _remove_empty_crash_logs(self, job_dir: str) -> None:
        for name in self._tasks:   # a task terminated by us leaves an empty crash log behind
            path = crash_log_path(job_dir, name)
            try:
                if os.path.getsize(path) == 0:
                    os.unlink(path)
            except OSError:
                pass

    def close_control(self) -> None:
        for conn in list(self._readers):
            conn.close()
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    def close_channels(self) -> None:
        for owner in self._owners:
            owner.close()
            owner.unlink()
        self._owners.clear()

    def close_job_control(self) -> None:
        if self.job_control is not None:
            self.job_control.close()
            self.job_control.segment.unlink()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
