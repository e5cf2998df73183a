"""InlineExecutor: runs a whole ExecutionGraph in the driver process, deterministically, for debugging.

    prepare()   one in-process inbox (a deque) per consuming task, one TaskContext and BaseTask per node
    run()       open every task (in graph order, which is topological)
                for each source task, in order:
                    run its operator; every `chunk` records its router flushes and the scheduler pumps:
                        pump: each consuming task, in topological order, drains its gate without
                              blocking and processes the batch; a task that has seen one StopSignal
                              per input channel finishes and forwards its StopSignals
                    finish it (its StopSignals go out), pump
                every task must now have finished; close channels and loggers

The tasks are the same BaseTask, operators, BaseRouter and stop protocol as in the process executor;
only the channels (deques) and the scheduling differ. Nothing depends on the clock, so a run is
repeatable record for record, a breakpoint in a user function stops the whole job, and coverage sees
every line. A failure raises JobFailedError naming the task and the record, with the original
exception as `__cause__` (so `pdb.post_mortem()` lands in the user's frame).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np

from procflow.core.errors import JobFailedError
from procflow.core.functions import IterableBatch
from procflow.core.signals import StopSignal
from procflow.graph.execution_graph import ExecutionGraph
from procflow.runtime.communication.router import BaseRouter
from procflow.runtime.context.task_context import TaskContext, output_specs
from procflow.runtime.control import DeadLetter, ErrorReport, Results
from procflow.runtime.dispatcher import job_error, new_job_id
from procflow.runtime.job_control import FIELDS
from procflow.runtime.job_manager import JobManager
from procflow.runtime.job_monitor import ERROR_LOG
from procflow.runtime.operators.source import SourceOperator
from procflow.runtime.private_files import make_job_dir, open_private_text
from procflow.runtime.task.base_task import BaseTask
from procflow.runtime.task.entry import close_logger, open_task_logger

from .channel import InlineInbox

DEFAULT_CHUNK = 1024   # records a source emits between two pumps of the downstream tasks


class InlineJobControl:
    """The in-process stand-in for the job segment: start/stop flags and the counters table."""

    def __init__(self, n_tasks: int) -> None:
        self.n_tasks = n_tasks
        self.counters = np.zeros((n_tasks, len(FIELDS)), dtype=np.float64)
        self._stop = threading.Event()

    def release_sources(self) -> None:
        pass

    def wait_for_start(self) -> None:
        pass

    def request_stop(self) -> None:
        self._stop.set()

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
    """What a task's `ctx.control` is inline: messages go straight to the executor."""

    def __init__(self, executor: InlineExecutor) -> None:
        self._executor = executor

    def send(self, msg: Any) -> None:
        self._executor._on_message(msg)

    def close(self) -> None:
        pass


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

    def __init__(self, ctx: TaskContext, function: Any, executor: InlineExecutor) -> None:
        super().__init__(ctx, function)
        self._executor = executor
        self._interval = float("inf")   # flush when the scheduler says so, never by the clock
        self.finished = False

    def _attach(self) -> None:
        self.ctx.attach(job_control=self._executor.job_control, router_class=InlineRouter)
        if isinstance(self.operator, SourceOperator):
            self.ctx.router.chunk = self._executor.chunk
            self.ctx.router.on_chunk = self._executor._source_chunk

    def _tick(self, waited: float = 0.0) -> bool:
        # Called by a source on its timer (ignored: pumping is by record count, so runs repeat
        # exactly) and after a back-off (an unbounded source had nothing: let the rest run).
        self.wait_s += waited
        if waited:
            self._executor._source_chunk()
        return self.ctx.job_control.stop_requested


class _TaskFailed(Exception):
    """Carries a failure out of nested steps (a pump runs inside a source's emit) to the executor."""

    def __init__(self, task: InlineTask, exc: BaseException) -> None:
        super().__init__(task.ctx.name)
        self.task = task
        self.exc = exc


class InlineExecutor:
    """Quacks like the Dispatcher where `Job` needs it (manager, job_control, request, join_monitor)."""

    measures_cpu = False   # see InlineTask.cpu_clock: summaries give cpu_pct None
    service_manager = None  # inline jobs run no services (submit refuses them); Job.summary() asks

    def __init__(self, graph: ExecutionGraph, *, config: dict, env_dir: str, collectors: dict,
                 chunk: int = DEFAULT_CHUNK, job_id: str | None = None) -> None:
        self.graph = graph
        self.config = config
        self.collectors = collectors
        self.chunk = chunk
        self.job_id = job_id or new_job_id()
        self.env_dir = env_dir
        self.job_dir = os.path.join(env_dir, self.job_id)
        self.manager = JobManager(self.job_id, [(n.name, n.operator) for n in graph.nodes.values()])
        self.job_control = InlineJobControl(len(graph.nodes))
        self.tasks: list[InlineTask] = []
        self._current: InlineTask | None = None

    # -- Job's view ------------------------------------------------------------------------------

    def request(self, what: str, reason: str = "") -> None:
        if what == "stop":
            self.manager.stop_requested = True
            self.job_control.request_stop()

    def join_monitor(self, timeout: float | None = None) -> bool:
        return True

    # -- running ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        make_job_dir(self.env_dir, self.job_id, self.config.get("keep_logs"))
        nodes = list(self.graph.nodes.values())
        batch_bytes = int(self.config.get("batch_bytes", 32 << 10))
        inboxes = {n.name: InlineInbox(f"inline:{n.name}", tuple(e.input_index for e in n.in_edges), batch_bytes)
                   for n in nodes if n.in_edges}
        control = _Control(self)
        shared_iterators: dict[int, list] = {}
        log_level = self.config.get("log_level", "INFO")
        for slot, node in enumerate(nodes):
            t = self.graph.transformations[node.transformation_id]
            outputs = output_specs(node, lambda e: inboxes[e.dst].edge(e.slot))
            ctx = TaskContext(
                name=node.name, operator_name=node.operator, kind=node.kind, parallel_index=node.index,
                parallelism=node.parallelism, job_id=self.job_id, env_dir=self.env_dir, task_slot=slot,
                job_segment="", n_tasks=len(nodes), inbox=inboxes.get(node.name), outputs=outputs,
                options=dict(t.options), config=dict(self.config), control=control)
            function = t.function.build()
            if isinstance(function, IterableBatch) and node.parallelism > 1:
                # Forked instances each read their own copy of an iterator; here they would share one,
                # and instance 0 would drain it. Materialise it once for all the instances.
                it = function.iterable
                if iter(it) is it:
                    if t.id not in shared_iterators:
                        shared_iterators[t.id] = list(it)
                    function.iterable = shared_iterators[t.id]
            ctx.logger = open_task_logger(ctx.name, ctx.log_dir, log_level)
            self.tasks.append(InlineTask(ctx, function, self))

    def run(self) -> None:
        """Run the job to its end (or first failure) in this thread."""
        manager = self.manager
        manager.mark_running()
        try:
            for task in self.tasks:
                self._step(task, task.open)
                task._start_clock()
                task.stage = "run"
                manager.mark_ready(task.ctx.name, os.getpid())
            for task in self.tasks:
                if isinstance(task.operator, SourceOperator):
                    self._step(task, self._run_source, task)
                    self._pump()
            self._pump()
            waiting = [t.ctx.name for t in self.tasks if not t.finished]
            if waiting:  # cannot happen while every channel carries its StopSignal; say so if it does
                raise JobFailedError(f"inline executor: tasks {waiting} never received all their StopSignals")
        except _TaskFailed as failure:
            self._fail(failure.task, failure.exc)
        except BaseException as exc:  # Ctrl-C in the middle of a step, or a bug here
            manager.fail(exc if isinstance(exc, JobFailedError) else
                         JobFailedError(f"job {self.job_id} was interrupted: {exc!r}"), status="killed")
            self.cleanup()
            manager.finish()
            if not isinstance(exc, JobFailedError):
                raise
            return
        self.cleanup()
        manager.finish()

    def _run_source(self, task: InlineTask) -> None:
        reason = task.operator.run(task._tick)
        self._finish(task, StopSignal(task.ctx.name, reason))

    def _finish(self, task: InlineTask, signal: StopSignal) -> None:
        task.finish(signal)
        task.finished = True
        self.manager.mark_stopped(task.ctx.name, task.metrics())
        task.ctx.logger.info("stopped: %d in, %d out (%s)", task.records_in, task.ctx.router.records_out,
                             signal.reason)

    def _source_chunk(self) -> None:
        """A source emitted `chunk` records (or had nothing for now): publish them, run the rest."""
        task = self._current
        if task is not None:
            task.ctx.router.flush()
            task._publish()
        self._pump()

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
        task.ctx.router.flush()
        task._publish()
        if task.done:
            self._finish(task, task.last_signal)

    def _step(self, task: InlineTask, fn: Any, *args: Any) -> None:
        previous, self._current = self._current, task
        try:
            fn(*args)
        except _TaskFailed:
            raise
        except (Exception, SystemExit) as exc:  # as the process executor: SystemExit from user code too
            raise _TaskFailed(task, exc) from exc
        finally:
            self._current = previous

    # -- messages, failures, cleanup ---------------------------------------------------------------

    def _on_message(self, msg: Any) -> None:
        if isinstance(msg, Results):
            self.collectors[msg.task]._extend(msg.records)
        elif isinstance(msg, DeadLetter):
            self.manager.dead_letters.extend(msg.entries)

    def _fail(self, task: InlineTask, exc: BaseException) -> None:
        has_record, record = task.current_record(exc)
        label = getattr(task.operator, "label", type(task.operator.function).__name__)
        report = ErrorReport.from_exception(exc, task=task.ctx.name, pid=os.getpid(), function=label,
                                            record=record, has_record=has_record)
        task.ctx.logger.error("failed in %s while %s: %s: %s", label, task.stage, report.error_type,
                              report.message)
        task.ctx.logger.debug("%s", report.traceback)
        error = job_error(report)
        error.__cause__ = exc   # the live exception, with its frames, for pdb.post_mortem
        self.manager.fail(error)
        try:
            with open_private_text(self.job_dir, ERROR_LOG, exclusive=False) as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {error}\n{report.traceback}\n")
        except OSError:
            pass

    def cleanup(self) -> None:
        for task in self.tasks:
            task.ctx.detach()
            close_logger(task.ctx.logger)
