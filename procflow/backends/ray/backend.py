"""RayBackend: one Ray actor per task (the Backend of RayEnvironment); the one Dispatcher runs the job.

    make_inbox()   `ray` descriptors naming the consuming task's actor; edges carry credits
    start()        services first (services.py: one ServiceActor per replica); ship user modules by value;
                   create every TaskActor (named, in the job's namespace), then run.remote(peers) on each
    wait()         one outstanding poll.remote() per task and service replica (`watch`); blocks in
                   ray.wait(polls, timeout) and returns each actor's control messages; a poll raising
                   RayActorError (the actor died) or a closed outbox becomes an Exited event
    open_job()     the job's view; with split sources, the split counts: one task actor (the first
                   created) holds the job's SplitCursors, every source instance claims its next split
                   from it and the driver reads the claims there (no enumerator actor of its own)
    release_sources / request_stop   release.remote() / request_stop.remote() on every actor
    request_checkpoint(n)   request_checkpoint.remote(n) on the actors that run a source (the Dispatcher's
                   Checkpoints.poll); their acks carry the state, which the driver writes (RayTaskContext)
    stop_tasks()   wait (bounded) for run() to return, so that the actors close their logs
    close_job_control()   ray.kill every actor of the job (the live counters went with the view), then wait
                   (bounded) until each one is dead: a job leaves no worker process behind for the next
                   job (or the user's own Ray work) to compete with
    locate()       task -> (node id, pid), for tools and tests

The wait timeout only bounds how late a stop/kill request from another thread is noticed; control
messages wake the monitor at once. A producer's BrokenChannelError waits `broken_channel_grace` for its
consumer's own death, which names the real culprit.

No actor is ever looked up by name (`ray.get_actor`): every handle a task or replica calls reaches it from
the driver (run(peers), ServiceActor.connect). A by-name lookup is a synchronous GCS request that, in a
mixed load of Ray jobs on a busy machine, failed with `GetTimeoutError ... getting the actor handle ...
GCS server is dead or under high load` (issue 24); the names stay, for `ray list actors` and tools.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from procflow.backends.ray.actor import RayTaskContext, TaskActor, unpack
from procflow.backends.ray.channel import RayInbox
from procflow.backends.ray.services import RayServiceHost
from procflow.core.errors import JobFailedError
from procflow.runtime.backend import Exited, JobSetup, TaskStart
from procflow.runtime.control import ErrorReport
from procflow.runtime.job_control import FIELDS
from procflow.runtime.split_plan import split_counts

_POLL_S = 2.0       # an actor's long-poll returns empty after this long
_REQUEST_S = 0.1    # how often the monitor looks at stop/kill requests between control messages
_BROKEN_GRACE_S = 3.0   # how long a "consumer died" report waits for the consumer's own death to show
_DEATH_WAIT_S = 10.0    # how long close_job_control waits for the killed actors to be dead


def ship_by_value(functions: Any, contexts: Any) -> None:
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


def node_alive(node_id: str) -> bool:
    """Whether the GCS counts node `node_id` alive (an unknown node counts as gone)."""
    try:
        return any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes())
    except RayError:
        return True   # cannot tell: say nothing about the node rather than something wrong


def wait_until_dead(actors: Mapping[str, Any], timeout: float) -> list[str]:
    """Wait until every (killed) actor is dead; returns the names of those still answering at `timeout`.

    ray.kill only asks: the actor's worker process exits later. A job that returned at once left its
    actors' processes dying beside the next job's starting ones (and the GCS busy with both), which is
    how a mixed load of Ray jobs overloaded a small machine (issue 24). A call to a dead actor fails with
    RayActorError, so each actor is probed until its probe fails; a probe that an actor still answers
    (the kill not yet done) is repeated after a short backoff.
    """
    deadline = time.monotonic() + timeout
    alive = dict(actors)
    backoff = 0.01
    while alive:
        probes = {actor.__ray_ready__.remote(): name for name, actor in alive.items()}
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        done, _ = ray.wait(list(probes), num_returns=len(probes), timeout=remaining)
        for ref in done:
            try:
                ray.get(ref)
            except RayError:   # RayActorError: dead, as wanted (any other error: nothing more to learn)
                alive.pop(probes[ref], None)
        if alive:
            time.sleep(min(backoff, max(deadline - time.monotonic(), 0)))   # backoff between OS-state polls
            backoff = min(backoff * 2, 0.2)
    return sorted(alive)


class RayJobView:
    """Live counters for Job.metrics, read from the actors (the local backend reads shared memory)."""

    counters = None   # no shared table: the driver-side collects keep their own rows (DriverCollects)

    def __init__(self, backend: RayBackend, slots: dict[str, int]) -> None:
        self._backend = backend
        self._slots = slots
        self.closed = False

    def release_sources(self) -> None:
        for actor in self._backend.actors.values():
            actor.release.remote()

    def request_stop(self) -> None:
        for actor in self._backend.actors.values():
            actor.request_stop.remote()

    def request_checkpoint(self, number: int) -> None:
        """Ask every source to emit Barrier(number) at its next tick: one call to each actor that runs a
        source (the others learn of the checkpoint from the barriers themselves)."""
        actors = self._backend.actors
        for name in self._backend.sources:
            actors[name].request_checkpoint.remote(number)

    def snapshot(self) -> dict[int, dict[str, float]] | None:
        """Every task actor's counters, or None once the actors are gone (final figures are in the
        manager)."""
        if self.closed:
            return None
        actors = self._backend.actors
        names = list(actors)
        refs = [actors[n].counters.remote() for n in names]
        out: dict[int, dict[str, float]] = {}
        for ref in refs:
            try:   # one by one: a dead actor loses its own rows, not everyone's
                rows = ray.get(ref, timeout=5)
            except (RayError, TimeoutError):
                continue
            for slot, row in rows.items():   # a row per operator of the actor's chain
                out[slot] = dict(zip(FIELDS, row))
        return out

    def split_owners(self, slot: int) -> list[int | None] | None:
        """Which instance each split of source `slot` went to, asked from the enumerator actor."""
        enumerator = self._backend.enumerator
        if self.closed or enumerator is None:
            return None
        try:
            return ray.get(enumerator.split_owners.remote(slot), timeout=5)
        except (RayError, TimeoutError):
            return None

    def close(self) -> None:
        self.closed = True


class RayBackend:
    kind = "ray"
    measures_cpu = True
    watches_stalls = False
    collects_in_driver = True   # an actor costs seconds of start-up: collects that decide nothing run here
    runs_in_driver_thread = False
    broken_channel_grace = _BROKEN_GRACE_S
    checkpoints_unsupported = ""   # the gates hold inputs (channel.py); acks carry state (actor.py)
    context_class = RayTaskContext

    def __init__(self, namespace: str, actor_options: Mapping[str, Any] | None = None, credits: int = 8) -> None:
        self.namespace = namespace
        self.actor_options = dict(actor_options or {})
        self.credits = credits
        self.job: JobSetup | None = None
        self.job_control: RayJobView | None = None
        self.actors: dict[str, Any] = {}
        self.sources: list[str] = []   # the actors whose task is a source: they take checkpoint requests
        self.enumerator: Any = None   # the task actor holding the split cursors, where the job has split sources
        self._split_counts: tuple[int, ...] | None = None
        self.placement: dict[str, tuple[str, int]] = {}   # task -> (node id, pid), filled by locate()
        self._runs: dict[str, Any] = {}
        self._where: dict[str, Any] = {}
        self._watched: dict[str, Any] = {}   # task or service replica -> the actor whose outbox is polled
        self._polls: dict[Any, str] = {}     # outstanding poll.remote() -> its task or replica
        self._services: RayServiceHost | None = None
        self.ended: set[str] = set()         # tasks and replicas whose outbox closed or whose actor died

    def actor_name(self, task: str) -> str:
        assert self.job is not None
        return f"procflow-{self.job.job_id}-{task}"

    def bind(self, events: Any) -> None:
        pass   # messages come back through wait()

    def preflight(self) -> None:
        pass

    # -- preparing ---------------------------------------------------------------------------------

    def open_job(self, job: JobSetup) -> RayJobView:
        self.job = job
        self.job_control = RayJobView(self, {name: i for i, name in enumerate(job.graph.nodes)})
        # One task actor hands out every split source's splits (start()): the instances are actors on any
        # node, with no memory in common, and claims are rare (one per split), so a remote call each is
        # cheap. An enumerator actor of its own cost a worker process's start (0.5-2 s of CPU on 2 cores,
        # in the critical path: the sources wait for their first split) for a handful of calls.
        self._split_counts = split_counts(job.splits) if job.splits else None
        return self.job_control

    def check_capacity(self, consumers: list[Any], services: Mapping[str, Any], job_control: Any) -> None:
        pass   # the cluster schedules actors; nothing to reserve up front

    def make_inbox(self, node: Any) -> RayInbox:
        return RayInbox(self.actor_name(node.name), tuple(e.input_index for e in node.in_edges))

    def edge(self, inbox: Any, edge: Any) -> Any:
        assert self.job is not None
        return inbox.edge(edge.slot, self.namespace, int(self.job.config["batch_bytes"]), self.credits)

    def control_channel(self, task: str) -> None:
        return None   # the actor gives its task its own outbox (actor.py)

    def job_segment(self) -> str:
        return ""

    def service_host(self) -> RayServiceHost:
        self._services = RayServiceHost(self)   # a Ray actor per replica (services.py)
        return self._services

    def stall_probes(self) -> dict[str, Any]:
        return {}

    # -- running -----------------------------------------------------------------------------------

    def start(self, tasks: Mapping[str, TaskStart], before: Callable[[], None]) -> dict[str, Any]:
        assert self.job is not None
        before()
        every = [t for head in tasks.values() for t in (head, *head.chained)]
        ship_by_value([t.function for t in every], [t.ctx for t in every])
        options = {"num_cpus": 0, "max_concurrency": 8, "scheduling_strategy": "SPREAD",
                   **self.actor_options}
        remote_cls = ray.remote(TaskActor)
        for name, task in tasks.items():
            # One actor per chain: it runs the task and the operators chained behind it. The first one
            # holds the job's split cursors, and the others claim from it.
            holds = self._split_counts if self.enumerator is None else None
            self.actors[name] = remote_cls.options(
                name=self.actor_name(name), namespace=self.namespace, **options).remote(
                    task.ctx, task.function, self.enumerator, task.chained, holds)
            if holds:
                self.enumerator = self.actors[name]
            if task.ctx.kind.is_source:
                self.sources.append(name)
        graph = self.job.graph
        replicas = self._services.handles() if self._services is not None else {}
        for name in tasks:
            # The handles this task will call: its consumers' and every service replica's (channel.peer).
            peers = {self.actor_name(e.dst): self.actors[e.dst] for member in graph.chain(name)
                     for g in graph.nodes[member].out_groups for e in g.edges if e.dst in self.actors}
            peers.update(replicas)
            self._runs[name] = self.actors[name].run.remote(peers)
            self._where[name] = self.actors[name].where.remote()
            self.watch(name, self.actors[name])
        return {name: _ActorHandle() for name in tasks}

    def wake(self) -> None:
        pass   # wait() returns at least every _REQUEST_S, when the Dispatcher looks at requests

    def watch(self, name: str, actor: Any) -> None:
        """Long-poll `actor`'s control outbox (a task's, or a service replica's) from now on."""
        self._watched[name] = actor
        self._polls[actor.poll.remote(_POLL_S)] = name

    def wait(self, timeout: float | None) -> list[Any]:
        if not any(name in self.actors for name in self._polls.values()):
            # Every task's outbox closed: each one's Exited has been returned already.
            raise JobFailedError("every task actor ended, yet the job did not finish")
        wait_s = _REQUEST_S if timeout is None else min(timeout, _REQUEST_S)
        return self._gather(self._polls, wait_s)

    def wait_for(self, names: set[str], timeout: float) -> list[Any]:
        """The messages and exits of these tasks or replicas only (the service host, while stopping)."""
        return self._gather({ref: name for ref, name in self._polls.items() if name in names}, timeout)

    def _gather(self, polls: dict[Any, str], wait_s: float) -> list[Any]:
        if not polls:
            return []
        ready, _ = ray.wait(list(polls), num_returns=1, timeout=wait_s)
        if ready:
            more, _ = ray.wait([r for r in polls if r not in ready], num_returns=len(polls) - len(ready),
                               timeout=0)
            ready += more
        events: list[Any] = []
        for ref in ready:
            name = self._polls.pop(ref)
            try:
                messages, closed = ray.get(ref)
            except RayActorError as exc:
                self.ended.add(name)
                events.append(Exited(name, cause=exc))
                continue
            events += unpack(messages)
            if closed:
                self.ended.add(name)
                events.append(Exited(name))
            else:
                self._polls[self._watched[name].poll.remote(_POLL_S)] = name
        return events

    def failure_hint(self, report: ErrorReport) -> str:
        return ""

    def exit_error(self, exited: Exited, ready: bool, progress: str) -> JobFailedError:
        name = exited.task
        if exited.cause is None:
            return JobFailedError(f"task {name} ended without reporting Stopped or Failed; the job was stopped",
                                  task=name)
        node = "?"
        actor = self.job.graph.head_of(name) if self.job is not None else name   # a chain's actor
        try:
            node = ray.get(self._where[actor], timeout=1)[0]
        except (RayError, TimeoutError, KeyError):
            pass
        chain = self.job.graph.chain(name) if self.job is not None else (name,)
        ran = f", which ran the chain {' -> '.join(chain)}" if len(chain) > 1 else ""
        if node != "?" and not node_alive(node):
            return JobFailedError(
                f"task {name} (Ray actor {self.actor_name(actor)}{ran}) was lost: its node {node} is gone (removed, "
                f"shut down or unreachable): {exited.cause}; the job was stopped and every other task ended. Run "
                "it again once the cluster has room for every task actor.", task=name)
        return JobFailedError(
            f"task {name} (Ray actor {self.actor_name(actor)}{ran}, node {node}) died: {exited.cause}; the job was "
            "stopped and every other task ended. An actor dies when its worker process exits (os._exit, a "
            "crash in native code, the OOM killer) or its node goes away.", task=name)

    def locate(self) -> dict[str, tuple[str, int]]:
        """task -> (Ray node id, worker pid), asked from each actor (tools and tests)."""
        names = list(self._where)
        for name, where in zip(names, ray.get([self._where[n] for n in names], timeout=30)):
            self.placement[name] = tuple(where)
        return dict(self.placement)

    # -- cleaning up -------------------------------------------------------------------------------

    def stop_tasks(self, failed: bool, grace: float) -> None:
        if not failed and self._runs:
            # Finished normally: let run() close its logs before the actors go.
            ray.wait(list(self._runs.values()), num_returns=len(self._runs), timeout=grace)

    def close_control(self) -> None:
        pass   # each outbox lives in its actor

    def close_channels(self) -> None:
        pass   # the channels are actor calls: they go with the actors

    def close_job_control(self) -> None:
        if self.job_control is not None:
            self.job_control.close()
        actors = dict(self.actors)   # the split cursors' holder among them
        for name, actor in actors.items():
            try:
                ray.kill(actor, no_restart=True)
            except (RayError, ValueError) as exc:
                if self.job is not None:
                    self.job.log.warning("could not kill the actor of task %s: %s", name, exc)
        left = wait_until_dead(actors, _DEATH_WAIT_S)
        if left and self.job is not None:
            self.job.log.warning("actors still alive %.0f s after ray.kill: %s", _DEATH_WAIT_S, ", ".join(left))
        self._runs.clear()


class _ActorHandle:
    """A task actor's handle for the Dispatcher: the pid arrives with its Ready message."""

    pid = None
