"""LocalServiceHost: service replicas as processes, reached over shared-memory call rings.

    prepare()     one request inbox per replica (a ring per caller), one response inbox per caller (a ring
                  per replica), both call inboxes (runtime/service/rings.py), a counters segment, a
                  control pipe per replica; every segment belongs to the LocalBackend, which unlinks it
    start()       one process per replica through the backend's task factory (before the tasks)
    request_stop  a stop frame to each replica on the driver's own request ring; replicas run stop() and
                  cleanup(), send ServiceStopped and exit
    terminate()   SIGTERM to the replicas still running at the deadline; the backend joins (and if need
                  be kills) them with the tasks

Callers, in order: every task, every replica, then the driver (which only ever sends stop frames).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from procflow.core.service import ServiceSpec
from procflow.runtime.backend import Exited
from procflow.runtime.communication import ring as ringmod
from procflow.runtime.communication.shm import SharedSegment
from procflow.runtime.service.calls import service_infos
from procflow.runtime.service.client import ServiceDirectory
from procflow.runtime.service.replica import METRIC_FIELDS, ServiceContext, public_methods, service_main
from procflow.runtime.service.rings import CallRingWriter, call_inbox_size

if TYPE_CHECKING:
    from procflow.backends.local.backend import LocalBackend

log = logging.getLogger("procflow.dispatcher")

# Capacity of each request and response ring. Positions never wrap, so a ring in use touches all of its
# pages in time; segments are committed when created (shm.py). Larger arguments still travel (as
# fragments).
RING_BYTES = 1 << 20


def _segment_sizes(n_tasks: int, n_replicas: int) -> tuple[int, int, int]:
    """Sizes of a request inbox (one per replica), a response inbox (one per task and replica) and the
    metrics segment: what prepare() creates, and what the /dev/shm budget counts."""
    n_callers = n_tasks + n_replicas + 1   # every task, every replica, then the driver
    return (call_inbox_size(n_callers, RING_BYTES), call_inbox_size(n_replicas, RING_BYTES),
            8 * len(METRIC_FIELDS) * n_replicas)


def shm_segment_sizes(specs: Mapping[str, ServiceSpec], n_tasks: int) -> list[int]:
    """The size of every segment `prepare()` will create for these services and `n_tasks` tasks."""
    n_replicas = sum(spec.parallelism for spec in specs.values())
    if not n_replicas:
        return []
    request_size, response_size, metrics_size = _segment_sizes(n_tasks, n_replicas)
    return [request_size] * n_replicas + [response_size] * (n_tasks + n_replicas) + [metrics_size]


class LocalServiceHost:
    def __init__(self, backend: LocalBackend) -> None:
        self.backend = backend
        self.directory: ServiceDirectory | None = None
        self._contexts: dict[str, ServiceContext] = {}
        self._services: dict[str, Any] = {}
        self._request_segments: list[SharedSegment] = []
        self._metrics_segment: SharedSegment | None = None
        self._n_replicas = 0
        self._ended: set[str] = set()
        self._pids: dict[str, int | None] = {}

    def prepare(self, specs: Mapping[str, ServiceSpec], replicas: Mapping[str, tuple[str, int]],
                callers: list[str]) -> ServiceDirectory:
        job = self.backend.job
        assert job is not None, "open_job() first"
        infos = service_infos(specs, replicas, public_methods)
        self._n_replicas = len(replicas)
        n_tasks = len(callers) - len(replicas)
        n_callers = len(callers) + 1  # the driver's ring is the last one of each request inbox
        request_size, response_size, metrics_size = _segment_sizes(n_tasks, len(replicas))
        self._request_segments = [self.backend.segment("svcreq", request_size) for _ in replicas]
        response_names = [self.backend.segment("svcans", response_size).name for _ in callers]
        self._metrics_segment = self.backend.segment("svcmet", metrics_size)
        self.directory = ServiceDirectory(
            infos, tuple(seg.name for seg in self._request_segments), tuple(response_names),
            {name: i for i, name in enumerate(callers)}, RING_BYTES, n_callers)
        for name, (service, index) in replicas.items():
            spec = specs[service]
            self._contexts[name] = ServiceContext(
                name=name, service_name=service, parallel_index=index - infos[service].first,
                parallelism=spec.parallelism, replica=index, job_id=job.job_id, env_dir=job.env_dir,
                config=dict(job.config), directory=self.directory,
                metrics_segment=self._metrics_segment.name, control=self.backend.control_channel(name))
            self._services[name] = spec.build()
        return self.directory

    def start(self) -> None:
        for name, ctx in self._contexts.items():
            handle = self.backend.spawn(name, service_main, (ctx, self._services[name]))
            self._pids[name] = handle.pid   # kept: a closed process object no longer tells it
            log.info("service replica %s started (pid %s)", name, handle.pid)

    def pids(self) -> dict[str, int | None]:
        return dict(self._pids)

    def request_stop(self) -> None:
        if self.directory is None:
            return
        driver_slot = self.directory.n_callers - 1
        for seg in self._request_segments:
            writer = CallRingWriter(seg, driver_slot, RING_BYTES, self.directory.n_callers)
            writer.write([b""], 0, ringmod.FLAG_CONTROL)
            writer.close()   # commits: wakes the replica if it sleeps

    def wait_stopping(self, timeout: float) -> list[Any]:
        running = {n for n in self._contexts if n in self.backend.handles} - self._ended
        events = self.backend.wait_for(running, timeout)
        self._ended |= {e.task for e in events if isinstance(e, Exited)}
        return events

    def terminate(self, deadline: float, grace: float) -> None:
        for name in self._contexts:
            handle = self.backend.handles.get(name)
            if handle is None:
                continue
            # A fired sentinel can precede the reaping by a moment: join briefly before calling it stuck.
            handle.join(max(deadline - time.monotonic(), 0.05))
            if handle.is_alive():
                log.warning("service replica %s (pid %s) did not stop within %.1fs; sending SIGTERM", name,
                            handle.pid, max(grace, 0.0))
                handle.terminate()

    def read_counters(self) -> np.ndarray:
        seg = self._metrics_segment
        n = self._n_replicas
        if seg is None or seg._mmap is None or n == 0:
            return np.zeros((n, len(METRIC_FIELDS)))
        view = np.ndarray((n, len(METRIC_FIELDS)), dtype=np.float64, buffer=seg.buf)
        rows = view.copy()
        del view
        return rows
