"""The ServiceManager is backend-neutral: it runs a service's lifecycle through a ServiceHost and reaches
the Dispatcher only through `fail()` / `on_message()`. Driven here by a scripted host, in this process."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np

from procflow import BaseService
from procflow.core.errors import JobFailedError
from procflow.core.service import ServiceSpec
from procflow.runtime.backend import Exited, ServiceHost
from procflow.runtime.control import ErrorReport, Failed, ServiceReady, ServiceStopped
from procflow.runtime.service.manager import ServiceManager


class Echo(BaseService):
    def process(self, x: Any) -> Any:
        return x


class ScriptedHost:
    def __init__(self, stopping: list[list[Any]]) -> None:
        self.stopping = stopping
        self.calls: list[Any] = []

    def prepare(self, specs: Mapping[str, ServiceSpec], replicas: Mapping[str, tuple[str, int]],
                callers: list[str]) -> str:
        self.calls.append(("prepare", dict(replicas), list(callers)))
        return "directory"

    def start(self) -> None:
        self.calls.append("start")

    def request_stop(self) -> None:
        self.calls.append("request_stop")

    def wait_stopping(self, timeout: float) -> list[Any]:
        return self.stopping.pop(0) if self.stopping else []

    def terminate(self, deadline: float, grace: float) -> None:
        self.calls.append("terminate")

    def read_counters(self) -> np.ndarray:
        return np.array([[3.0, 1.0, 0.5], [2.0, 0.0, 0.25]])

    def pids(self) -> dict[str, int | None]:
        return {"echo[0]": 11, "echo[1]": 12}


class Owner:
    def __init__(self) -> None:
        self.manager = SimpleNamespace(failure=None)
        self.failures: list[JobFailedError] = []
        self.messages: list[Any] = []

    def fail(self, error: JobFailedError) -> None:
        self.failures.append(error)
        self.manager.failure = error

    def on_message(self, msg: Any) -> None:
        self.messages.append(msg)


def make(stopping: list[list[Any]] | None = None) -> tuple[ServiceManager, ScriptedHost, Owner]:
    host = ScriptedHost(stopping or [])
    owner = Owner()
    checked: ServiceHost = host
    manager = ServiceManager(owner, {"echo": ServiceSpec("echo", Echo, (), {}, 2)}, checked)
    return manager, host, owner


def test_replicas_are_named_and_prepared_by_the_host():
    manager, host, _ = make()
    assert manager.prepare(["map_0"]) == "directory" == manager.directory
    assert host.calls[0] == ("prepare", {"echo[0]": ("echo", 0), "echo[1]": ("echo", 1)},
                             ["map_0", "echo[0]", "echo[1]"])
    assert manager.owns("echo[1]") and not manager.owns("map_0")


def test_readiness_comes_from_typed_messages():
    manager, _, _ = make()
    manager.prepare([])
    manager.on_message(ServiceReady("echo[0]", 11))
    assert not manager.all_ready
    manager.on_message(ServiceReady("echo[1]", 12))
    assert manager.all_ready


def test_a_replica_that_exits_on_its_own_fails_the_job_through_the_owner():
    manager, _, owner = make()
    manager.prepare([])
    manager.on_exit(Exited("echo[1]", -9))
    assert len(owner.failures) == 1
    assert "service replica echo[1] (pid 12)" in str(owner.failures[0])
    assert "SIGKILL" in str(owner.failures[0])


def test_stop_all_waits_for_every_replica_then_terminates_and_keeps_the_counters():
    report = ErrorReport("echo[1]", 12, "stop", None, "OSError", "disk", "tb")
    manager, host, owner = make([[ServiceStopped("echo[0]", {"calls": 3})], [Failed(report), Exited("echo[1]", 1)]])
    manager.prepare([])
    manager.stop_all(grace=5.0)
    assert host.calls[1:] == ["request_stop", "terminate"]
    assert [type(m) for m in owner.messages] == [Failed]   # the failure report goes to the Dispatcher
    manager.on_exit(Exited("echo[0]", 0))   # exits while stopping are expected
    assert owner.failures == []
    metrics = manager.metrics()["echo"]
    assert (metrics["replicas"], metrics["calls"], metrics["errors"], metrics["busy_s"]) == (2, 5, 1, 0.75)
    assert metrics["per_replica"]["echo[1]"]["pid"] == 12
