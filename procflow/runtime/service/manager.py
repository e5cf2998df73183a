"""ServiceManager: the driver's side of services, the same on every backend. The Dispatcher calls it at
fixed points; what differs by backend is the ServiceHost's (runtime/backend.py describes that seam):

    prepare(callers)  (before task contexts) name every replica (`<service>[<i>]`); the host builds the
                      service objects and the directory that goes into every TaskContext
    start()           (before the tasks) the host starts every replica
    monitor           ServiceReady / ServiceStopped / Failed arrive through the backend like tasks'
                      messages; the Dispatcher hands the first two here. A replica that exits on its
                      own (`Exited` without ServiceStopped) fails the job
    stop_all(grace)   (cleanup, after every task ended) the host asks every replica to stop; this waits
                      for their ServiceStopped (a grace period, 0.5 s when the job failed), then the host
                      ends the ones still running; the final counters are kept for metrics()

The manager reaches the Dispatcher through a narrow interface (`fail(error)`, `manager`, `job_id`): it
never touches the Dispatcher's private state, and imports nothing of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from procflow.core.errors import JobFailedError, describe_exit
from procflow.core.service import ServiceSpec
from procflow.runtime.backend import Exited, ServiceHost
from procflow.runtime.control import Failed, ServiceReady, ServiceStopped
from procflow.runtime.service.replica import METRIC_FIELDS

log = logging.getLogger("procflow.dispatcher")


class ServiceOwner(Protocol):
    """What the service manager needs of the Dispatcher."""

    manager: Any

    def fail(self, error: JobFailedError) -> None: ...

    def on_message(self, msg: Any) -> None: ...


class ServiceManager:
    def __init__(self, owner: ServiceOwner, specs: Mapping[str, ServiceSpec], host: ServiceHost) -> None:
        self.owner = owner
        self.specs = dict(specs)
        self.host = host
        self.directory: Any = None
        self._replica_of: dict[str, tuple[str, int]] = {}   # replica name -> (service, global index)
        self._ready: set[str] = set()
        self._ready_pids: dict[str, int] = {}   # from ServiceReady: where the host cannot tell (Ray)
        self._stopped: dict[str, dict] = {}
        self._final: np.ndarray | None = None
        self._stopping = False

    # -- preparing ---------------------------------------------------------------------------------

    def prepare(self, tasks: list[str]) -> Any:
        """Name the replicas and let the host build them; returns the directory tasks connect through.
        Callers, in order: every task, every replica, then the driver (which only ever sends stops)."""
        for spec in self.specs.values():
            first = len(self._replica_of)
            for i in range(spec.parallelism):
                self._replica_of[f"{spec.name}[{i}]"] = (spec.name, first + i)
        callers = [*tasks, *self._replica_of]
        self.directory = self.host.prepare(self.specs, dict(self._replica_of), callers)
        log.info("services prepared: %s (%d replicas, %d callers)", sorted(self.specs), len(self._replica_of),
                 len(callers))
        return self.directory

    # -- running -----------------------------------------------------------------------------------

    def start(self) -> None:
        self.host.start()

    def owns(self, name: str) -> bool:
        return name in self._replica_of

    def on_message(self, msg: ServiceReady | ServiceStopped) -> None:
        if isinstance(msg, ServiceReady):
            self._ready.add(msg.replica)
            self._ready_pids[msg.replica] = msg.pid
            log.info("service replica %s ready (pid %s)", msg.replica, msg.pid)
        else:
            self._stopped[msg.replica] = msg.metrics
            log.info("service replica %s stopped: %s", msg.replica, msg.metrics)

    @property
    def all_ready(self) -> bool:
        return len(self._ready) == len(self._replica_of)

    def on_exit(self, exited: Exited) -> None:
        name = exited.task
        if name in self._stopped or self._stopping or self.owner.manager.failure is not None:
            return
        pid = self.pids().get(name)
        if exited.exitcode is None and exited.cause is not None:
            how = f"died: {exited.cause}"   # no exit status to read (a Ray actor): what the backend knows
        else:
            how = describe_exit(exited.exitcode)
        self.owner.fail(JobFailedError(
            f"service replica {name} (pid {pid}) {how}; the job was stopped and every task ended", task=name,
            exitcode=exited.exitcode))

    def pids(self) -> dict[str, int | None]:
        """replica -> pid: the host's, else the one its ServiceReady gave."""
        host = self.host.pids()
        return {name: host.get(name) or self._ready_pids.get(name) for name in self._replica_of}

    # -- stopping ----------------------------------------------------------------------------------

    def stop_all(self, grace: float) -> None:
        """Ask every replica to stop; wait for its ServiceStopped (or exit); end the ones that don't."""
        self._stopping = True
        self.host.request_stop()
        failed = self.owner.manager.failure is not None
        deadline = time.monotonic() + (min(grace, 0.5) if failed else grace)
        running = set(self._replica_of) - set(self._stopped)
        while running:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for event in self.host.wait_stopping(left):
                if isinstance(event, Exited):
                    running.discard(event.task)
                elif isinstance(event, ServiceStopped):
                    self.on_message(event)
                    running.discard(event.replica)
                elif isinstance(event, Failed):
                    self.owner.on_message(event)   # the failure report, as for a task
        self.host.terminate(deadline, grace)
        self._final = self.host.read_counters()

    # -- metrics -----------------------------------------------------------------------------------

    def metrics(self) -> dict[str, dict]:
        """Per service: replicas, calls served, errors, seconds busy (summed), and the same per replica."""
        rows = self._final if self._final is not None else self.host.read_counters()
        pids = self.pids()
        out: dict[str, dict] = {}
        for name, (service, index) in self._replica_of.items():
            counts = dict(zip(METRIC_FIELDS, map(float, rows[index]))) if index < len(rows) else {}
            row: dict[str, Any] = {"calls": int(counts.get("calls", 0)), "errors": int(counts.get("errors", 0)),
                                   "busy_s": counts.get("busy_s", 0.0), "pid": pids.get(name)}
            entry = out.setdefault(service, {"replicas": 0, "calls": 0, "errors": 0, "busy_s": 0.0,
                                             "per_replica": {}})
            entry["replicas"] += 1
            for k in ("calls", "errors", "busy_s"):
                entry[k] += row[k]
            entry["per_replica"][name] = row
        return out
