"""InlineServiceHost: service replicas as objects in the driver, called directly by the inline tasks.

    prepare()      each replica's service object, built in the driver (a HostedReplica), and the
                   InlineServiceDirectory that goes into every TaskContext
    start()        (before the tasks) each replica's setup(), in order; its ServiceReady, or the Failed
                   that fails the job (the replicas after it are then never set up), goes to the
                   Dispatcher by direct call, like a task's messages
    a call         InlineServiceClient: the arguments go through pickle (a copy, and what could not cross
                   a process boundary fails here too, as on the inline channels), the replica's method runs
                   in the calling thread, its answer is copied back the same way
    request_stop   stop() and cleanup() of every replica that was set up; the ServiceStopped (or Failed)
                   and one Exited per replica are what wait_stopping() returns
    terminate()    closes the services' log files

Round robin, the errors (ServiceError with the remote traceback, UnknownServiceError,
ServiceTimeoutError) and the metrics are those of every backend (runtime/service/calls.py, hosted.py).
What differs, by the nature of running in the driver's thread (a breakpoint in a service stops the job
there, and a run repeats exactly):
- A call cannot be interrupted: it runs to its end. One that took longer than its timeout then raises
  ServiceTimeoutError, as the caller elsewhere would have (the answer is dropped).
- `call_service_async` runs the call at once and returns a resolved Future: calls do not overlap.
- Every replica lives in the driver's process (one pid), so `os._exit` in a service ends the driver.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from procflow.core.errors import ServiceError
from procflow.core.service import ServiceSpec
from procflow.runtime.backend import Exited
from procflow.runtime.control import Failed
from procflow.runtime.service.calls import ServiceInfo, answer, service_infos, timeout_error
from procflow.runtime.service.client import dumps, loads
from procflow.runtime.service.hosted import DirectClient, HostedReplica
from procflow.runtime.service.replica import METRIC_FIELDS, ReplicaContext, public_methods
from procflow.runtime.task.entry import close_logger, open_task_logger

if TYPE_CHECKING:
    from procflow.backends.inline.executor import InlineBackend


def _copy(value: Any) -> Any:
    """What a process boundary does to a value: a copy, or EncodeError where it cannot be sent."""
    return loads(dumps(value))


@dataclass(frozen=True)
class InlineServiceDirectory:
    """Every service and its replicas (objects in this process), and each caller's index."""

    services: dict[str, ServiceInfo]
    replicas: tuple[HostedReplica, ...]     # by global index
    callers: dict[str, int]                 # caller name (task or replica) -> caller index

    def connect(self, ctx: Any) -> InlineServiceClient:
        return InlineServiceClient(self, self.callers[ctx.name], ctx.name)


class InlineServiceClient(DirectClient):
    """A task's (or replica's) client: calls the replica's method in the calling thread."""

    def __init__(self, directory: InlineServiceDirectory, caller: int, caller_name: str) -> None:
        super().__init__(directory.services, caller, caller_name)
        self._replicas = directory.replicas

    def _call(self, info: ServiceInfo, replica: int, method: str, args: tuple, kwargs: dict,
              timeout: float) -> Any:
        args, kwargs = _copy((args, kwargs))
        started = time.monotonic()
        status, value = self._replicas[replica].call(method, args, kwargs)
        took = time.monotonic() - started
        if took > timeout:
            raise timeout_error(info, method, replica, self._caller_name, timeout,
                                f"it ran in the driver for {took:.3g}s (an inline call runs to its end; its "
                                "answer was dropped)")
        return answer(info.name, method, status, value)

    def _call_async(self, info: ServiceInfo, replica: int, method: str, args: tuple, kwargs: dict,
                    timeout: float) -> Future:
        future: Future = Future()
        try:
            future.set_result(self._call(info, replica, method, args, kwargs, timeout))
        except ServiceError as exc:   # what a local Future would raise; a bad argument raises here, as there
            future.set_exception(exc)
        return future


class InlineServiceHost:
    """The ServiceHost of the inline backend (see the module docstring)."""

    def __init__(self, backend: InlineBackend) -> None:
        self.backend = backend
        self.directory: InlineServiceDirectory | None = None
        self._loggers: dict[str, logging.Logger] = {}
        self._stopping: list[Any] = []

    def prepare(self, specs: Mapping[str, ServiceSpec], replicas: Mapping[str, tuple[str, int]],
                callers: list[str]) -> InlineServiceDirectory:
        job = self.backend.job
        assert job is not None, "open_job() first"
        infos = service_infos(specs, replicas, public_methods)
        hosted = []
        for name, (service, index) in replicas.items():
            spec = specs[service]
            ctx = ReplicaContext(name=name, service_name=service, parallel_index=index - infos[service].first,
                                 parallelism=spec.parallelism, replica=index, job_id=job.job_id,
                                 env_dir=job.env_dir, config=dict(job.config), directory=None)
            hosted.append(HostedReplica(ctx, spec.build(), keep_cause=True, copy=_copy))
        self.directory = InlineServiceDirectory(infos, tuple(hosted), {name: i for i, name in enumerate(callers)})
        for replica in hosted:
            replica.ctx.directory = self.directory
        return self.directory

    def _logger(self, ctx: ReplicaContext) -> logging.Logger:
        # One logger per service: the replicas of a service share its files, and reopening them per
        # replica in this one process would close the handlers of the replicas opened before.
        logger = self._loggers.get(ctx.service_name)
        if logger is None:
            logger = self._loggers[ctx.service_name] = open_task_logger(ctx.service_name, ctx.log_dir,
                                                                        ctx.config["log_level"])
        return logger

    def start(self) -> None:
        assert self.directory is not None, "prepare() first"
        directory = self.directory
        for replica in directory.replicas:
            message = replica.setup(functools.partial(self._logger, replica.ctx), directory.connect)
            self.backend.deliver(message)
            if isinstance(message, Failed):
                return   # the job has failed: nothing more is started

    def request_stop(self) -> None:
        if self.directory is None:
            return
        for replica in self.directory.replicas:
            message = replica.stop()
            if message is not None:
                self._stopping.append(message)
            self._stopping.append(Exited(replica.ctx.name))

    def wait_stopping(self, timeout: float) -> list[Any]:
        events, self._stopping = self._stopping, []
        return events

    def terminate(self, deadline: float, grace: float) -> None:
        for logger in self._loggers.values():
            close_logger(logger)
        self._loggers.clear()

    def read_counters(self) -> np.ndarray:
        replicas = self.directory.replicas if self.directory is not None else ()
        return np.array([r.counters() for r in replicas], dtype=np.float64).reshape(len(replicas),
                                                                                    len(METRIC_FIELDS))

    def pids(self) -> dict[str, int | None]:
        replicas = self.directory.replicas if self.directory is not None else ()
        return {r.ctx.name: os.getpid() for r in replicas}
