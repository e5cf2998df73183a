"""InlineBackend: runs a whole ExecutionGraph in the driver process, deterministically, for debugging.

The one Dispatcher runs the job (contexts, messages, failure report, cleanup); this backend supplies
in-process parts, and runs the tasks inside its `wait()`, in the caller's thread (no monitor thread):

    make_inbox  one in-process inbox (a deque) per consuming task
    start()     services first (services.py: each replica's setup() in the driver, its ServiceReady by
                direct call); then one InlineTask (a BaseTask driven step by step) per node; nothing
                runs yet
    wait() #1   open every task (in graph order, which is topological); each reports Ready
    wait() #2   (the sources are released) for each source task, in order:
                    run its operator; every `chunk` records its router flushes and the scheduler pumps:
                        pump: each consuming task, in topological order, drains its gate without
                              blocking and processes the batch; a task that has seen one StopSignal
                              per input channel finishes and forwards its StopSignals
                    finish it (its StopSignals go out), pump
                every task must now have finished
    stop_tasks  close channels and loggers

Messages (Ready, Results, DeadLetter, Stopped, Failed) go to the Dispatcher by direct call.

The tasks are the same BaseTask, operators, BaseRouter and stop protocol as in the process executor;
only the channels (deques) and the scheduling differ. Nothing depends on the clock, so a run is
repeatable record for record, a breakpoint in a user function stops the whole job, and coverage sees
every line. A failure raises JobFailedError naming the task and the record, with the original
exception as `__cause__` (so `pdb.post_mortem()` lands in the user's frame).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from procflow.core.errors import JobFailedError
from procflow.core.functions import IterableBatch
from procflow.core.signals import StopSignal
from procflow.runtime.backend import Exited, JobEvents, JobSetup, TaskStart
from procflow.runtime.communication.router import BaseRouter
from procflow.runtime.context.task_context import TaskContext
from procflow.runtime.control import ErrorReport, Failed, Ready, Stopped
from procflow.runtime.job_control import FIELDS
from procflow.runtime.operators.source import SourceOperator
from procflow.runtime.split_plan import SplitCursors, split_counts
from procflow.runtime.task.base_task import BaseTask
from procflow.runtime.task.entry import close_logger, open_task_logger

from .channel import InlineInbox
from .services import InlineServiceHost

DEFAULT_CHUNK = 1024   # records a source emits between two pumps of the downstream tasks


class InlineJobControl(SplitCursors):
    """The in-process stand-in for the job segment: start/stop flags, the counters table, and split claims
    (a counter per split source: its instances run one after another, so the first reads every split)."""

    def __init__(self, n_tasks: int, split_counts: Sequence[int] = ()) -> None:
        super().__init__(split_counts)
        self.n_tasks = n_tasks
        self.counters = np.zeros((n_tasks, len(FIELDS)), dtype=np.float64)
        self._stop = threading.Event()

    def release_sources(self) -> None:
        pass   # the sources run when the backend's wait() runs them

    def wait_for_start(self) -> None:
        pass

    def request_stop(self) -> None:
        self._stop.set()

    # Checkpoints: the number of the latest one the driver asked for; sources read it at each tick.
    checkpoint_requested = 0

    def request_checkpoint(self, number: int) -> None:
        self.checkpoint_requested = number

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def sleep_unless_stopped(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def snapshot(self) -> dict[int, dict[str, float]]:
        rows = self.counters.copy()
        return {i: dict(zip(FIELDS, map(float, rows[i]))) for i in range(self.n_tasks)}

    def close(self) -> None:
        pass


class _Control:
    """What a task's `ctx.control` is inline: messages go straight to the Dispatcher (a direct call)."""

    def __init__(self, backend: InlineBackend) -> None:
        self._backend = backend

    def send(self, msg: Any) -> None:
        self._backend.deliver(msg)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class InDriver:
    """The handle of an inline task: it runs in the driver's own process."""

    pid: int


class InlineRouter(BaseRouter):
    """BaseRouter that, for a source task, hands control to the scheduler every `chunk` records."""

    on_chunk: Any = None
    chunk = DEFAULT_CHUNK

    def route(self, payload: Any, key: Any, keyed: bool) -> None:
        super().route(payload, key, keyed)
        if self.on_chunk is not None and self.records_out % self.chunk == 0:
            self.on_chunk()


class InlineTask(BaseTask):
    """A BaseTask driven step by step by the executor instead of blocking on its gate."""

    cpu_clock = None   # every task runs in the driver's thread: no CPU time of its own to report

    def __init__(self, ctx: TaskContext, function: Any, backend: InlineBackend) -> None:
        super().__init__(ctx, function)
        self._backend = backend
        self._interval = float("inf")   # flush when the scheduler says so, never by the clock
        self.finished = False

    def _attach(self) -> None:
        self.ctx.attach(job_control=self._backend.job_control, router_class=InlineRouter)
        router = self.ctx.router
        if isinstance(self.operator, SourceOperator) and isinstance(router, InlineRouter):
            router.chunk = self._backend.chunk
            router.on_chunk = self._backend._source_chunk

    def _tick(self, waited: float = 0.0) -> bool:
        # Called by a source on its timer (ignored: pumping is by record count, so runs repeat
        # exactly) and after a back-off (an unbounded source had nothing: let the rest run).
        self.wait_s += waited
        if waited:
            self._backend._source_chunk()
        self._barrier_if_requested()
        return self.ctx.job_control.stop_requested


def _router(task: InlineTask) -> BaseRouter:
    """A task's router, attached by open()."""
    router = task.ctx.router
    assert router is not None, "the task is not open"
    return router


class _TaskFailed(Exception):
    """Carries a failure out of nested steps (a pump runs inside a source's emit) to `wait()`."""

    def __init__(self, task: InlineTask, exc: BaseException) -> None:
        super().__init__(task.ctx.name)
        self.task = task
        self.exc = exc


class _Killed(Exception):
    """A kill request arrived between two chunks: unwind every step at once."""


class InlineBackend:
    """The Backend that runs every task in the driver's thread, one step at a time (see the module doc)."""

    kind = "inline"
    measures_cpu = False   # see InlineTask.cpu_clock: summaries give cpu_pct None
    watches_stalls = False
    collects_in_driver = False   # every task runs in the driver already
    runs_in_driver_thread = True
    checkpoints_unsupported = ""
    broken_channel_grace = 0.0
    context_class = TaskContext

    def __init__(self, chunk: int = DEFAULT_CHUNK) -> None:
        self.chunk = chunk
        self.job: JobSetup | None = None
        self.job_control: InlineJobControl | None = None
        self.tasks: list[InlineTask] = []
        self._events: JobEvents | None = None
        self._control = _Control(self)
        self._current: InlineTask | None = None
        self._opened = False

    def bind(self, events: JobEvents) -> None:
        self._events = events

    def deliver(self, msg: Any) -> None:
        assert self._events is not None, "bind() first"
        self._events.on_message(msg)

    def preflight(self) -> None:
        pass

    # -- preparing ---------------------------------------------------------------------------------

    def open_job(self, job: JobSetup) -> InlineJobControl:
        self.job = job
        self.job_control = InlineJobControl(len(job.graph.nodes), split_counts(job.splits))
        return self.job_control

    def check_capacity(self, consumers: list[Any], services: Mapping[str, Any], job_control: Any) -> None:
        pass   # deques in this process: nothing to reserve

    def make_inbox(self, node: Any) -> InlineInbox:
        assert self.job is not None
        return InlineInbox(f"inline:{node.name}", tuple(e.input_index for e in node.in_edges),
                           int(self.job.config["batch_bytes"]))

    def edge(self, inbox: Any, edge: Any) -> Any:
        return inbox.edge(edge.slot)

    def control_channel(self, task: str) -> _Control:
        return self._control

    def job_segment(self) -> str:
        return ""

    def service_host(self) -> InlineServiceHost:
        return InlineServiceHost(self)   # replicas are objects in the driver (services.py)

    def stall_probes(self) -> dict[str, Any]:
        return {}

    # -- running -----------------------------------------------------------------------------------

    def start(self, tasks: Mapping[str, TaskStart], before: Callable[[], None]) -> dict[str, InDriver]:
        assert self.job is not None
        before()
        graph = self.job.graph
        shared_iterators: dict[int, list] = {}
        for name, task in tasks.items():
            node = graph.nodes[name]
            function = task.function
            if isinstance(function, IterableBatch) and node.parallelism > 1:
                # Forked instances each read their own copy of an iterator; here they would share one,
                # and instance 0 would drain it. Materialise it once for all the instances. (Lists and
                # other sequences are split sources: their instances claim index ranges, no copy needed.)
                it = function.iterable
                if iter(it) is it:
                    if node.transformation_id not in shared_iterators:
                        shared_iterators[node.transformation_id] = list(it)
                    function.iterable = shared_iterators[node.transformation_id]
            head = InlineTask(task.ctx, function, self)
            # The operators chained behind it run in its task (runtime/task/chain.py), as in a process.
            head.chain_with([InlineTask(member.ctx, member.function, self) for member in task.chained])
            for member in head.chain_tasks():
                member.ctx.logger = open_task_logger(member.ctx.name, member.ctx.log_dir,
                                                     self.job.config["log_level"])
            self.tasks.append(head)
        return {name: InDriver(os.getpid()) for name in tasks}

    def wait(self, timeout: float | None) -> list[Any]:
        """One step of the job: first open every task (each reports Ready); then, once the Dispatcher
        has released the sources, run them and everything downstream to the end."""
        try:
            if not self._opened:
                self._opened = True
                for task in self.tasks:
                    self._step(task, task.open)
                    task.begin()
                    for member in task.chain_tasks():
                        self.deliver(Ready(member.ctx.name, os.getpid()))
                return []
            for task in self.tasks:
                if isinstance(task.operator, SourceOperator):
                    self._step(task, self._run_source, task)
                    self._pump()
            self._pump()
        except _TaskFailed as failure:
            return [self._failed(failure.task, failure.exc)]
        except _Killed:
            return []
        waiting = [t.ctx.name for t in self.tasks if not t.finished]
        if waiting:  # cannot happen while every channel carries its StopSignal; say so if it does
            raise JobFailedError(f"inline executor: tasks {waiting} never received all their StopSignals")
        return []

    def _run_source(self, task: InlineTask) -> None:
        operator = task.operator
        assert isinstance(operator, SourceOperator)
        reason = operator.run(task._tick, task._waited)
        self._finish(task, StopSignal(task.ctx.name, reason))

    def _finish(self, task: InlineTask, signal: StopSignal) -> None:
        task.finish(signal)
        task.finished = True
        task.ctx.logger.info("stopped: %d in, %d out (%s)", task.records_in, _router(task).records_out,
                             signal.reason)
        self.deliver(Stopped(task.ctx.name, task.metrics(), task.operator.end_commit))

    def _source_chunk(self) -> None:
        """A source emitted `chunk` records (or had nothing for now): publish them, run the rest, and
        apply what other threads asked meanwhile (a stop ends the sources; a kill ends the job)."""
        task = self._current
        if task is not None:
            _router(task).flush()
            task._publish()
        self._pump()
        assert self._events is not None
        if self._events.handle_requests():
            raise _Killed()
        self._events.poll_checkpoints()   # one due (or asked for) goes out at the sources' next tick
        self._barriers_from_waiting_sources(task)

    def _barriers_from_waiting_sources(self, running: InlineTask | None) -> None:
        """The sources run one after another here: one that has not started yet takes a checkpoint's
        barrier at once (its state: nothing emitted), or every checkpoint would wait for it to start,
        that is for the sources before it to end. The running source takes it at its next tick; a finished
        one has sent its final state."""
        for task in self.tasks:
            if task is not running and not task.finished and isinstance(task.operator, SourceOperator):
                self._step(task, task._barrier_if_requested)

    def _pump(self) -> None:
        """Run every consuming task on what it has, in topological order, until nothing moves."""
        moved = True
        while moved:
            moved = False
            for task in self.tasks:
                if task.finished or task.ctx.gate is None:
                    continue
                items = task.ctx.gate.read(0)
                if items:
                    moved = True
                    self._step(task, self._consume, task, items)

    def _consume(self, task: InlineTask, items: list) -> None:
        task.process_batch(items)
        task.operator.flush()
        _router(task).flush()
        task._publish()
        if task.done:
            self._finish(task, task.last_signal)

    def _step(self, task: InlineTask, fn: Any, *args: Any) -> None:
        previous, self._current = self._current, task
        try:
            fn(*args)
        except (_TaskFailed, _Killed):
            raise
        except (Exception, SystemExit) as exc:  # as the process executor: SystemExit from user code too
            raise _TaskFailed(task, exc) from exc
        finally:
            self._current = previous

    def _failed(self, head: InlineTask, exc: BaseException) -> Failed:
        """What a task process would report, with the live exception for pdb.post_mortem: for the
        operator of the chain that raised."""
        task = head.failing_task()
        has_record, record = task.current_record(exc)
        label = getattr(task.operator, "label", type(task.operator.function).__name__)
        report = ErrorReport.from_exception(exc, task=task.ctx.name, pid=os.getpid(), function=label,
                                            record=record, has_record=has_record)
        task.ctx.logger.error("failed in %s while %s: %s: %s", label, task.stage, report.error_type,
                              report.message)
        task.ctx.logger.debug("%s", report.traceback)
        return Failed(report, cause=exc)

    def wake(self) -> None:
        pass   # requests are applied between chunks (_source_chunk) and after each step

    def failure_hint(self, report: ErrorReport) -> str:
        return ""

    def exit_error(self, exited: Exited, ready: bool, progress: str) -> JobFailedError:
        return JobFailedError(f"task {exited.task} ended without reporting Stopped; {progress}", task=exited.task)

    # -- cleaning up -------------------------------------------------------------------------------

    def stop_tasks(self, failed: bool, grace: float) -> None:
        for head in self.tasks:
            for task in head.chain_tasks():
                task.ctx.detach()
                close_logger(task.ctx.logger)

    def close_control(self) -> None:
        pass

    def close_channels(self) -> None:
        pass

    def close_job_control(self) -> None:
        pass
