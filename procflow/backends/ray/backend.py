"""RayDispatcher: the Ray backend's counterpart of runtime/dispatcher.py, with the same Job-facing surface.

    prepare()  one TaskContext per task; inboxes and edges are `ray` descriptors naming the actors
    start()    create every TaskActor (named, in the job's namespace), then run.remote(peers) on each, and
               one outstanding poll.remote() per task; start the monitor thread
    monitor    blocks in ray.wait(outstanding polls, timeout) and hands each control message to the same
               JobManager transitions as the local backend:
                 Ready from every task   -> release.remote() on every task (sources start)
                 Results / DeadLetter    -> the collectors / the job
                 Stopped from every task -> done
                 Failed, a poll raising RayActorError (the actor died), or a closed outbox without
                 Stopped                 -> fail the job
    cleanup()  wait (bounded) for run() to return, then ray.kill every actor of the job. Idempotent.

The wait timeout only bounds how late a stop/kill request from another thread is noticed; control
messages wake the monitor at once.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from procflow.backends.ray.actor import RayTaskContext, TaskActor
from procflow.backends.ray.channel import RayInbox
from procflow.core.errors import JobFailedError
from procflow.graph.execution_graph import ExecutionGraph
from procflow.runtime.context.task_context import output_specs
from procflow.runtime.control import DeadLetter, Failed, Ready, Results, Stopped
from procflow.runtime.dispatcher import job_error, new_job_id
from procflow.runtime.driver_collects import DriverCollects
from procflow.runtime.job_control import FIELDS
from procflow.runtime.job_manager import JobManager
from procflow.runtime.job_monitor import JobMonitor
from procflow.runtime.private_files import make_job_dir

log = logging.getLogger("procflow.dispatcher.ray")

_POLL_S = 2.0       # an actor's long-poll returns empty after this long
_REQUEST_S = 0.1    # how often the monitor looks at stop/kill requests between control messages
_BROKEN_GRACE_S = 3.0   # how long a "consumer died" report waits for the consumer's own death to show


def _ship_by_value(functions: Any, contexts: Any) -> None:
    """Ship user modules that live outside site-packages by value (cloudpickle), not by name.

    Ray pickles module-level functions and classes by reference, so a worker must be able to import the
    user's module; a script's helper module or a test module usually is not on the worker's path, and the
    actor then dies in its constructor with ModuleNotFoundError. Modules under site-packages (installed,
    so importable everywhere) and procflow itself keep travelling by reference.
    """
    from ray import cloudpickle

    objs = list(functions)
    for ctx in contexts:
        objs += [o for spec in ctx.outputs for o in (spec.key_selector, spec.partitioner) if o is not None]
    seen: set[str] = set()
    for obj in objs:
        for thing in (obj, type(obj), getattr(obj, "fn", None)):
            name = getattr(thing, "__module__", None)
            if not name or name in seen or name == "__main__" or name.split(".")[0] in ("procflow", "builtins"):
                continue
            seen.add(name)
            module = sys.modules.get(name)
            path = getattr(module, "__file__", None) or ""
            if module is None or not path or "site-packages" in path or "dist-packages" in path \
                    or path.startswith(sys.base_prefix):
                continue
            try:
                cloudpickle.register_pickle_by_value(module)
            except (ValueError, TypeError):  # a module cloudpickle refuses stays by reference
                pass


class RayJobView:
    """Live counters for Job.metrics, read from the actors (the local backend reads shared memory)."""

    def __init__(self, dispatcher: RayDispatcher) -> None:
        self._dispatcher = dispatcher
        self.counters: Any = ()   # not None while the actors live: Job.metrics asks for a snapshot
        self.closed = False

    def snapshot(self) -> dict[int, dict[str, float]] | None:
        """Every task's counters, or None once the actors are gone (final figures are in the manager)."""
        d = self._dispatcher
        names = list(d.actors)
        if self.closed:
            return None
        refs = [d.actors[n].counters.remote() for n in names]
        out = d.in_driver.rows()
        for name, ref in zip(names, refs):
            try:   # one by one: a dead actor loses its own row, not everyone's
                out[d.manager.tasks[name].slot] = dict(zip(FIELDS, ray.get(ref, timeout=5)))
            except (RayError, TimeoutError):
                continue
        return out


class RayDispatcher(JobMonitor):
    log = log  # Dispatcher.log of this backend

    def __init__(self, graph: ExecutionGraph, *, config: dict, env_dir: str, collectors: dict,
                 namespace: str, actor_options: dict | None = None, credits: int = 8,
                 job_id: str | None = None) -> None:
        self.graph = graph
        self.config = config
        self.collectors = collectors
        self.namespace = namespace
        self.actor_options = dict(actor_options or {})
        self.credits = credits
        self.job_id = job_id or new_job_id()
        self.env_dir = env_dir
        self.job_dir = os.path.join(env_dir, self.job_id)
        self.manager = JobManager(self.job_id, [(n.name, n.operator) for n in graph.nodes.values()])
        # Collects that decide nothing run here: their upstream actors ship records to the driver directly.
        self.in_driver = DriverCollects(graph, self.manager)
        self.contexts: dict[str, RayTaskContext] = {}
        self.functions: dict[str, Any] = {}
        self.actors: dict[str, Any] = {}
        self.placement: dict[str, tuple[str, int]] = {}   # task -> (node id, pid), filled once ready
        self._runs: dict[str, Any] = {}
        self._where: dict[str, Any] = {}
        self._requests: list[tuple[str, str]] = []
        self._released = False
        self._broken: tuple[float, JobFailedError] | None = None
        self._thread: threading.Thread | None = None
        self._cleaned = False
        self._cleanup_lock = threading.Lock()
        self.job_control = RayJobView(self)
        self.service_manager = None     # services are not available on Ray yet
        self._log_handler: logging.Handler | None = None

    def actor_name(self, task: str) -> str:
        return f"procflow-{self.job_id}-{task}"

    # -- preparing ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        make_job_dir(self.env_dir, self.job_id, self.config.get("keep_logs"))
        self._open_log()
        nodes = list(self.graph.nodes.values())
        batch_bytes = int(self.config["batch_bytes"])
        inboxes = {n.name: RayInbox(self.actor_name(n.name), tuple(e.input_index for e in n.in_edges))
                   for n in nodes if n.in_edges and n.name not in self.in_driver.tasks}

        def ray_edge(e: Any) -> Any:
            return inboxes[e.dst].edge(e.slot, self.namespace, batch_bytes, self.credits)

        for slot, node in enumerate(nodes):
            if node.name in self.in_driver.tasks:
                continue
            t = self.graph.transformations[node.transformation_id]
            outputs = output_specs(node, lambda e: self.in_driver.edge(e, ray_edge))
            self.contexts[node.name] = RayTaskContext(
                name=node.name, operator_name=node.operator, kind=node.kind, parallel_index=node.index,
                parallelism=node.parallelism, job_id=self.job_id, env_dir=self.env_dir, task_slot=slot,
                job_segment="", n_tasks=len(nodes), inbox=inboxes.get(node.name), outputs=outputs,
                options=dict(t.options), config=dict(self.config))
            self.functions[node.name] = t.function.build()
        self.log.info("job %s prepared: %d task actors, %d channels%s", self.job_id, len(self.contexts),
                      len(self.graph.edges), f"; run by the driver: {', '.join(sorted(self.in_driver.tasks))}"
                      if self.in_driver.tasks else "")


    # -- running -----------------------------------------------------------------------------------

    def start(self) -> None:
        _ship_by_value(self.functions.values(), self.contexts.values())
        options = {"num_cpus": 0, "max_concurrency": 8, "scheduling_strategy": "SPREAD",
                   **self.actor_options}
        remote_cls = ray.remote(TaskActor)
        try:
            for name, ctx in self.contexts.items():
                self.actors[name] = remote_cls.options(
                    name=self.actor_name(name), namespace=self.namespace, **options).remote(ctx, self.functions[name])
            for name in self.contexts:
                peers = {self.actor_name(e.dst): self.actors[e.dst]
                         for g in self.graph.nodes[name].out_groups for e in g.edges if e.dst in self.actors}
                self._runs[name] = self.actors[name].run.remote(peers)
                self._where[name] = self.actors[name].where.remote()
        except BaseException:
            self.cleanup()
            self._close_log()
            raise
        self.manager.mark_running()
        self.start_monitor("procflow-ray-monitor")

    def request(self, what: str, reason: str = "") -> None:
        """Ask the monitor thread to 'stop' (graceful) or 'kill' (now)."""
        self._requests.append((what, reason))

    def _watch(self) -> None:
        manager = self.manager
        polls = {self.actors[name].poll.remote(_POLL_S): name for name in self.actors}
        while not manager.all_stopped:
            if self._handle_requests() or manager.failure is not None:
                return
            if not polls:
                break
            ready, _ = ray.wait(list(polls), num_returns=1, timeout=_REQUEST_S)
            if ready:
                more, _ = ray.wait([r for r in polls if r not in ready], num_returns=len(polls) - len(ready),
                                   timeout=0)
                ready += more
            for ref in ready:
                name = polls.pop(ref)
                try:
                    messages, closed = ray.get(ref)
                except RayActorError as exc:
                    self._on_death(name, exc)
                    continue
                for msg in messages:
                    self._on_message(msg)
                if closed:
                    if not manager.tasks[name].stopped and manager.failure is None:
                        self._fail(JobFailedError(f"task {name} ended without reporting Stopped or Failed; the "
                                                  "job was stopped", task=name))
                else:
                    polls[self.actors[name].poll.remote(_POLL_S)] = name
            if manager.failure is None and self._broken is not None and time.monotonic() > self._broken[0]:
                self._fail(self._broken[1])
            if manager.failure is not None:
                return
            if not self._released and manager.all_ready:
                self._released = True
                for actor in self.actors.values():
                    actor.release.remote()
                self.log.info("all %d task actors ready; sources released", len(manager.tasks))

    def _on_death(self, name: str, exc: BaseException) -> None:
        if self.manager.tasks[name].stopped or self.manager.failure is not None:
            return
        node = "?"
        try:
            node = ray.get(self._where[name], timeout=1)[0]
        except (RayError, TimeoutError, KeyError):
            pass
        self._fail(JobFailedError(
            f"task {name} (Ray actor {self.actor_name(name)}, node {node}) died: {exc}; the job was stopped "
            "and every other task ended. An actor dies when its worker process exits (os._exit, a crash in "
            "native code, the OOM killer) or its node goes away.", task=name))

    def _on_message(self, msg: Any) -> None:
        manager = self.manager
        if isinstance(msg, Results):
            self.in_driver.deliver(msg, self.collectors[msg.task])
        elif isinstance(msg, Ready):
            manager.mark_ready(msg.task, msg.pid)
        elif isinstance(msg, Stopped):
            manager.mark_stopped(msg.task, msg.metrics)
            self.log.info("%s stopped: %s", msg.task, msg.metrics)
            self.in_driver.task_stopped()
        elif isinstance(msg, DeadLetter):
            manager.dead_letters.extend(msg.entries)
        elif isinstance(msg, Failed):
            error = job_error(msg.report)
            if msg.report.error_type == "BrokenChannelError":
                # A producer noticed that its consumer died; the consumer's own death (reported by its
                # poll) names the real culprit, so give it a moment to arrive first.
                if self._broken is None:
                    self._broken = (time.monotonic() + _BROKEN_GRACE_S, error)
            else:
                self._fail(error)

    def _handle_requests(self) -> bool:
        while self._requests:
            what, reason = self._requests.pop(0)
            if what == "stop":
                self.manager.stop_requested = True
                for actor in self.actors.values():
                    actor.request_stop.remote()
                self.log.info("stop requested: sources will end and the job drains")
            elif what == "kill":
                self._fail(JobFailedError(f"job {self.job_id} was killed: {reason}"), status="killed")
                return True
        return False

    def locate(self) -> dict[str, tuple[str, int]]:
        """task -> (Ray node id, worker pid), asked from each actor (tools and tests)."""
        names = list(self._where)
        for name, where in zip(names, ray.get([self._where[n] for n in names], timeout=30)):
            self.placement[name] = tuple(where)
        return dict(self.placement)

    # -- cleaning up -------------------------------------------------------------------------------

    def cleanup(self) -> None:
        with self._cleanup_lock:
            if self._cleaned:
                return
            self._cleaned = True
        if self.manager.failure is None and self._runs:
            # Finished normally: let run() close its logs before the actors go.
            ray.wait(list(self._runs.values()), num_returns=len(self._runs),
                     timeout=float(self.config.get("stop_timeout", 5.0)))
        # Counters that outlive the actors (a failed task never sent its final metrics).
        self.manager.last_counters = self.job_control.snapshot()
        self.job_control.closed = True
        self.job_control.counters = None
        for name, actor in self.actors.items():
            try:
                ray.kill(actor, no_restart=True)
            except (RayError, ValueError) as exc:
                self.log.warning("could not kill the actor of task %s: %s", name, exc)
        self._runs.clear()

