"""Hosted replicas: a service object served inside a process that something else runs (the inline
backend's driver, a Ray actor), and the base of the clients that reach it by a direct or an actor call.

A local replica is a process of its own with a serve loop over rings (replica.py). Here the host owns the
thread and calls in; the lifecycle and the bookkeeping are the local replica's, so a service behaves the
same everywhere:

    host                                  HostedReplica
    setup(open_logger, connect) ───────►  ctx.logger / ctx.services set, service.setup()
                                          -> ServiceReady | Failed (named "<Class>.setup()")
    call(method, args, kwargs) ────────►  one call at a time (a lock: the local replica is one thread);
                                          -> (status, value) as calls.py defines; an exception in a method
                                          is an ERROR answer, never a dead replica; counts calls, errors,
                                          busy seconds; `copy` (inline) copies the result as a
                                          process boundary would, an EncodeError answer if it cannot
    stop()  ───────────────────────────►  service.stop(), service.cleanup(), the client closed
                                          -> ServiceStopped(metrics) | Failed

A hook that raises ends the replica with a Failed report, as in a local replica; `keep_cause` puts the
live exception in it where the report never leaves the driver (inline: pdb.post_mortem lands in the
service's frame).
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from procflow.core.errors import EncodeError
from procflow.core.service import BaseService
from procflow.runtime.control import ErrorReport, Failed, ServiceReady, ServiceStopped
from procflow.runtime.service.calls import ERROR, NO_METHOD, OK, ReplicaTurns, ServiceInfo, check_call
from procflow.runtime.service.replica import ReplicaContext, public_methods


class _Uncopyable(Exception):
    """The result of a call cannot be copied (sent back): told apart from an error of the method."""


class HostedReplica:
    """One replica's service object, its hooks and its counters (see the module docstring)."""

    def __init__(self, ctx: ReplicaContext, service: BaseService, *, keep_cause: bool = False,
                 copy: Callable[[Any], Any] | None = None) -> None:
        self.ctx = ctx
        self.service = service
        self.keep_cause = keep_cause
        self._copy = copy
        self._methods: dict[str, Callable[..., Any]] = {
            name: getattr(service, name) for name in public_methods(type(service))}
        self._lock = threading.Lock()
        self.serving = False
        self.calls = self.errors = 0
        self.busy = 0.0

    def setup(self, open_logger: Callable[[], Any], connect: Callable[[ReplicaContext], Any]) -> ServiceReady | Failed:
        """Open the logs, connect the client (services call services), run setup(); any failure, the
        logs' included (issue 22.11), is a Failed report naming this replica."""
        ctx = self.ctx
        try:
            ctx.logger = open_logger()
            ctx.services = connect(ctx)
            self.service.ctx = ctx
            self.service.setup()
        except BaseException as exc:  # report everything, SystemExit from user code included
            self._close_client()
            return self._failed(exc, "setup")
        self.serving = True
        ctx.logger.info("%s ready (pid %d)", ctx.name, os.getpid())
        return ServiceReady(ctx.name, os.getpid())

    def call(self, method: str, args: tuple, kwargs: dict) -> tuple[int, Any]:
        """Run one call; the answer as (status, value)."""
        with self._lock:
            started = time.perf_counter()
            fn = self._methods.get(method)
            result: tuple[int, Any]
            if not self.serving:
                # Only a replica that failed in setup or has stopped gets here: the job is ending.
                self.errors += 1
                result = (ERROR, ("ServiceError", f"replica {self.ctx.name} is not serving (it failed in setup "
                                  "or has stopped)", "", f"replica {self.ctx.parallel_index}, pid {os.getpid()}"))
            elif fn is None:
                self.errors += 1
                result = (NO_METHOD, f"service {self.ctx.service_name!r} has no method {method!r}; its methods: "
                                     f"{sorted(self._methods)}")
            else:
                try:
                    value = fn(*args, **kwargs)
                    result = (OK, value if self._copy is None else self._copy_result(value))
                except _Uncopyable as exc:
                    self.errors += 1
                    result = (ERROR, ("EncodeError", f"the result of the call could not be sent back: {exc}",
                                      "", "encoding"))
                except Exception as exc:
                    self.errors += 1
                    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                    self.ctx.logger.warning("%s(...) raised %s: %s", method, type(exc).__name__, exc)
                    self.ctx.logger.debug("%s", tb)
                    result = (ERROR, (type(exc).__name__, str(exc), tb,
                                      f"replica {self.ctx.parallel_index}, pid {os.getpid()}"))
            self.calls += 1
            self.busy += time.perf_counter() - started
            return result

    def stop(self) -> ServiceStopped | Failed | None:
        """stop() then cleanup(); None where setup never succeeded (the hooks do not run, as locally)."""
        with self._lock:   # after the call in progress, as a local replica reads the stop frame
            if not self.serving:
                return None
            self.serving = False
        stage = "stop"
        try:
            self.service.stop()
            stage = "cleanup"
            self.service.cleanup()
        except BaseException as exc:  # report everything, SystemExit from user code included
            return self._failed(exc, stage)
        finally:
            self._close_client()
        self.ctx.logger.info("%s stopped: %d calls, %d errors, %.3fs busy", self.ctx.name, self.calls,
                             self.errors, self.busy)
        return ServiceStopped(self.ctx.name, self.metrics())

    def _copy_result(self, value: Any) -> Any:
        assert self._copy is not None
        try:
            return self._copy(value)
        except EncodeError as exc:
            raise _Uncopyable(str(exc)) from exc

    def _close_client(self) -> None:
        client, self.ctx.services = self.ctx.services, None
        if client is not None:
            client.close()

    def metrics(self) -> dict[str, float]:
        return {"calls": self.calls, "errors": self.errors, "busy_s": self.busy}

    def counters(self) -> list[float]:
        """calls, errors, busy_s: a row of the METRIC_FIELDS table."""
        return [float(self.calls), float(self.errors), self.busy]

    def _failed(self, exc: BaseException, stage: str) -> Failed:
        ctx = self.ctx
        report = ErrorReport.from_exception(exc, task=ctx.name, pid=os.getpid(),
                                            function=f"{type(self.service).__name__}.{stage}()")
        if ctx.logger is not None:
            ctx.logger.error("%s failed in %s: %s: %s", ctx.name, stage, report.error_type, report.message)
            ctx.logger.debug("%s", report.traceback)
        return Failed(report, cause=exc if self.keep_cause else None)


class DirectClient:
    """Base of the inline and Ray clients: the checks, the replica choice and the errors of calls.py; a
    subclass says how one call reaches replica `replica` (`_call`, `_call_async`)."""

    def __init__(self, services: dict[str, ServiceInfo], caller: int, caller_name: str) -> None:
        self._services = services
        self._caller_name = caller_name
        self._turns = ReplicaTurns(services, caller)
        self._closed = False

    def call(self, name: str, method: str, args: tuple, kwargs: dict, timeout: float) -> Any:
        info = check_call(self._services, name, method, timeout, self._caller_name, self._closed)
        return self._call(info, self._turns.pick(info), method, tuple(args), dict(kwargs), float(timeout))

    def call_async(self, name: str, method: str, args: tuple, kwargs: dict, timeout: float) -> Future:
        info = check_call(self._services, name, method, timeout, self._caller_name, self._closed)
        return self._call_async(info, self._turns.pick(info), method, tuple(args), dict(kwargs), float(timeout))

    def _call(self, info: ServiceInfo, replica: int, method: str, args: tuple, kwargs: dict,
              timeout: float) -> Any:
        raise NotImplementedError

    def _call_async(self, info: ServiceInfo, replica: int, method: str, args: tuple, kwargs: dict,
                    timeout: float) -> Future:
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True
