"""RayServiceHost: each service replica a Ray actor, called by the tasks (and by other replicas) remotely.

    driver (RayServiceHost)                       ServiceActor (one per replica)
    prepare()   contexts, service objects and the RayServiceDirectory (actor names in the job's
                namespace: picklable, in every TaskContext)
    start()     (before the tasks) user modules shipped by value; one actor per replica, named
                procflow-<job>-<service>[<i>] ──────────► __init__: logs, client, setup(); ServiceReady or
                                                           Failed into its outbox (so no call can come
                                                           before setup)
                the RayBackend long-polls each outbox with the task actors' (`watch`); a dead replica
                actor shows there as an Exited, and the ServiceManager fails the job naming it
    callers     RayServiceClient: call.remote(method, args, kwargs) ► call(): the answer (status, value)
                ray.get(ref, timeout) -> the value, or the error of calls.py; async: ref.future(), failed
                at its deadline by the client's one timer thread (joined by close())
    request_stop  stop.remote() ──────────────────────────► after the calls queued before it: stop(),
                                                           cleanup(), ServiceStopped; the outbox closes
    terminate() the final counters, then ray.kill every replica actor

Concurrency: `call` and `stop` run in the actor's default concurrency group, one at a time (a local
replica is one thread too); `poll` and `counters` run in a "control" group beside them, so that the
driver hears from a replica that is busy with a long call.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from procflow.backends.ray import channel
from procflow.backends.ray.actor import Outbox
from procflow.core.errors import ServiceError, ServiceUnavailableError
from procflow.core.service import BaseService, ServiceSpec
from procflow.runtime.backend import Exited
from procflow.runtime.control import Failed
from procflow.runtime.service.calls import ServiceInfo, abandoned_error, answer, service_infos, timeout_error
from procflow.runtime.service.hosted import DirectClient, HostedReplica
from procflow.runtime.service.replica import METRIC_FIELDS, ReplicaContext, public_methods
from procflow.runtime.task.entry import close_logger, open_task_logger

if TYPE_CHECKING:
    from procflow.backends.ray.backend import RayBackend

_CONTROL = "control"            # the concurrency group of poll and counters
_COUNTERS_TIMEOUT_S = 5.0       # how long reading a replica's counters may take before it counts as gone
# Options of the task actors that do not fit a replica: it serves one call at a time (its own groups).
_NOT_FOR_REPLICAS = ("max_concurrency", "concurrency_groups")


class ServiceActor:
    """One replica (see the module docstring); its service object arrives built by the driver."""

    def __init__(self, ctx: ReplicaContext, service: BaseService) -> None:
        self.outbox = Outbox()
        self.replica = HostedReplica(ctx, service)
        message = self.replica.setup(
            lambda: open_task_logger(ctx.service_name, ctx.log_dir, ctx.config["log_level"]), ctx.directory.connect)
        self.outbox.send(message)
        if isinstance(message, Failed):
            self._end()

    def call(self, method: str, args: tuple, kwargs: dict) -> tuple[int, Any]:
        return self.replica.call(method, args, kwargs)

    def stop(self) -> None:
        message = self.replica.stop()
        if message is not None:
            self.outbox.send(message)
        self._end()

    def _end(self) -> None:
        close_logger(self.replica.ctx.logger)
        self.outbox.close()

    @ray.method(concurrency_group=_CONTROL)
    def connect(self, replicas: dict[str, Any]) -> None:
        """Every replica's actor handle, for services that call services (in the control group: a call
        waiting for them must not hold it up)."""
        channel.register_peers(replicas)

    @ray.method(concurrency_group=_CONTROL)
    def poll(self, timeout: float) -> tuple[list, bool]:
        return self.outbox.poll(timeout)

    @ray.method(concurrency_group=_CONTROL)
    def counters(self) -> list[float]:
        return self.replica.counters()


@dataclass(frozen=True)
class RayServiceDirectory:
    """Where every replica is: actor names in the job's namespace. Pickles to names and integers."""

    services: dict[str, ServiceInfo]
    actors: tuple[str, ...]        # per replica (global index): its actor's name
    namespace: str
    callers: dict[str, int]        # caller name (task or replica) -> caller index

    def connect(self, ctx: Any) -> RayServiceClient:
        return RayServiceClient(self, self.callers[ctx.name], ctx.name)


class _Deadlines:
    """Fails each async call whose answer has not come by its deadline (a local async call times out the
    same way). One thread per client, started on the first async call, joined by close()."""

    def __init__(self, name: str) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Future, str, Callable[[], ServiceError]]] = []
        self._order = itertools.count()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name)
        self._thread.start()

    def add(self, deadline: float, future: Future, service: str, error: Callable[[], ServiceError]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._order), future, service, error))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            expired = []
            with self._cond:
                if self._closing:
                    return
                now = time.monotonic()
                while self._heap and (self._heap[0][0] <= now or self._heap[0][2].done()):
                    _, _, future, _, error = heapq.heappop(self._heap)
                    if not future.done():
                        expired.append((future, error))
                if not expired:
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
            for future, error in expired:   # outside the lock: set_exception runs the user's callbacks
                _settle(future, error=error())

    def close(self, caller: str) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
            left, self._heap = self._heap, []
        self._thread.join()
        for _, _, future, service, _ in left:
            _settle(future, error=abandoned_error(service, caller))


def _settle(future: Future, value: Any = None, error: BaseException | None = None) -> None:
    """Resolve `future` once: an answer and its deadline (or close()) may race."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except InvalidStateError:   # already resolved by the other side of the race, or cancelled by the user
        pass


class RayServiceClient(DirectClient):
    """A task's (or replica's) client: actor calls to the replicas. Thread-safe."""

    def __init__(self, directory: RayServiceDirectory, caller: int, caller_name: str) -> None:
        super().__init__(directory.services, caller, caller_name)
        self._dir = directory
        self._handles: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._deadlines: _Deadlines | None = None

    def _actor(self, replica: int) -> Any:
        handle = self._handles.get(replica)
        if handle is None:   # handed over by the driver (channel.peer): no by-name lookup in the GCS
            handle = self._handles[replica] = channel.peer(self._dir.actors[replica])
        return handle

    def _call(self, info: ServiceInfo, replica: int, method: str, args: tuple, kwargs: dict,
              timeout: float) -> Any:
        ref = self._actor(replica).call.remote(method, args, kwargs)
        try:
            status, value = ray.get(ref, timeout=timeout)
        except GetTimeoutError:
            raise self._timeout(info, method, replica, timeout) from None
        except RayError as exc:
            raise self._broken(info, method, replica, exc) from exc
        return answer(info.name, method, status, value)

    def _call_async(self, info: ServiceInfo, replica: int, method: str, args: tuple, kwargs: dict,
                    timeout: float) -> Future:
        ref = self._actor(replica).call.remote(method, args, kwargs)
        future: Future = Future()

        def done(ray_future: Future) -> None:
            try:
                status, value = ray_future.result()
            except RayError as exc:
                _settle(future, error=self._broken(info, method, replica, exc))
                return
            try:
                _settle(future, answer(info.name, method, status, value))
            except ServiceError as exc:
                _settle(future, error=exc)

        with self._lock:
            if self._deadlines is None:
                self._deadlines = _Deadlines(f"procflow-service-deadlines-{self._caller_name}")
            self._deadlines.add(time.monotonic() + timeout, future, info.name,
                                lambda: self._timeout(info, method, replica, timeout))
        ref.future().add_done_callback(done)
        return future

    def _timeout(self, info: ServiceInfo, method: str, replica: int, timeout: float) -> ServiceError:
        return timeout_error(info, method, replica, self._caller_name, timeout,
                             f"it waited on Ray actor {self._dir.actors[replica]}")

    def _broken(self, info: ServiceInfo, method: str, replica: int, exc: RayError) -> ServiceError:
        actor = self._dir.actors[replica]
        if isinstance(exc, RayActorError):
            return ServiceUnavailableError(
                f"service {info.name!r} replica {replica - info.first} (Ray actor {actor}) died while "
                f"{self._caller_name} waited for {method}(): {exc}", service=info.name)
        return ServiceError(f"call to service {info.name!r} method {method!r} (Ray actor {actor}) from "
                            f"{self._caller_name} failed in Ray: {type(exc).__name__}: {exc}", service=info.name)

    def close(self) -> None:
        """Stop the timer thread and fail the async calls still pending. Idempotent."""
        super().close()
        with self._lock:
            deadlines, self._deadlines = self._deadlines, None
        if deadlines is not None:
            deadlines.close(self._caller_name)


class RayServiceHost:
    """The ServiceHost of the Ray backend (see the module docstring)."""

    def __init__(self, backend: RayBackend) -> None:
        self.backend = backend
        self.directory: RayServiceDirectory | None = None
        self._contexts: dict[str, ReplicaContext] = {}
        self._services: dict[str, BaseService] = {}
        self._actors: dict[str, Any] = {}
        self._last: dict[int, list[float]] = {}   # global index -> the last counters read
        self._final: np.ndarray | None = None
        self._stopping = False

    def prepare(self, specs: Mapping[str, ServiceSpec], replicas: Mapping[str, tuple[str, int]],
                callers: list[str]) -> RayServiceDirectory:
        job = self.backend.job
        assert job is not None, "open_job() first"
        infos = service_infos(specs, replicas, public_methods)
        self.directory = RayServiceDirectory(infos, tuple(self.backend.actor_name(n) for n in replicas),
                                             self.backend.namespace, {name: i for i, name in enumerate(callers)})
        for name, (service, index) in replicas.items():
            spec = specs[service]
            self._contexts[name] = ReplicaContext(
                name=name, service_name=service, parallel_index=index - infos[service].first,
                parallelism=spec.parallelism, replica=index, job_id=job.job_id, env_dir=job.env_dir,
                config=dict(job.config), directory=self.directory)
            self._services[name] = spec.build()
        return self.directory

    def start(self) -> None:
        from procflow.backends.ray.backend import ship_by_value

        backend = self.backend
        ship_by_value(list(self._services.values()), [])
        # ray.remote's typed overloads lack `concurrency_groups` (Ray takes it in the decorator only, not in
        # .options()), hence the untyped call.
        make_remote: Any = ray.remote
        remote_cls = make_remote(concurrency_groups={_CONTROL: 2})(ServiceActor)
        options = {"num_cpus": 0, "scheduling_strategy": "SPREAD",
                   **{k: v for k, v in backend.actor_options.items() if k not in _NOT_FOR_REPLICAS}}
        for name, ctx in self._contexts.items():
            actor = remote_cls.options(name=backend.actor_name(name), namespace=backend.namespace,
                                       **options).remote(ctx, self._services[name])
            self._actors[name] = actor
            backend.watch(name, actor)
        handles = self.handles()
        for actor in self._actors.values():
            actor.connect.remote(handles)

    def handles(self) -> dict[str, Any]:
        """Every replica's actor handle by actor name: the task actors get them with run()."""
        return {self.backend.actor_name(name): actor for name, actor in self._actors.items()}

    def request_stop(self) -> None:
        for actor in self._actors.values():
            actor.stop.remote()

    def wait_stopping(self, timeout: float) -> list[Any]:
        events: list[Any] = []
        if not self._stopping:
            # Replicas that ended while the job ran: their Exited went to the monitor loop already.
            self._stopping = True
            events += [Exited(name) for name in self._actors if name in self.backend.ended]
        running = {name for name in self._actors if name not in self.backend.ended}
        if running:
            events += self.backend.wait_for(running, timeout)
        return events

    def terminate(self, deadline: float, grace: float) -> None:
        self._final = self.read_counters()
        for name, actor in self._actors.items():
            try:
                ray.kill(actor, no_restart=True)
            except (RayError, ValueError) as exc:
                if self.backend.job is not None:
                    self.backend.job.log.warning("could not kill the actor of service replica %s: %s", name, exc)
        from procflow.backends.ray.backend import wait_until_dead

        left = wait_until_dead(self._actors, max(deadline - time.monotonic(), 1.0))
        if left and self.backend.job is not None:
            self.backend.job.log.warning("service replica actors still alive after ray.kill: %s", ", ".join(left))

    def read_counters(self) -> np.ndarray:
        if self._final is not None:
            return self._final
        refs = {ctx.replica: self._actors[name].counters.remote()
                for name, ctx in self._contexts.items() if name in self._actors}
        for index, ref in refs.items():
            try:   # one by one: a dead replica keeps its last row, the others are read
                self._last[index] = ray.get(ref, timeout=_COUNTERS_TIMEOUT_S)
            except (RayError, TimeoutError):
                continue
        rows = np.zeros((len(self._contexts), len(METRIC_FIELDS)))
        for index, row in self._last.items():
            rows[index] = row
        return rows

    def pids(self) -> dict[str, int | None]:
        return {}   # the ServiceManager has each replica's pid from its ServiceReady
