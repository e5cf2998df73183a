"""Dispatcher: turns an ExecutionGraph into running tasks, watches them, and cleans up after them.

    prepare()  sweep orphaned segments; create the job segment; check that /dev/shm has room for every
               ring (ShmBudget: ShmCapacityError otherwise, before anything forks); one inbox per
               consuming task (committed memory), one control pipe per task; build every TaskContext
    start()    start every task through the TaskFactory (SIGINT/SIGTERM blocked while forking); start the
               monitor thread. Interrupted half-way: terminate what started, re-raise
    monitor    blocks on multiprocessing.connection.wait(control pipes + process sentinels + wake pipe):
                 Ready from every task  -> release the sources
                 Results / DeadLetter   -> hand to the collectors / the job
                 Stopped from every task -> done
                 Failed, or a sentinel without Stopped -> fail the job, kill the rest; a dead task's
                   error carries its exit status, its last counters and faulthandler's stack if any
                 with config stall_timeout: also wakes every StallWatch.period; no progress anywhere for
                   stall_timeout while records wait -> fail the job naming the stalled task (stall_watch.py)
    cleanup()  SIGTERM, a grace period, SIGKILL (with a warning naming the task); join every process;
               unlink every segment; close every pipe. Idempotent.

Only the monitor thread reads control pipes. Other threads talk to it through the wake pipe.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
import time
from typing import Any

import multiprocess
from multiprocess import connection

from procflow.core.errors import JobFailedError, RemoteTraceback, ShmCapacityError, describe_exit
from procflow.graph.execution_graph import ExecutionGraph
from procflow.runtime.communication import ring as ringmod
from procflow.runtime.communication.queue_descriptor.mp_queue import MpInbox
from procflow.runtime.communication.queue_descriptor.shm_queue import ShmInbox
from procflow.runtime.communication.shm import segment_name, sweep_orphans
from procflow.runtime.context.task_context import TaskContext, output_specs
from procflow.runtime.control import DeadLetter, ErrorReport, Failed, Ready, Results, Stopped
from procflow.runtime.driver_collects import DriverCollects
from procflow.runtime.job_control import JobControl
from procflow.runtime.job_manager import JobManager
from procflow.runtime.job_monitor import JobMonitor
from procflow.runtime.private_files import PrivateDir, make_job_dir
from procflow.runtime.shm_budget import ShmBudget
from procflow.runtime.stall_watch import InputProbe, StallWatch
from procflow.runtime.task.entry import (
    STARTUP_SIGNALS,
    crash_log_name,
    crash_log_path,
    gc_paused_for_fork,
    task_main,
)
from procflow.runtime.task.lifeline import DriverLifeline
from procflow.runtime.task.main_guard import REIMPORTING_START_METHODS, name_error_hint

log = logging.getLogger("procflow.dispatcher")


def new_job_id() -> str:
    return secrets.token_hex(4)


class Dispatcher(JobMonitor):
    log = log  # Dispatcher.log of this backend

    def __init__(self, graph: ExecutionGraph, *, config: dict, env_dir: str, factory: Any,
                 collectors: dict, services: dict | None = None, job_id: str | None = None) -> None:
        self.graph = graph
        self.config = config
        self.factory = factory
        self.start_method: str = getattr(factory, "start_method", "fork")
        self.collectors = collectors
        self.service_specs = services or {}
        self.job_id = job_id or new_job_id()
        self.job_dir = os.path.join(env_dir, self.job_id)
        self.env_dir = env_dir
        self.manager = JobManager(self.job_id, [(n.name, n.operator) for n in graph.nodes.values()])
        self.handles: dict[str, Any] = {}
        self.owned_segments: list = []
        self.contexts: dict[str, TaskContext] = {}
        self._probes: dict[str, InputProbe] = {}   # consuming task -> what waits at its input (stall watch)
        self.functions: dict[str, Any] = {}
        self._readers: dict[Any, str] = {}
        self._writers: list = []
        self._owners: list = []
        self._wake_r, self._wake_w = os.pipe()
        self._requests: list[tuple[str, str]] = []
        self._released = False
        self._thread: threading.Thread | None = None
        self._cleaned = False
        self._aborted = False
        self._cleanup_lock = threading.Lock()
        self.job_control: JobControl | None = None
        self.service_manager: Any = None
        self._log_handler: logging.Handler | None = None

    # -- preparing ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        removed = sweep_orphans()
        make_job_dir(self.env_dir, self.job_id, self.config.get("keep_logs"))
        self._open_log()
        if removed:
            self.log.warning("removed %d shared-memory segment(s) left by dead drivers", len(removed))
        nodes = list(self.graph.nodes.values())
        self.job_control = JobControl.create(segment_name(self.job_id, "job"), len(nodes))
        self.owned_segments.append(self.job_control.segment)
        # Collects that decide nothing run here: their upstream tasks ship records to us directly.
        self.in_driver = DriverCollects(self.graph, self.manager, self.job_control.counters)
        driver_nodes = self.in_driver.tasks
        consumers = [node for node in nodes if node.in_edges and node.name not in driver_nodes]
        try:
            self._shm_budget(consumers).check(self.job_id)   # before any inbox exists or anything forks
        except ShmCapacityError as exc:
            self.log.error("%s", exc)   # Dispatcher.log tells the story too (procflow logs)
            raise
        inboxes = {node.name: self._make_inbox(node) for node in consumers}
        if self.service_specs:
            from procflow.runtime.service.manager import ServiceManager

            self.service_manager = ServiceManager(self, self.service_specs)
            self.service_manager.prepare()

        def ring_edge(e: Any) -> Any:
            return inboxes[e.dst].edge(e.slot)

        for slot, node in enumerate(nodes):
            if node.name in driver_nodes:
                continue
            t = self.graph.transformations[node.transformation_id]
            outputs = output_specs(node, lambda e: self.in_driver.edge(e, ring_edge))
            reader, writer = self.factory.control_pipe()
            self._readers[reader] = node.name
            self._writers.append(writer)
            self.contexts[node.name] = TaskContext(
                name=node.name, operator_name=node.operator, kind=node.kind, parallel_index=node.index,
                parallelism=node.parallelism, job_id=self.job_id, env_dir=self.env_dir, task_slot=slot,
                job_segment=self.job_control.segment.name, n_tasks=len(nodes),
                inbox=inboxes.get(node.name), outputs=outputs, options=dict(t.options),
                config=dict(self.config), control=writer,
                service_directory=self.service_manager.directory if self.service_manager else None)
            self.functions[node.name] = t.function.build()
        self.log.info("job %s prepared: %d tasks, %d channels, queue=%s%s", self.job_id, len(nodes),
                      len(self.graph.edges), self.config["queue"],
                      f"; run by the driver: {', '.join(sorted(driver_nodes))}" if driver_nodes else "")

    def _shm_budget(self, consumers: list) -> ShmBudget:
        from procflow.runtime.service.manager import shm_segment_sizes

        shm_rings = self.config["queue"] == "shm"
        return ShmBudget(
            job_bytes=self.job_control.segment.size,
            ring_slots=tuple(len(node.in_edges) for node in consumers) if shm_rings else (),
            service_bytes=tuple(shm_segment_sizes(self.service_specs, len(self.graph.nodes))),
            ring_bytes=int(self.config["ring_bytes"]))

    def _make_inbox(self, node) -> Any:
        indices = tuple(e.input_index for e in node.in_edges)
        if self.config["queue"] == "mp":
            # A user factory need not carry a multiprocessing context; the mp queues only need one.
            context = getattr(self.factory, "mp_context", None) or multiprocess.get_context(self.start_method)
            inbox = MpInbox(node.name, indices, context)
        else:
            capacity = ringmod.ring_capacity(int(self.config["ring_bytes"]))
            inbox = ShmInbox(segment_name(self.job_id, "in"), indices, capacity, int(self.config["batch_bytes"]))
        owner = inbox.create()
        self._owners.append(owner)
        self._probes[node.name] = InputProbe(inbox, owner if isinstance(inbox, ShmInbox) else None)
        return inbox


    # -- running -----------------------------------------------------------------------------------

    def start(self) -> None:
        parent = DriverLifeline.of_this_process()
        try:
            # What the driver holds stays out of its children's garbage collection, so that no
            # finaliser of the driver's objects runs in a task or service (see gc_paused_for_fork).
            with gc_paused_for_fork():
                self._fork_children(parent)
            # The driver keeps only the read ends: a task's writer closes with the task.
            for writer in self._writers:
                writer.close()
            self._writers.clear()
            self.manager.mark_running()
            self.start_monitor("procflow-monitor")
        except BaseException:
            # Interrupted (Ctrl-C) or failed half-way: no task may outlive this call, and the tasks
            # already started wait for a start signal that will never come, so terminate them at once.
            self._aborted = True
            if self._thread is not None:
                self.request("kill", "interrupted while starting")
                self.join_monitor()
            else:
                self.cleanup()
            raise

    def _fork_children(self, parent: DriverLifeline) -> None:
        if self.service_manager is not None:
            self.service_manager.start(parent)
        # Ctrl-C / SIGTERM / SIGHUP stay blocked while tasks fork: a child inherits the mask and unblocks only
        # after it has set its own handlers (entry.become_child), so a signal arriving during start-up
        # reaches the driver (once the mask is restored) and never half-started children.
        masked = signal.pthread_sigmask(signal.SIG_BLOCK, STARTUP_SIGNALS)
        try:
            for name, ctx in self.contexts.items():
                handle = self.factory.start(name, task_main, (ctx, self.functions[name], parent))
                self.handles[name] = handle
                self.manager.tasks[name].pid = handle.pid
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, masked)

    def request(self, what: str, reason: str = "") -> None:
        """Ask the monitor thread to 'stop' (graceful) or 'kill' (now)."""
        self._requests.append((what, reason))
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _watch(self) -> None:
        manager = self.manager
        sentinels = {h.sentinel: name for name, h in self.handles.items()}
        if self.service_manager is not None:
            sentinels.update(self.service_manager.sentinels())
        readers = dict(self._readers)
        watch = self._stall_watch()
        while not manager.all_stopped:
            waitables = [*readers, *sentinels, self._wake_r]
            # With a stall watch, wake at least every watch.period even when no message comes.
            timeout = watch.period if watch is not None and self._released else None
            for ready in connection.wait(waitables, timeout):
                if ready in readers:
                    self._drain(ready, readers)
            for ready in connection.wait(list(sentinels), timeout=0):
                name = sentinels.pop(ready)
                self._on_exit(name, readers)
            if self._handle_requests():
                return
            if manager.failure is not None:
                return
            if not self._released and manager.all_ready and (
                    self.service_manager is None or self.service_manager.all_ready):
                self._released = True
                self.job_control.release_sources()
                self.log.info("all %d tasks ready; sources released", len(manager.tasks))
            if watch is not None and self._released:
                stalled = watch.check()
                if stalled is not None:
                    self._fail(stalled)
                    return

    def _stall_watch(self) -> StallWatch | None:
        timeout = self.config["stall_timeout"]
        if not timeout:
            return None
        return StallWatch(self.job_id, float(timeout), self.graph, dict(self._probes),
                          lambda: self.job_control.counters, self.manager.tasks)

    def _drain(self, conn: Any, readers: dict) -> None:
        try:
            while conn.poll():
                self._on_message(conn.recv())
        except (EOFError, OSError):
            readers.pop(conn, None)

    def _on_exit(self, name: str, readers: dict) -> None:
        for conn, task in list(readers.items()):
            if task == name:
                self._drain(conn, readers)
        if self.service_manager is not None and self.service_manager.owns(name):
            self.service_manager.on_exit(name)
            return
        handle = self.handles[name]
        handle.join(1.0)
        state = self.manager.tasks[name]
        state.exitcode = handle.exitcode
        if not state.stopped and self.manager.failure is None:
            crash = self._crash_report(name)
            bootstrap = self._died_while_bootstrapping(state.ready, handle.exitcode)
            how = "exited with code 1 before it was ready" if bootstrap else describe_exit(handle.exitcode)
            error = JobFailedError(
                f"task {name} (pid {handle.pid}) {how}, {self._progress(name)}; "
                "the job was stopped and every other task ended" + ("; its Python stack is chained below"
                                                                     if crash else "")
                + (self._bootstrap_hint() if bootstrap else ""),
                task=name, exitcode=handle.exitcode, remote_traceback=crash)
            if crash:
                error.__cause__ = RemoteTraceback(crash)
            self._fail(error)

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

    def _progress(self, name: str) -> str:
        """How far a dead task got. A working task publishes its counters at least every PUBLISH_INTERVAL
        (base_task), not per record, so this can lag the exact position by that much (or by one slow
        record); a dead process cannot tell us its record."""
        try:
            row = self.job_control.counters[self.manager.tasks[name].slot]
            n_in, n_out = int(row[0]), int(row[1])
        except (TypeError, IndexError, AttributeError):
            return "its counters are unavailable"
        return f"its last published counters showed {n_in} record(s) in, {n_out} out"

    def _crash_report(self, name: str) -> str | None:
        """The Python stack faulthandler wrote when the task died of a fatal signal (SIGSEGV, SIGABRT...)."""
        try:
            with PrivateDir(self.job_dir) as job_dir:
                text = job_dir.read_text(crash_log_name(name)).strip()
        except OSError:
            return None
        return text or None

    def _on_message(self, msg: Any) -> None:
        manager = self.manager
        if isinstance(msg, Results):
            self.in_driver.deliver(msg, self.collectors[msg.task])
        elif isinstance(msg, Ready):
            if self.service_manager is not None and self.service_manager.owns(msg.task):
                self.service_manager.mark_ready(msg.task)
            else:
                manager.mark_ready(msg.task, msg.pid)
        elif isinstance(msg, Stopped):
            if self.service_manager is not None and self.service_manager.owns(msg.task):
                self.service_manager.mark_stopped(msg.task, msg.metrics)
            else:
                manager.mark_stopped(msg.task, msg.metrics)
                self.log.info("%s stopped: %s", msg.task, msg.metrics)
                self.in_driver.task_stopped()
        elif isinstance(msg, DeadLetter):
            manager.dead_letters.extend(msg.entries)
        elif isinstance(msg, Failed):
            self._fail(job_error(msg.report, name_error_hint(msg.report, self.start_method)))
        else:
            self.service_manager.on_message(msg)

    def _handle_requests(self) -> bool:
        if not self._requests:
            return False
        try:
            os.read(self._wake_r, 4096)
        except OSError:
            pass
        while self._requests:
            what, reason = self._requests.pop(0)
            if what == "stop":
                self.manager.stop_requested = True
                self.job_control.request_stop()
                self.log.info("stop requested: sources will end and the job drains")
            elif what == "kill":
                self._fail(JobFailedError(f"job {self.job_id} was killed: {reason}"), status="killed")
                return True
        return False

    # -- cleaning up -------------------------------------------------------------------------------

    def cleanup(self) -> None:
        with self._cleanup_lock:
            if self._cleaned:
                return
            self._cleaned = True
        grace = float(self.config["stop_timeout"])
        handles = list(self.handles.items())
        if self.service_manager is not None:
            self.service_manager.stop_all(grace)
            handles += self.service_manager.handles()
        failed = self.manager.failure is not None or self._aborted
        if failed:
            for _, h in handles:
                if h.is_alive():
                    h.terminate()
        deadline = time.monotonic() + (0.5 if failed else grace)
        for name, h in handles:
            h.join(max(deadline - time.monotonic(), 0.01))
            if h.is_alive():
                self.log.warning("task %s (pid %s) did not exit in time; sending SIGKILL", name, h.pid)
                h.kill()
                h.join(2.0)
            if hasattr(h, "close") and not h.is_alive():
                try:
                    h.close()
                except ValueError:
                    pass
        for name in self.handles:  # a task terminated by us leaves an empty crash log behind
            path = crash_log_path(self.job_dir, name)
            try:
                if os.path.getsize(path) == 0:
                    os.unlink(path)
            except OSError:
                pass
        for conn in list(self._readers):
            conn.close()
        for writer in self._writers:
            writer.close()
        for owner in self._owners:
            owner.close()
            owner.unlink()
        if self.job_control is not None:
            self.manager.last_counters = self.job_control.snapshot()
            self.job_control.close()
            self.job_control.segment.unlink()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass



def job_error(report: ErrorReport, hint: str = "") -> JobFailedError:
    """The driver's error for a task's Failed report; `hint` (what to do) is appended to the message."""
    where = f" on record {report.record}" if report.record is not None else ""
    if report.context:
        where += f" ({report.context})" if where else f" {report.context}"
    error = JobFailedError(
        f"task {report.task} (pid {report.pid}) failed in {report.function}{where}: "
        f"{report.error_type}: {report.message}{hint}",
        task=report.task, record=report.record, remote_traceback=report.traceback,
        error_type=report.error_type)
    error.__cause__ = RemoteTraceback(report.traceback)
    return error
