"""Backend: what a way of running tasks supplies to the one, backend-neutral Dispatcher.

The Dispatcher (runtime/dispatcher.py) owns everything that is the same on every backend: the job folder
and Dispatcher.log, the JobManager, every TaskContext (built once, from the graph), the typed control
messages, the failure report and Error.log, releasing the sources, the stall watch, and one cleanup in a
fixed order. A backend supplies only its own parts, called in this order:

    Dispatcher                       Backend                         local          inline        ray
    ──────────                       ───────                         ─────          ──────        ───
    prepare()  ─ plan the split sources' splits (split_plan.py), once
               ───────────────────►  open_job(job)  -> JobControl    shm segment    flags+table   actor view
                                     (with split claims)             cursor+lockf   counter       enumerator actor
               ───────────────────►  check_capacity(consumers,...)   /dev/shm room  -             -
               ─ per consumer ────►  make_inbox(node)                shm/mp inbox   deque inbox   actor inbox
               ─ per edge ────────►  edge(inbox, edge)               ring slot      deque slot    credits
               ─ per task ────────►  control_channel(task)           pipe writer    direct call   (actor's)
                                     context_class                   TaskContext    TaskContext   RayTaskContext
               ─ with services ───►  service_host()                  LocalServiceHost  Inline..   RayServiceHost
    start()    ───────────────────►  start(tasks, before)            fork (masked)  InlineTasks   actors
    monitor    ─ loop ────────────►  wait(timeout) -> [message | Exited]  pipes+sentinels  runs steps  ray.wait
               ─ all ready ───────►  job_control.release_sources()
               ─ ControlRequest ──►  job_control.request_stop(); wake()
               ─ a task died ─────►  exit_error(exited, progress)
    cleanup()  ─ 1 services stop (ServiceManager.stop_all, through the service host)
               ─ 2 ───────────────►  stop_tasks(failed, grace)       SIGTERM/grace/SIGKILL  -     wait run()
               ─ 3 ───────────────►  close_control()                 pipes          -             -
               ─ 4 ───────────────►  close_channels()                unlink rings   -             -
               ─ 5 counters snapshot (job_control.snapshot())
               ─ 6 ───────────────►  close_job_control()             unlink segment -             kill actors

Threads: `open_job` .. `start` run in the caller's thread; `wait`, the job control's release and stop,
`exit_error` and the cleanup steps run in the monitor thread (on the inline backend, which has none, in
the caller's thread: `runs_in_driver_thread`); `wake` may be called from any thread.

Messages: `wait` returns what the tasks sent (control.py: Ready, Results, DeadLetter, Failed, Stopped,
ServiceReady, ServiceStopped) and an `Exited` for every task or replica that ended, after that task's
last message. A backend may instead deliver messages by direct call to `JobEvents.on_message` (the
inline backend does: its tasks run inside `wait`).

Services (the seam for inline and Ray): the ServiceManager (runtime/service/manager.py) is neutral: the
specs, replica names, readiness, the stop sequence, the job failure when a replica dies, and metrics. It
asks `Backend.service_host()` for a `ServiceHost`, which does what differs:

    prepare(specs, replicas, callers) -> directory
                                               build each replica's service object and the directory
                                               (ServiceDirectory-like: `connect(ctx)` gives a task its
                                               client) that goes into every TaskContext
    start()                                    start the replicas (before the tasks); each sends
                                               ServiceReady, later ServiceStopped / Failed, through the
                                               backend's `wait` like a task's messages, and ends with an
                                               `Exited` event
    request_stop()                             ask every replica to stop (after every task has ended)
    wait_stopping(timeout) -> [message|Exited] the replicas' messages while stopping (the monitor loop
                                               has ended by then)
    terminate(deadline, grace)                 end the replicas still running
    read_counters() -> rows                    per replica: METRIC_FIELDS (calls, errors, busy_s)
    pids() -> {replica: pid}

Every backend has one: a local host runs each replica as a process with request/response rings
(backends/local/services.py); the `InlineServiceHost` builds the service objects in the driver and gives
a directory whose clients call them directly (ServiceReady at once; request_stop runs stop()/cleanup();
backends/inline/services.py); the `RayServiceHost` runs each replica as a named actor and gives clients
that call it with `.remote()` (its ServiceReady/Stopped arrive in the backend's `ray.wait` loop like a
task actor's; backends/ray/services.py). What their clients share (the checks, round robin, the errors)
is runtime/service/calls.py; how inline and Ray replicas run their hooks and count, hosted.py. A backend
whose `service_host()` returns None runs no services: the Dispatcher refuses them by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import logging

    from procflow.core.errors import JobFailedError
    from procflow.core.service import ServiceSpec
    from procflow.graph.execution_graph import ExecutionGraph
    from procflow.runtime.context.task_context import TaskContext
    from procflow.runtime.control import ErrorReport
    from procflow.runtime.split_plan import SplitPlan


@dataclass(frozen=True)
class Exited:
    """A task or service replica ended (its process, actor or in-driver run), after its last message.

    `exitcode` is the process's exit status where there is one; `cause` what the backend knows of the
    death (a Ray actor error, "closed without Stopped").
    """

    task: str
    exitcode: int | None = None
    cause: Any = None


@dataclass(frozen=True)
class JobSetup:
    """What a backend may read of the job it is about to run."""

    job_id: str
    job_dir: str
    env_dir: str
    config: Mapping[str, Any]
    graph: ExecutionGraph
    log: logging.Logger
    # The split sources' plans (split_plan.py), by operator: the job control keeps a claim cursor for each.
    splits: Mapping[str, SplitPlan] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskStart:
    """One task to start: its context (built by the Dispatcher) and its function (built in the driver).

    `chained`: the further operators of its chain (graph.chains), each a TaskStart of its own, in chain
    order; the task runs them all (runtime/task/chain.py) and reports Ready / Stopped for each. A backend
    starts one process, actor or inline task per TaskStart it is given, whatever its chain.
    """

    ctx: TaskContext
    function: Any
    chained: tuple[TaskStart, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Every node this task runs, head first."""
        return (self.ctx.name, *(member.ctx.name for member in self.chained))


class JobControlView(Protocol):
    """The job-control object a backend makes: the start/stop words, the live counters, and the split
    sources' claims (the tasks call claim_split; the driver reads split_owners)."""

    counters: Any

    def release_sources(self) -> None: ...

    def split_owners(self, slot: int) -> list[int | None] | None: ...

    def request_stop(self) -> None: ...

    def snapshot(self) -> dict[int, dict[str, float]] | None: ...

    def close(self) -> None: ...


class JobEvents(Protocol):
    """The Dispatcher as a backend sees it: a place to deliver messages, and the requests of other threads."""

    def on_message(self, msg: Any) -> None: ...

    def handle_requests(self) -> bool:
        """Apply pending stop/kill requests; True when the job must end now (killed)."""
        ...

    def poll_checkpoints(self) -> None:
        """Ask for the next checkpoint if one is due: for a backend that runs the job in the driver's
        thread (inline), between two steps; the monitor loop does it for the others."""
        ...


class StartedTask(Protocol):
    """What the Dispatcher keeps of a started task: its pid (None where there is no process of its own,
    or it is not known yet). The local backend returns its TaskFactory's process handles."""

    @property
    def pid(self) -> int | None: ...


class ServiceHost(Protocol):
    """Where a backend runs service replicas; see the module docstring for the lifecycle."""

    def prepare(self, specs: Mapping[str, ServiceSpec], replicas: Mapping[str, tuple[str, int]],
                callers: list[str]) -> Any: ...

    def start(self) -> None: ...

    def request_stop(self) -> None: ...

    def wait_stopping(self, timeout: float) -> list[Any]: ...

    def terminate(self, deadline: float, grace: float) -> None: ...

    def read_counters(self) -> Any: ...

    def pids(self) -> dict[str, int | None]: ...


class Backend(Protocol):
    """A way of running a job's tasks: processes (local), the driver's own thread (inline), Ray actors."""

    kind: str                     # "local", "inline", "ray": for logs and errors
    measures_cpu: bool            # every task measures its own CPU time (summaries give cpu_pct)
    watches_stalls: bool          # config stall_timeout is honoured
    collects_in_driver: bool      # a collect that decides nothing runs in the driver (DriverCollects)
    runs_in_driver_thread: bool   # no monitor thread: the job runs inside Dispatcher.start()
    broken_channel_grace: float   # seconds a "consumer died" report waits for the consumer's own death
    # Why checkpoint_dir is refused on this backend, for the user's error ("" where checkpoints work): a
    # backend takes checkpoints when its gates can hold an input back and its job control carries the
    # driver's "checkpoint n requested" to the sources (runtime/checkpoint/).
    checkpoints_unsupported: str

    @property
    def context_class(self) -> type[TaskContext]:
        """The TaskContext (sub)class tasks of this backend get (read-only, so a subclass satisfies it)."""
        ...

    def bind(self, events: JobEvents) -> None:
        """Called once, first: where messages delivered by direct call go."""
        ...

    def preflight(self) -> None:
        """Refuse, before anything exists (not even the job folder), what cannot work here."""
        ...

    def open_job(self, job: JobSetup) -> JobControlView: ...

    def check_capacity(self, consumers: list[Any], services: Mapping[str, ServiceSpec],
                       job_control: JobControlView) -> None:
        """Raise before anything is created where the job cannot fit (local: /dev/shm)."""
        ...

    def make_inbox(self, node: Any) -> Any: ...

    def edge(self, inbox: Any, edge: Any) -> Any: ...

    def control_channel(self, task: str) -> Any: ...

    def job_segment(self) -> str:
        """The name a task attaches its job control by ('' where the backend hands it over itself)."""
        ...

    def service_host(self) -> ServiceHost | None: ...

    def stall_probes(self) -> dict[str, Any]:
        """Per consuming task, what waits at its input (stall_watch.InputProbe); {} without a stall watch."""
        ...

    def start(self, tasks: Mapping[str, TaskStart], before: Callable[[], None]) -> Mapping[str, StartedTask]:
        """Start every task (calling `before()` first, inside the same protection: services start
        there); return a handle per task."""
        ...

    def wait(self, timeout: float | None) -> list[Any]: ...

    def wake(self) -> None: ...

    def failure_hint(self, report: ErrorReport) -> str: ...

    def exit_error(self, exited: Exited, ready: bool, progress: str) -> JobFailedError: ...

    def stop_tasks(self, failed: bool, grace: float) -> None: ...

    def close_control(self) -> None: ...

    def close_channels(self) -> None: ...

    def close_job_control(self) -> None: ...

