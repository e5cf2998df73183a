"""One service replica: its own process, serving calls from its request inbox until the driver says stop.

    attach ─► service.setup() ─► Ready ─► serve ─► (stop frame from the driver) ─► stop() ─► cleanup()
           ─► Stopped(metrics) ─► exit

Serve loop: drain every caller's request ring, run each call, and write the answer into the caller's
response ring at once (callers are waiting); then wait on the inbox doorbell: a short adaptive poll, since
a synchronous caller sends its next request a few microseconds after our answer, then a futex sleep
(no CPU while idle), see waiting.py. An exception in a method becomes an error answer, never a dead
replica; only an exception in setup/stop/cleanup (or a BaseException) ends the replica, reported as Failed.

Counters (calls, errors, busy seconds) live in a small shared segment the driver reads at any moment,
like the tasks' counters in job_control.py.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np

from procflow.runtime.communication import ring as ringmod
from procflow.runtime.communication.shm import SharedSegment
from procflow.runtime.control import ErrorReport, Failed, ServiceReady, ServiceStopped
from procflow.runtime.service.client import (
    ERROR,
    NO_METHOD,
    OK,
    EncodeError,
    dumps,
    loads,
)
from procflow.runtime.service.rings import CallRingReader, CallRingWriter, asleep_word
from procflow.runtime.service.waiting import Waiter
from procflow.runtime.task.entry import become_child, end_child, open_task_logger
from procflow.runtime.task.lifeline import DriverLifeline

METRIC_FIELDS = ("calls", "errors", "busy_s")
# Hooks of BaseService that are lifecycle, not callable methods.
_NOT_METHODS = frozenset({"setup", "stop", "cleanup", "call_service", "call_service_async", "logger", "ctx"})


def public_methods(service_class: type) -> tuple[str, ...]:
    names = []
    for name in dir(service_class):
        if name.startswith("_") or name in _NOT_METHODS:
            continue
        if callable(getattr(service_class, name, None)):
            names.append(name)
    return tuple(names)


@dataclass
class ReplicaContext:
    """What a replica's service sees as `self.ctx`, on every backend. Picklable: the logger and the
    client (`services`) are set where the replica runs."""

    name: str              # replica name, e.g. "matrix[0]"
    service_name: str
    parallel_index: int
    parallelism: int
    replica: int           # global replica index: its request inbox and its slot in callers' inboxes
    job_id: str
    env_dir: str
    config: dict
    directory: Any         # the backend's service directory: `connect(ctx)` gives this replica its client

    def __post_init__(self) -> None:
        self.logger: Any = None
        self.services: Any = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("logger", None)
        state.pop("services", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.logger = self.services = None

    @property
    def log_dir(self) -> str:
        return os.path.join(self.env_dir, self.job_id)


@dataclass
class ServiceContext(ReplicaContext):
    """A local replica process's context: the replica's, plus its metrics segment and control pipe."""

    metrics_segment: str
    control: Any = None


class Replica:
    def __init__(self, ctx: ServiceContext, service: Any) -> None:
        self.ctx = ctx
        self.service = service
        d = ctx.directory
        self._cap = d.capacity
        self._inbox = SharedSegment(d.request_inboxes[ctx.replica])
        self._doorbell = ringmod.Doorbell(self._inbox)
        self._readers = [CallRingReader(self._inbox, c, self._cap, d.n_callers) for c in range(d.n_callers)]
        self._waiter = Waiter(self._doorbell, asleep_word(self._inbox, d.n_callers, self._cap))
        self._answer_segments: dict[int, SharedSegment] = {}
        self._writers: dict[int, CallRingWriter] = {}
        self._metrics_seg = SharedSegment(ctx.metrics_segment)
        self.counters = np.ndarray((d.n_replicas, len(METRIC_FIELDS)), dtype=np.float64,
                                   buffer=self._metrics_seg.buf)[ctx.replica]
        self._methods = {name: getattr(service, name) for name in public_methods(type(service))}
        self._stopping = False
        self._caller = 0
        self.calls = self.errors = 0
        self.busy = 0.0

    def serve(self) -> None:
        readers = list(enumerate(self._readers))
        on_request = self._on_request
        wait = self._waiter.wait

        def ready() -> bool:
            for _, reader in readers:
                if reader.has_data():
                    return True
            return False

        while True:
            for caller, reader in readers:
                if reader.has_data():
                    self._caller = caller
                    reader.drain(on_request)
            if self._stopping:
                return
            wait(ready)

    def _on_request(self, flags: int, body: Any) -> None:
        if flags & ringmod.FLAG_CONTROL:
            self._stopping = True   # from the driver: every task has finished
            return
        started = time.perf_counter()
        cid, method, args, kwargs = loads(body)
        fn = self._methods.get(method)
        answer: tuple[int, int, Any]   # (call id, status, value: the result, or the error's details)
        if fn is None:
            answer = (cid, NO_METHOD, f"service {self.ctx.service_name!r} has no method {method!r}; its "
                                      f"methods: {sorted(self._methods)}")
            self.errors += 1
        else:
            try:
                answer = (cid, OK, fn(*args, **kwargs))
            except Exception as exc:
                self.errors += 1
                tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                self.ctx.logger.warning("%s(...) raised %s: %s", method, type(exc).__name__, exc)
                self.ctx.logger.debug("%s", tb)
                answer = (cid, ERROR, (type(exc).__name__, str(exc), tb,
                                       f"replica {self.ctx.parallel_index}, pid {os.getpid()}"))
        self._answer(self._caller, answer)
        self.calls += 1
        self.busy += time.perf_counter() - started
        c = self.counters
        c[0], c[1], c[2] = self.calls, self.errors, self.busy

    def _answer(self, caller: int, answer: tuple) -> None:
        try:
            data = dumps(answer)
        except EncodeError as exc:
            self.errors += 1
            data = dumps((answer[0], ERROR, (
                "EncodeError", f"the result of the call could not be sent back: {exc}", "", "encoding")))
        writer = self._writers.get(caller)
        if writer is None:
            seg = self._answer_segments[caller] = SharedSegment(self.ctx.directory.response_inboxes[caller])
            writer = self._writers[caller] = CallRingWriter(seg, self.ctx.replica, self._cap,
                                                            self.ctx.directory.n_replicas)
        writer.send(data)

    def metrics(self) -> dict:
        return {"calls": self.calls, "errors": self.errors, "busy_s": self.busy}

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        for reader in self._readers:
            reader.close()
        self._writers.clear()
        self._readers = []
        # Their ctypes words over the segment would keep it from closing (BufferError); never used after.
        self._doorbell = self._waiter = None  # type: ignore[assignment]  # closed
        self.counters = None
        for seg in (*self._answer_segments.values(), self._inbox, self._metrics_seg):
            seg.close()


def service_main(ctx: ServiceContext, service: Any, driver: DriverLifeline) -> None:
    logger = None
    replica = None
    code = 0
    stage = "setup"
    try:
        become_child(driver)
        # Inside the try: a failure to open the logs is reported too (issue 22.11). Every replica of a
        # service appends to the same <service>_info/_debug.log; each line names the pid.
        ctx.logger = logger = open_task_logger(ctx.service_name, ctx.log_dir, ctx.config["log_level"])
        replica = Replica(ctx, service)
        ctx.services = ctx.directory.connect(ctx)
        service.ctx = ctx
        service.setup()
        ctx.control.send(ServiceReady(ctx.name, os.getpid()))
        logger.info("%s ready (pid %d)", ctx.name, os.getpid())
        stage = "serve"
        replica.serve()
        stage = "stop"
        service.stop()
        stage = "cleanup"
        service.cleanup()
        logger.info("%s stopped: %d calls, %d errors, %.3fs busy", ctx.name, replica.calls, replica.errors,
                    replica.busy)
        ctx.control.send(ServiceStopped(ctx.name, replica.metrics()))
    except BaseException as exc:  # report everything, SystemExit from user code included
        code = 1
        report = ErrorReport.from_exception(exc, task=ctx.name, pid=os.getpid(),
                                            function=f"{type(service).__name__}.{stage}()")
        if logger is not None:
            logger.error("%s failed in %s: %s: %s", ctx.name, stage, report.error_type, report.message)
            logger.debug("%s", report.traceback)
        try:
            ctx.control.send(Failed(report))
        except Exception:
            if logger is not None:
                logger.exception("could not report the failure to the driver")
    finally:
        try:
            if ctx.services is not None:
                ctx.services.close()
            if replica is not None:
                replica.close()
        except Exception:
            # Exiting unmaps everything anyway; the outcome was already reported (Stopped or Failed).
            if logger is not None:
                logger.exception("could not close the service's channels")
    end_child(logger, ctx.control, code)
