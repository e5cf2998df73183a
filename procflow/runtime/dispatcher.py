"""Dispatcher: turns an ExecutionGraph into a running job on any Backend, watches it, and cleans up.

One Dispatcher for every backend (local processes, inline, Ray); what differs is the Backend's
(runtime/backend.py draws who calls what).

    prepare()  the split sources' plans (split_plan.py: a failing plan fails here, before anything exists);
               job folder and Dispatcher.log; committed outputs staged (a file sink's non-empty folder
               refuses the job here, before any process); the backend's job control; its capacity check (before
               anything is created); one inbox per consuming task; services (ServiceManager); then every
               TaskContext, built here and only here, from the graph
    start()    backend.start(tasks), services first; the monitor thread (inline: the caller's thread)
               runs the loop below. Interrupted half-way: kill what started, re-raise
    monitor    waits in backend.wait() for control messages and exits:
                 Ready from every task (and ServiceReady from every replica) -> release the sources
                 Results / DeadLetter    -> the collectors / the job
                 Stopped from every task -> done
                 Failed, or an exit without Stopped -> fail the job (failure report and Error.log)
                 stop / kill requests from other threads (ControlRequest)
                 with config stall_timeout, where the backend supports it: no progress anywhere for
                 that long while records wait -> fail the job naming the stalled task (stall_watch.py)
    cleanup()  one fixed order of small steps (see `cleanup`): once every task has ended, committed
               outputs are published if the job finished, else removed. Idempotent.

With a checkpoint folder (Local/RayEnvironment(checkpoint_dir=...), process or Ray backend): prepare() opens
it (on resume: the latest intact checkpoint, matched against this graph; every task, split source and file
sink is given what it restores), and the monitor loop takes a checkpoint every `checkpoint_interval`
seconds (runtime/checkpoint/coordinator.py).

Only the monitor thread handles control messages; other threads queue requests and wake it.
"""

from __future__ import annotations

import inspect
import os
import secrets
import threading
import time
from collections.abc import Mapping
from typing import Any

from procflow.core.committed_output import CommittedOutput
from procflow.core.config import ALIGNING_QUEUE_KINDS
from procflow.core.enums import ControlRequest, JobStatus, OperatorKind
from procflow.core.errors import JobFailedError, RemoteTraceback, ShmCapacityError
from procflow.core.service import ServiceSpec
from procflow.graph.execution_graph import ExecutionGraph
from procflow.runtime.backend import Backend, Exited, JobControlView, JobSetup, StartedTask, TaskStart
from procflow.runtime.checkpoint.barrier import FINAL, CheckpointAck
from procflow.runtime.checkpoint.committer import TokenCommitter
from procflow.runtime.checkpoint.coordinator import (
    DEAD_LETTERS,
    Checkpoints,
    check_checkpointable,
    fingerprint,
)
from procflow.runtime.checkpoint.rescale import repartition, resume_differences
from procflow.runtime.checkpoint.store import CheckpointStore, LoadedCheckpoint
from procflow.runtime.context.task_context import TaskContext, output_specs
from procflow.runtime.control import (
    DeadLetter,
    ErrorReport,
    Failed,
    Ready,
    Results,
    ServiceReady,
    ServiceStopped,
    Stopped,
)
from procflow.runtime.driver_collects import DriverCollects
from procflow.runtime.job_control import FIELDS
from procflow.runtime.job_manager import JobManager
from procflow.runtime.job_monitor import JobMonitor
from procflow.runtime.operators.transforms import two_phase
from procflow.runtime.private_files import make_job_dir
from procflow.runtime.service.manager import ServiceManager
from procflow.runtime.split_plan import SplitPlan, plan_job_splits
from procflow.runtime.stall_watch import StallWatch
from procflow.runtime.task.chain import ChainLink

# A task's Failed report whose error is one of these types says only that its consumer (or the service
# replica it called) went away; where the backend gives a grace period, the peer's own death (which names
# the real culprit) may win.
BROKEN_CHANNEL = "BrokenChannelError"
BROKEN_PEER = (BROKEN_CHANNEL, "ServiceUnavailableError")
_FILL = FIELDS.index("input_fill")


def new_job_id() -> str:
    return secrets.token_hex(4)


def job_error(report: ErrorReport, hint: str = "", cause: BaseException | None = None) -> JobFailedError:
    """The driver's error for a task's Failed report; `hint` (what to do) is appended to the message.
    The remote traceback is chained as __cause__, or `cause` itself where it is the live exception."""
    where = f" on record {report.record}" if report.record is not None else ""
    if report.context:
        where += f" ({report.context})" if where else f" {report.context}"
    error = JobFailedError(
        f"task {report.task} (pid {report.pid}) failed in {report.function}{where}: "
        f"{report.error_type}: {report.message}{hint}",
        task=report.task, record=report.record, remote_traceback=report.traceback,
        error_type=report.error_type)
    error.__cause__ = cause if cause is not None else RemoteTraceback(report.traceback)
    return error


class Dispatcher(JobMonitor):
    def __init__(self, graph: ExecutionGraph, *, config: Mapping[str, Any], env_dir: str, backend: Backend,
                 collectors: Mapping[str, Any], services: Mapping[str, ServiceSpec] | None = None,
                 job_id: str | None = None, checkpoint_dir: str | None = None, resume: bool = False) -> None:
        self.graph = graph
        self.config = config
        self.backend = backend
        self.measures_cpu = backend.measures_cpu
        self.collectors = collectors
        self.service_specs = dict(services or {})
        self.job_id = job_id or new_job_id()
        self.env_dir = env_dir
        self.job_dir = os.path.join(env_dir, self.job_id)
        self.manager = JobManager(self.job_id, [(n.name, n.operator) for n in graph.nodes.values()])
        self.contexts: dict[str, TaskContext] = {}
        self.functions: dict[str, Any] = {}
        self.handles: Mapping[str, StartedTask] = {}
        self.inboxes: dict[str, Any] = {}
        self.job_control: JobControlView | None = None
        self.split_plans: dict[str, SplitPlan] = {}
        self._split_owners: dict[str, list[int | None]] = {}   # the last split_assignments() read
        self._control_closed = False
        self.service_manager: ServiceManager | None = None
        self.in_driver: DriverCollects | None = None
        self._requests: list[tuple[ControlRequest, str]] = []
        self._released = False
        self._broken: tuple[float, JobFailedError] | None = None
        self._cleaned = False
        self._aborted = False
        self._cleanup_lock = threading.Lock()
        self.outputs: list[tuple[str, CommittedOutput]] = []   # (operator, its driver-side function)
        # Two-phase sinks (prepare_commit()/commit(token)): one function object each, built in the driver
        # to commit; the (task, checkpoint or FINAL) tokens committed so far; tails prepared at end of input.
        self.committers: dict[str, Any] = {}
        self.token_committer = TokenCommitter(self.committers, self._commit_failed, self.job_id,
                                              background=not backend.runs_in_driver_thread)
        self._end_tokens: list[tuple[str, str, int, Any]] = []
        self.checkpoint_dir = checkpoint_dir
        self.resume = resume
        self.checkpoints: Checkpoints | None = None
        backend.bind(self)

    # -- preparing ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        self.backend.preflight()
        self.split_plans = plan_job_splits(self.graph)   # a plan that fails, fails here: nothing exists yet
        opened = self._open_checkpoints()                # a graph that does not match, likewise
        make_job_dir(self.env_dir, self.job_id, self.config["keep_logs"])
        self._open_log()
        if opened is not None:
            store, restored = opened
            self.checkpoints = Checkpoints(store, float(self.config["checkpoint_interval"]), self.job_id,
                                           self.graph, self.log, restored)
            self.checkpoints.on_complete = self._publish_checkpoint
            self.log.info("checkpoints every %ss into %s%s", self.config["checkpoint_interval"], store.path,
                          f"; resuming from checkpoint {restored.number}" if restored is not None else "")
            for name, records in self.checkpoints.collected.items():   # collect()s start where it was
                if name in self.collectors:
                    self.collectors[name]._extend(records)
            self.manager.dead_letters.extend(self.checkpoints.collected.get(DEAD_LETTERS, []))
        self._prepare_outputs()
        if self.checkpoints is not None and self.checkpoints.restored_commits:
            self._commit_restored(self.checkpoints.restored_commits)
        backend = self.backend
        nodes = list(self.graph.nodes.values())
        self.job_control = backend.open_job(JobSetup(self.job_id, self.job_dir, self.env_dir, self.config,
                                                     self.graph, self.log, self.split_plans))
        self.in_driver = DriverCollects(self.graph, self.manager, self.job_control.counters,
                                        enabled=backend.collects_in_driver)
        driver_nodes = self.in_driver.tasks
        graph = self.graph
        # Only the head of a chain has channels in: its members are fed by call (runtime/task/chain.py).
        consumers = [node for node in nodes if node.in_edges and node.name not in driver_nodes
                     and graph.head_of(node.name) == node.name]
        try:
            backend.check_capacity(consumers, self.service_specs, self.job_control)
        except ShmCapacityError as exc:
            self.log.error("%s", exc)   # Dispatcher.log tells the story too (procflow logs)
            raise
        self.inboxes = {node.name: backend.make_inbox(node) for node in consumers}
        directory = None
        if self.service_specs:
            host = backend.service_host()
            if host is None:
                raise ValueError(f"the {backend.kind} backend cannot run services yet (registered: "
                                 f"{sorted(self.service_specs)}); use LocalEnvironment's process executor")
            self.service_manager = ServiceManager(self, self.service_specs, host)
            directory = self.service_manager.prepare([node.name for node in nodes])
        controls: dict[str, Any] = {}   # one control channel per task: a chain's operators share it
        for slot, node in enumerate(nodes):
            if node.name not in driver_nodes:
                head = graph.head_of(node.name)
                if head not in controls:
                    controls[head] = backend.control_channel(head)
                self.contexts[node.name] = self._context(node, slot, len(nodes), directory, controls[head])
                self.functions[node.name] = self.graph.transformations[node.transformation_id].function.build()
                if self.checkpoints is not None:
                    self._checkpointed(node, slot)
        self._ship_splits()
        chains = [graph.chain(h.name) for h in graph.heads() if len(graph.chain(h.name)) > 1]
        self.log.info("job %s prepared on the %s backend: %d operator instances in %d tasks, %d channels, "
                      "queue=%s%s%s", self.job_id, backend.kind, len(nodes), len(graph.heads()),
                      len(graph.channel_edges), self.config["queue"],
                      f"; run by the driver: {', '.join(sorted(driver_nodes))}" if driver_nodes else "",
                      f"; chains: {'; '.join(' -> '.join(c) for c in chains)}" if chains else "")

    def _open_checkpoints(self) -> tuple[CheckpointStore, LoadedCheckpoint | None] | None:
        """The checkpoint folder and, on resume, the checkpoint to restore; ValueError (before anything
        exists) where checkpoints cannot work or the checkpoint does not fit this graph."""
        if self.checkpoint_dir is None:
            if self.resume:
                raise ValueError("submit(resume=True) restores a checkpoint, but this environment takes none; "
                                 "pass checkpoint_dir=... to LocalEnvironment or RayEnvironment")
            return None
        if self.backend.checkpoints_unsupported:
            raise ValueError(f"checkpoints are not supported on the {self.backend.kind} backend: "
                             f"{self.backend.checkpoints_unsupported}")
        if self.config["queue"] not in ALIGNING_QUEUE_KINDS:
            raise ValueError(f"checkpoints need queue='shm' (a barrier holds an input back while the others "
                             f"catch up, which {self.config['queue']!r} channels cannot do yet); drop the "
                             "queue setting, or checkpoint_dir")
        check_checkpointable(self.graph)
        store = CheckpointStore(self.checkpoint_dir)
        if not self.resume:
            complete = store.complete_numbers()
            if complete:
                raise ValueError(
                    f"{store.path} holds checkpoint {complete[-1]} of an earlier run that did not finish. "
                    "Pass env.submit(resume=True) to continue it, or remove that folder (or pass another "
                    "checkpoint_dir) to start afresh")
            store.clear()
            return store, None
        restored = store.latest()
        if restored is None:
            store.clear()   # crashed before its first checkpoint: nothing to resume, start from the beginning
            return store, None
        diffs, rescaled = resume_differences(self.graph, restored.manifest["fingerprint"], fingerprint(self.graph))
        if not diffs and rescaled:
            try:   # a keyed reduce's parallelism changed: its per-key state split anew (checkpoint/rescale.py)
                repartition(restored, self.graph, rescaled)
            except ValueError as exc:
                diffs = [f"the state of reduce {', '.join(map(repr, rescaled))} cannot be re-partitioned: {exc}"]
        if diffs:
            raise ValueError(
                f"cannot resume from checkpoint {restored.number} in {store.path}: the pipeline is not the one "
                f"that took it ({'; '.join(diffs)}). Resume with the same operators, parallelism and "
                "functions (only a keyed reduce's parallelism may change), or remove the checkpoint folder "
                "to start afresh")
        store.remove_after(restored.number)   # what the crashed run left half-taken
        return store, restored

    def _checkpointed(self, node: Any, slot: int) -> None:
        """Tell task `node` where snapshots go and what it restores; the checkpoints expect its acks."""
        checkpoints = self.checkpoints
        assert checkpoints is not None
        t = self.graph.transformations[node.transformation_id]
        ctx = self.contexts[node.name]
        ctx.checkpoint_dir = checkpoints.store.path
        ctx.restore = checkpoints.restored_state(node.name)
        split_source = t.name in self.split_plans
        if split_source and checkpoints.restored is not None:
            ctx.restore_splits = checkpoints.splits.get(t.name)
        sink = callable(getattr(self.functions[node.name], "adopt_parts", None))
        checkpoints.expect(node.name, slot, t.name, split_source=split_source, sink=sink)

    def request_checkpoint(self) -> Any:
        """A future for the number of the next checkpoint to complete (job.checkpoint()); any thread."""
        if self.checkpoints is None:
            raise ValueError("this job takes no checkpoints; pass checkpoint_dir=... to LocalEnvironment or "
                             "RayEnvironment")
        future = self.checkpoints.ask()
        self.backend.wake()
        return future

    def prepare_or_clean_up(self) -> None:
        """`prepare()`, leaving nothing behind when it fails (a refused output folder, no room in
        /dev/shm, a plan that raises): what it made is cleaned up and its log closed, then the error
        propagates."""
        try:
            self.prepare()
        except BaseException:
            self.cleanup()
            self.close_log()
            raise

    def _prepare_outputs(self) -> None:
        """Stage every sink whose output the driver commits (core/committed_output.py), before any
        process starts: a folder that must not be written into refuses the job here. The hooks are a
        function object's: one more is built here, for the driver, besides those shipped to the tasks."""
        for t in self.graph.transformations.values():
            target = t.function.target
            if t.kind is OperatorKind.SINK and two_phase(target if inspect.isclass(target) else type(target)):
                self.committers[t.name] = t.function.build()
            # Judged by the class first: building a user's other sinks here would run their constructors
            # once more, in the driver (one that opens a file would open it twice).
            if t.kind is not OperatorKind.SINK or not (isinstance(target, CommittedOutput) or (
                    inspect.isclass(target) and issubclass(target, CommittedOutput))):
                continue
            function = t.function.build()
            if isinstance(function, CommittedOutput):
                instances = sum(1 for n in self.graph.nodes.values() if n.transformation_id == t.id)
                self.outputs.append((t.name, function))   # before prepare: a half-prepared one is aborted
                checkpoints = self.checkpoints
                if checkpoints is not None and checkpoints.restored is not None and \
                        callable(getattr(function, "adopt_parts", None)):
                    function.adopt_parts(checkpoints.outputs.get(t.name, []))   # type: ignore[attr-defined]
                function.prepare_output(self.job_id, instances)
                self.log.info("output of %s staged for %d instance(s): %r", t.name, instances, function)

    def _commit_restored(self, tokens: list[tuple[str, str, int, Any]]) -> None:
        """On resume: the restored checkpoint's tokens, committed again (the crash may have come between
        its completion and their commit; commit(token) must be idempotent, as the README says)."""
        for operator, task, _checkpoint, token in tokens:
            committer = self.committers.get(operator)
            if committer is None:
                continue
            try:
                committer.commit(token)
            except Exception as exc:
                raise RuntimeError(f"resuming: committing the token of {task} that the restored checkpoint "
                                   f"holds failed ({type(exc).__name__}: {exc}); the job did not start. Fix "
                                   "the sink's commit(token) (it is called again for a token it may have "
                                   "committed before the crash) and resume again") from exc
        self.log.info("resumed: %d two-phase sink token(s) of the restored checkpoint committed", len(tokens))

    def _commit_failed(self, what: str, task: str, exc: Exception) -> None:
        """A two-phase sink's commit(token) raised (in the committer's thread): the job fails."""
        self._fail_output(what, task, exc)
        self.backend.wake()

    def _fail_output(self, what: str, task: str, exc: Exception) -> None:
        """Output that could not be published or committed fails the job, naming what and why."""
        self.log.exception("%s failed", what)
        error = JobFailedError(f"{what} failed: {type(exc).__name__}: {exc}", task=task)
        error.__cause__ = exc
        self._fail(error)

    def _publish_checkpoint(self, number: int, parts: Mapping[str, list[str]],
                            tokens: list[tuple[str, str, int, Any]]) -> None:
        """Checkpoint `number` completed: each file sink's parts rolled up to its barrier become visible
        in its folder (no _SUCCESS yet: that comes at job end). A publish that fails fails the job."""
        for name, function in list(self.outputs):
            publish = getattr(function, "publish_parts", None)
            if not callable(publish):
                continue
            try:
                publish(parts.get(name, []))
            except Exception as exc:
                self._fail_output(f"job {self.job_id}: publishing the output of {name} at checkpoint {number}",
                                  name, exc)
        self.token_committer.submit(tokens, f"checkpoint {number}")

    def _settle_outputs(self) -> None:
        """Every task has ended: publish the committed outputs if the job finished (not failed, stopped
        or killed), else remove what they staged. A commit that fails fails the job, and what is still
        staged is removed."""
        outputs, self.outputs = self.outputs, []
        manager = self.manager
        finished = manager.all_stopped and manager.failure is None and not manager.stop_requested \
            and not self._aborted
        # The completed checkpoints' tokens first; a failed job waits for them only so long.
        if not self.token_committer.close(None if finished else float(self.config["stop_timeout"])):
            self.log.warning("a two-phase sink's commit(token) still runs; the job ends without waiting for it")
        if finished and self.committers:   # the tails: final snapshots' tokens, then end-of-input ones
            checkpoints = self.checkpoints
            final = [] if checkpoints is None else [
                (checkpoints.tasks[task][1], task, FINAL, ack.progress["commit"])
                for task, ack in sorted(checkpoints.final.items()) if "commit" in ack.progress]
            self.token_committer.commit_now(final + self._end_tokens, "job end")
            finished = manager.failure is None
        for name, function in outputs:
            if finished and manager.failure is None:
                try:
                    function.commit_output()
                    self.log.info("output of %s committed", name)
                    continue
                except Exception as exc:   # any failure to publish is the job's failure, said as such
                    self._fail_output(f"job {self.job_id} finished, but committing the output of {name}", name, exc)
            try:
                keep = getattr(function, "keep_for_resume", None)
                if self._resumable() and callable(keep):
                    keep()   # a resumed job takes over the parts its checkpoint lists
                    self.log.info("staged output of %s kept for a resume", name)
                else:
                    function.abort_output()
            except Exception:   # removing staging must not hide the job's own outcome; the log says it
                self.log.exception("removing the staged output of %s failed", name)

    def _resumable(self) -> bool:
        """The job has a complete checkpoint (taken or restored) that submit(resume=True) can continue."""
        checkpoints = self.checkpoints
        return checkpoints is not None and (bool(checkpoints.taken) or checkpoints.restored is not None)

    def _settle_checkpoints(self) -> None:
        """After the outputs: a job that finished needs its checkpoints no more; any other keeps them, for
        submit(resume=True)."""
        checkpoints = self.checkpoints
        if checkpoints is None:
            return
        manager = self.manager
        finished = manager.all_stopped and manager.failure is None and not manager.stop_requested \
            and not self._aborted
        try:
            checkpoints.finish(finished)
        except OSError:   # the job's own outcome stands; the log says what was left behind
            self.log.exception("removing the checkpoints of the finished job failed")

    def _ship_splits(self) -> None:
        """Every instance of a split source gets its plan (descriptors only); it claims splits at run time."""
        for name, ctx in self.contexts.items():
            t = self.graph.transformations[self.graph.nodes[name].transformation_id]
            ctx.splits = self.split_plans.get(t.name)

    def split_assignments(self) -> dict[str, list[int | None]]:
        """Per split source, the instance each split was handed to so far (None: not yet); live while
        the job runs, final after it (checkpoints snapshot this)."""
        control = self.job_control
        if control is not None and not self._control_closed:
            for plan in self.split_plans.values():
                owners = control.split_owners(plan.slot)
                if owners is not None:
                    self._split_owners[plan.operator] = owners
        return {op: list(owners) for op, owners in self._split_owners.items()}

    def _context(self, node: Any, slot: int, n_tasks: int, directory: Any, control: Any) -> TaskContext:
        """The one place a TaskContext is built, whatever the backend. `control`: the control channel of
        the task that runs this node (shared by the operators of a chain)."""
        in_driver = self.in_driver
        assert in_driver is not None, "prepare() makes the driver-side collects first"
        t = self.graph.transformations[node.transformation_id]

        def channel(e: Any) -> Any:
            if self.graph.head_of(e.dst) != e.dst:   # inside a chain: a call, not a channel
                return ChainLink(e.dst, e.slot)
            return self.backend.edge(self.inboxes[e.dst], e)

        return self.backend.context_class(
            name=node.name, operator_name=node.operator, kind=node.kind, parallel_index=node.index,
            parallelism=node.parallelism, job_id=self.job_id, env_dir=self.env_dir, task_slot=slot,
            job_segment=self.backend.job_segment(), n_tasks=n_tasks, inbox=self.inboxes.get(node.name),
            outputs=output_specs(node, lambda e: in_driver.edge(e, channel)),
            options=dict(t.options), config=dict(self.config),
            control=control, service_directory=directory)

    # -- running -----------------------------------------------------------------------------------

    def start(self) -> None:
        graph = self.graph
        tasks = {}
        for name, ctx in self.contexts.items():
            if graph.head_of(name) == name:
                chained = tuple(TaskStart(self.contexts[m], self.functions[m]) for m in graph.chain(name)[1:])
                tasks[name] = TaskStart(ctx, self.functions[name], chained)
        try:
            self.handles = self.backend.start(tasks, self._start_services)
            for name, handle in self.handles.items():
                for member in graph.chain(name):
                    self.manager.tasks[member].pid = handle.pid
            self.manager.mark_running()
            if not self.backend.runs_in_driver_thread:
                self.start_monitor(f"procflow-{self.backend.kind}-monitor")
        except BaseException:
            # Interrupted (Ctrl-C) or failed half-way: no task may outlive this call, and the tasks
            # already started wait for a start signal that will never come, so terminate them at once.
            self._aborted = True
            if self._thread is not None:
                self.request(ControlRequest.KILL, "interrupted while starting")
                self.join_monitor()
            else:
                self.cleanup()
                self.close_log()
            raise
        if self.backend.runs_in_driver_thread:
            self._monitor()   # the whole job runs here (inline); a Ctrl-C in it propagates after cleanup

    def _start_services(self) -> None:
        if self.service_manager is not None:
            self.service_manager.start()

    def request(self, what: ControlRequest | str, reason: str = "") -> None:
        """Ask the monitor to stop (graceful) or kill (now); callable from any thread."""
        self._requests.append((ControlRequest(what), reason))
        self.backend.wake()

    def _watch(self) -> None:
        manager = self.manager
        watch = self._stall_watch()
        while not manager.all_stopped:
            # With a stall watch, wake at least every watch.period even when no message comes.
            timeout = watch.period if watch is not None and self._released else None
            checkpoints = self.checkpoints
            if checkpoints is not None:
                due = checkpoints.wait_s()
                if due is not None:
                    timeout = due if timeout is None else min(timeout, due)
            for event in self.backend.wait(timeout):
                if isinstance(event, Exited):
                    self._on_exit(event)
                else:
                    self.on_message(event)
            if self.handle_requests() or manager.failure is not None:
                return
            if self._broken is not None and time.monotonic() > self._broken[0]:
                self._fail(self._broken[1])
                return
            self._release_when_ready()
            self.poll_checkpoints()
            if watch is not None and self._released:
                stalled = watch.check()
                if stalled is not None:
                    self._fail(stalled)
                    return

    def _release_when_ready(self) -> None:
        services_ready = self.service_manager is None or self.service_manager.all_ready
        if not self._released and self.manager.all_ready and services_ready:
            self._released = True
            assert self.job_control is not None
            self.job_control.release_sources()
            if self.checkpoints is not None:
                self.checkpoints.released()
            self.log.info("all %d tasks ready; sources released", len(self.manager.tasks))

    def _stall_watch(self) -> StallWatch | None:
        timeout = self.config["stall_timeout"]
        if not timeout or not self.backend.watches_stalls:
            return None
        return StallWatch(self.job_id, float(timeout), self.graph, self.backend.stall_probes(),
                          lambda: self.job_control.counters if self.job_control is not None else None,
                          self.manager.tasks)

    # -- messages ----------------------------------------------------------------------------------

    def on_message(self, msg: Any) -> None:
        """Every control message of every backend, tasks' and service replicas', is handled here."""
        manager = self.manager
        if isinstance(msg, Results):
            assert self.in_driver is not None
            self.in_driver.deliver(msg, self.collectors[msg.task])
            if self.checkpoints is not None:
                self.checkpoints.on_results(msg)
        elif isinstance(msg, Ready):
            manager.mark_ready(msg.task, msg.pid)
        elif isinstance(msg, CheckpointAck):
            if self.checkpoints is not None:
                self.checkpoints.on_ack(msg)
        elif isinstance(msg, Stopped):
            if msg.commit:
                operator = self.graph.transformations[self.graph.nodes[msg.task].transformation_id].name
                self._end_tokens.append((operator, msg.task, -1, msg.commit[0]))
            if self.checkpoints is not None:
                self.checkpoints.task_stopped(msg.task)
            manager.mark_stopped(msg.task, msg.metrics)
            self.log.info("%s stopped: %s", msg.task, msg.metrics)
            assert self.in_driver is not None
            self.in_driver.task_stopped()
        elif isinstance(msg, DeadLetter):
            manager.dead_letters.extend(msg.entries)
            if self.checkpoints is not None:
                self.checkpoints.on_dead_letters(msg)
        elif isinstance(msg, Failed):
            self._on_failed(msg)
        elif isinstance(msg, (ServiceReady, ServiceStopped)) and self.service_manager is not None:
            self.service_manager.on_message(msg)
        else:
            self.log.warning("unexpected control message %r", msg)

    def _on_failed(self, msg: Failed) -> None:
        error = job_error(msg.report, self.backend.failure_hint(msg.report), msg.cause)
        grace = self.backend.broken_channel_grace
        if grace and msg.report.error_type in BROKEN_PEER:
            # A producer noticed that its consumer died (or a caller that its service replica did); the
            # peer's own death names the real culprit, so give it a moment to arrive first.
            if self._broken is None:
                self._broken = (time.monotonic() + grace, error)
        else:
            self._fail(error)

    def _on_exit(self, exited: Exited) -> None:
        if self.service_manager is not None and self.service_manager.owns(exited.task):
            self.service_manager.on_exit(exited)
            return
        # The task ran every operator of its chain: each ends with it.
        chain = self.graph.chain(exited.task)
        for name in chain:
            self.manager.tasks[name].exitcode = exited.exitcode
        culprit = self._in_call(chain)
        state = self.manager.tasks[culprit]
        if not state.stopped and self.manager.failure is None:
            ended = exited if culprit == exited.task else Exited(culprit, exited.exitcode, exited.cause)
            progress = self._progress(culprit)
            if len(chain) > 1:   # where the counters cannot tell which operator was running (Ray)
                progress += f" (its task ran the chain {' -> '.join(chain)})"
            self._fail(self.backend.exit_error(ended, state.ready, progress))

    def _in_call(self, chain: tuple[str, ...]) -> str:
        """The operator of a dead task's chain to name: the last one that was handling records (a chained
        operator's input_fill is 1 for the length of each call, runtime/task/chain.py), else the first
        that had not stopped, else the head."""
        tasks = self.manager.tasks
        running = [name for name in chain if not tasks[name].stopped] or [chain[0]]
        counters = self.job_control.counters if self.job_control is not None else None
        if counters is not None and len(chain) > 1:
            try:
                busy = [name for name in running if counters[tasks[name].slot][_FILL] > 0]
            except (TypeError, IndexError, ValueError):
                busy = []
            if busy:
                return busy[-1]
        return running[0]

    def _progress(self, name: str) -> str:
        """How far a dead task got. A working task publishes its counters at least every PUBLISH_INTERVAL
        (base_task), not per record, so this can lag the exact position by that much (or by one slow
        record); a dead process cannot tell us its record."""
        counters = self.job_control.counters if self.job_control is not None else None
        if counters is None:
            return "its counters are unavailable"
        try:
            row = counters[self.manager.tasks[name].slot]
            n_in, n_out = int(row[0]), int(row[1])
        except (TypeError, IndexError, AttributeError):
            return "its counters are unavailable"
        return f"its last published counters showed {n_in} record(s) in, {n_out} out"

    def handle_requests(self) -> bool:
        """Apply the queued stop/kill requests; True once the job was killed."""
        while self._requests:
            what, reason = self._requests.pop(0)
            if what is ControlRequest.STOP:
                self.manager.stop_requested = True
                assert self.job_control is not None
                self.job_control.request_stop()
                self.log.info("stop requested: sources will end and the job drains")
            elif what is ControlRequest.KILL:
                self._fail(JobFailedError(f"job {self.job_id} was killed: {reason}"), status=JobStatus.KILLED)
                return True
        return False

    def poll_checkpoints(self) -> None:
        """Start the next checkpoint when it is due, once the sources run."""
        if self.checkpoints is not None and self._released:
            self.checkpoints.poll(self.job_control)

    def fail(self, error: JobFailedError) -> None:
        """Fail the job (the first failure wins): for the service manager and other driver-side parts."""
        self._fail(error)

    def live_counters(self) -> dict[int, dict[str, float]] | None:
        """Every task's counters by slot (the collects run here included), or None once the job control
        is closed."""
        control = self.job_control
        rows = control.snapshot() if control is not None else None
        if rows is not None and self.in_driver is not None:
            rows.update(self.in_driver.rows())
        return rows

    # -- cleaning up -------------------------------------------------------------------------------

    def cleanup(self) -> None:
        """End the job in a fixed order; each step is the backend's where it differs. Idempotent."""
        with self._cleanup_lock:
            if self._cleaned:
                return
            self._cleaned = True
        failed = self.manager.failure is not None or self._aborted
        grace = float(self.config["stop_timeout"])
        if self.service_manager is not None:
            self.service_manager.stop_all(grace)          # 1: services, after every task has ended
        self.backend.stop_tasks(failed, grace)            # 2: tasks (and replicas) gone
        self._settle_outputs()                            # 2b: committed outputs published or removed
        self._settle_checkpoints()                        # 2c: a finished job's checkpoints removed
        self.backend.close_control()                      # 3: control channels
        self.backend.close_channels()                     # 4: inboxes / rings
        if self.job_control is not None:                  # 5: the counters outlive the job control
            self.manager.last_counters = self.live_counters()
            self.split_assignments()                      #    and so do the split claims
        self._control_closed = True
        self.backend.close_job_control()                  # 6: the job control itself
