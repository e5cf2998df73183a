"""ServiceManager: the driver's side of services. The Dispatcher calls it at fixed points:

    prepare()     (before task contexts) one request inbox per replica (a ring per caller), one response
                  inbox per caller (a ring per replica), both call inboxes (rings.py), a counters segment,
                  a control pipe per replica;
                  every segment is handed to the Dispatcher, which unlinks it at cleanup
    directory     put into every TaskContext; connect(ctx) there gives the task its ServiceClient
    start()       (before tasks) one process per replica through the task factory
    monitor       Ready / Stopped / Failed arrive on the control pipes the Dispatcher watches; a replica
                  that exits on its own fails the job
    stop_all()    (cleanup, after every task ended) a stop frame to each replica on the driver's own
                  request ring; replicas run stop() and cleanup() and exit; waits for their Stopped
                  (a grace period, 0.5 s when the job failed), then SIGTERM to the ones still running
    handles()     the Dispatcher joins (and if need be kills) them like tasks

Callers, in order: every task, every replica, then the driver (which only ever sends stop frames).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from multiprocess import connection

from procflow.core.errors import JobFailedError, describe_exit
from procflow.runtime.communication import ring as ringmod
from procflow.runtime.communication.shm import SharedSegment, segment_name
from procflow.runtime.control import Failed, Stopped
from procflow.runtime.service.client import ServiceDirectory, ServiceInfo
from procflow.runtime.service.replica import METRIC_FIELDS, ServiceContext, public_methods, service_main
from procflow.runtime.service.rings import CallRingWriter, call_inbox_size
from procflow.runtime.task.lifeline import DriverLifeline
from procflow.runtime.task.main_guard import name_error_hint

log = logging.getLogger("procflow.dispatcher")

# Capacity of each request and response ring. Positions never wrap, so a ring in use touches all of its
# pages in time; segments are committed when created (shm.py). Larger arguments still travel (as
# fragments).
RING_BYTES = 1 << 20
DRIVER = "<driver>"


def _segment_sizes(n_tasks: int, n_replicas: int) -> tuple[int, int, int]:
    """Sizes of a request inbox (one per replica), a response inbox (one per task and replica) and the
    metrics segment: what prepare() creates, and what the dispatcher's /dev/shm budget counts."""
    n_callers = n_tasks + n_replicas + 1   # every task, every replica, then the driver
    return (call_inbox_size(n_callers, RING_BYTES), call_inbox_size(n_replicas, RING_BYTES),
            8 * len(METRIC_FIELDS) * n_replicas)


def shm_segment_sizes(specs: dict, n_tasks: int) -> list[int]:
    """The size of every segment `prepare()` will create for these services and `n_tasks` tasks."""
    n_replicas = sum(spec.parallelism for spec in specs.values())
    if not n_replicas:
        return []
    request_size, response_size, metrics_size = _segment_sizes(n_tasks, n_replicas)
    return [request_size] * n_replicas + [response_size] * (n_tasks + n_replicas) + [metrics_size]


class ServiceManager:
    def __init__(self, dispatcher: Any, specs: dict) -> None:
        self.dispatcher = dispatcher
        self.specs = specs
        self.directory: ServiceDirectory | None = None
        self._contexts: dict[str, ServiceContext] = {}
        self._services: dict[str, Any] = {}
        self._readers: dict[Any, str] = {}
        self._handles: dict[str, Any] = {}
        self._replica_of: dict[str, tuple[str, int]] = {}   # replica name -> (service, global index)
        self._ready: set[str] = set()
        self._stopped: dict[str, dict] = {}
        self._request_segments: list[SharedSegment] = []
        self._metrics_segment: SharedSegment | None = None
        self._final: np.ndarray | None = None
        self._pids: dict[str, int | None] = {}
        self._stopping = False

    # -- preparing ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        d = self.dispatcher
        infos: dict[str, ServiceInfo] = {}
        replicas: list[str] = []
        for spec in self.specs.values():
            infos[spec.name] = ServiceInfo(spec.name, len(replicas), spec.parallelism,
                                           public_methods(spec.service_class))
            for i in range(spec.parallelism):
                name = f"{spec.name}[{i}]"
                self._replica_of[name] = (spec.name, len(replicas))
                replicas.append(name)
        callers = [*d.graph.nodes, *replicas]
        n_callers = len(callers) + 1  # the driver's ring is the last one of each request inbox
        request_size, response_size, metrics_size = _segment_sizes(len(d.graph.nodes), len(replicas))
        self._request_segments = [self._segment("svcreq", request_size) for _ in replicas]
        request_names = [seg.name for seg in self._request_segments]
        response_names = [self._segment("svcans", response_size).name for _ in callers]
        self._metrics_segment = self._segment("svcmet", metrics_size)
        self.directory = ServiceDirectory(
            infos, tuple(request_names), tuple(response_names),
            {name: i for i, name in enumerate(callers)}, RING_BYTES, n_callers)
        for name in replicas:
            service, index = self._replica_of[name]
            spec = self.specs[service]
            reader, writer = d.factory.control_pipe()
            d._readers[reader] = name
            d._writers.append(writer)
            self._readers[reader] = name
            self._contexts[name] = ServiceContext(
                name=name, service_name=service, parallel_index=index - infos[service].first,
                parallelism=spec.parallelism, replica=index, job_id=d.job_id, env_dir=d.env_dir,
                config=dict(d.config), directory=self.directory,
                metrics_segment=self._metrics_segment.name, control=writer)
            self._services[name] = spec.build()
        log.info("services prepared: %s (%d replicas, %d callers)", sorted(self.specs), len(replicas),
                 len(callers))

    def _segment(self, role: str, size: int) -> SharedSegment:
        seg = SharedSegment(segment_name(self.dispatcher.job_id, role), size, create=True)
        self.dispatcher._owners.append(seg)   # closed and unlinked by Dispatcher.cleanup()
        return seg

    # -- running -----------------------------------------------------------------------------------

    def start(self, parent: DriverLifeline) -> None:
        for name, ctx in self._contexts.items():
            self._handles[name] = self.dispatcher.factory.start(name, service_main,
                                                                (ctx, self._services[name], parent))
            self._pids[name] = self._handles[name].pid
            log.info("service replica %s started (pid %s)", name, self._handles[name].pid)

    def sentinels(self) -> dict:
        return {h.sentinel: name for name, h in self._handles.items()}

    def owns(self, name: str) -> bool:
        return name in self._replica_of

    def mark_ready(self, name: str) -> None:
        self._ready.add(name)
        log.info("service replica %s ready", name)

    @property
    def all_ready(self) -> bool:
        return len(self._ready) == len(self._replica_of)

    def mark_stopped(self, name: str, metrics: dict) -> None:
        self._stopped[name] = metrics
        log.info("service replica %s stopped: %s", name, metrics)

    def on_exit(self, name: str) -> None:
        handle = self._handles[name]
        handle.join(1.0)
        if name in self._stopped or self._stopping or self.dispatcher.manager.failure is not None:
            return
        self.dispatcher._fail(JobFailedError(
            f"service replica {name} (pid {handle.pid}) {describe_exit(handle.exitcode)}; the job was "
            "stopped and every task ended", task=name, exitcode=handle.exitcode))

    def on_message(self, msg: Any) -> None:
        log.warning("unexpected control message %r", msg)

    def handles(self) -> list[tuple[str, Any]]:
        return list(self._handles.items())

    # -- stopping ----------------------------------------------------------------------------------

    def stop_all(self, grace: float) -> None:
        """Ask every replica to stop; wait for its Stopped (or exit); SIGTERM the ones that don't."""
        from procflow.runtime.dispatcher import job_error

        self._stopping = True
        if self.directory is not None:
            driver_slot = self.directory.n_callers - 1
            for seg in self._request_segments:
                writer = CallRingWriter(seg, driver_slot, RING_BYTES, self.directory.n_callers)
                writer.write([b""], 0, ringmod.FLAG_CONTROL)
                writer.close()   # commits: wakes the replica if it sleeps
        failed = self.dispatcher.manager.failure is not None
        deadline = time.monotonic() + (min(grace, 0.5) if failed else grace)
        readers = {r: n for r, n in self._readers.items() if n in self._handles and n not in self._stopped}
        sentinels = {h.sentinel: n for n, h in self._handles.items()}
        while readers or sentinels:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for ready in connection.wait([*readers, *sentinels], timeout=left):
                if ready in sentinels:
                    sentinels.pop(ready)
                    continue
                try:
                    while ready.poll():
                        msg = ready.recv()
                        if isinstance(msg, Stopped):
                            self.mark_stopped(msg.task, msg.metrics)
                        elif isinstance(msg, Failed):
                            hint = name_error_hint(msg.report, self.dispatcher.start_method)
                            self.dispatcher._fail(job_error(msg.report, hint))
                except (EOFError, OSError):
                    readers.pop(ready, None)
        for name, handle in self._handles.items():
            # A fired sentinel can precede the reaping by a moment: join briefly before calling it stuck.
            handle.join(max(deadline - time.monotonic(), 0.05))
            if handle.is_alive():
                log.warning("service replica %s (pid %s) did not stop within %.1fs; sending SIGTERM", name,
                            handle.pid, max(grace, 0.0))
                handle.terminate()
        self._final = self._read_counters()

    # -- metrics -----------------------------------------------------------------------------------

    def _read_counters(self) -> np.ndarray:
        seg = self._metrics_segment
        n = len(self._replica_of)
        if seg is None or seg._mmap is None or n == 0:
            return np.zeros((n, len(METRIC_FIELDS)))
        view = np.ndarray((n, len(METRIC_FIELDS)), dtype=np.float64, buffer=seg.buf)
        rows = view.copy()
        del view
        return rows

    def metrics(self) -> dict[str, dict]:
        """Per service: replicas, calls served, errors, seconds busy (summed), and the same per replica."""
        rows = self._final if self._final is not None else self._read_counters()
        out: dict[str, dict] = {}
        for name, (service, index) in self._replica_of.items():
            counts = dict(zip(METRIC_FIELDS, map(float, rows[index]))) if index < len(rows) else {}
            row = {"calls": int(counts.get("calls", 0)), "errors": int(counts.get("errors", 0)),
                   "busy_s": counts.get("busy_s", 0.0), "pid": self._pids.get(name)}
            entry = out.setdefault(service, {"replicas": 0, "calls": 0, "errors": 0, "busy_s": 0.0,
                                             "per_replica": {}})
            entry["replicas"] += 1
            for k in ("calls", "errors", "busy_s"):
                entry[k] += row[k]
            entry["per_replica"][name] = row
        return out
