"""The one Dispatcher, driven through a scripted Backend in this process (no task starts): contexts built
once, every control message handled in one place, the failure report, and the cleanup order."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from procflow import LocalEnvironment
from procflow.core.enums import ControlRequest, JobStatus
from procflow.core.errors import JobFailedError
from procflow.runtime.backend import Backend, Exited, JobSetup, TaskStart
from procflow.runtime.context.task_context import TaskContext
from procflow.runtime.control import DeadLetter, ErrorReport, Failed, Ready, Results, ServiceReady, Stopped
from procflow.runtime.dispatcher import Dispatcher
from procflow.runtime.job_control import FIELDS


class FakeControl:
    def __init__(self, n: int, calls: list[str]) -> None:
        self.counters = np.zeros((n, len(FIELDS)))
        self.closed = False
        self._calls = calls   # the backend's, so the order of start and release shows in one list

    def release_sources(self) -> None:
        self._calls.append("release_sources")

    def request_stop(self) -> None:
        self._calls.append("request_stop")

    def snapshot(self) -> dict[int, dict[str, float]] | None:
        return None if self.closed else {i: dict(zip(FIELDS, row)) for i, row in enumerate(self.counters)}

    def split_owners(self, slot: int) -> list[int | None] | None:
        return None   # the scripted tasks claim no splits

    def close(self) -> None:
        self.closed = True


@dataclass
class Handle:
    pid: int


class ScriptedBackend:
    """Each wait() returns the next list of events of `script`; every call is recorded in `calls`."""

    kind = "scripted"
    measures_cpu = True
    watches_stalls = False
    collects_in_driver = False
    runs_in_driver_thread = True
    broken_channel_grace = 0.0
    context_class = TaskContext

    def __init__(self, script: Callable[[ScriptedBackend], list[list[Any]]]) -> None:
        self.script = script
        self.calls: list[str] = []
        self.steps: list[list[Any]] = []
        self.control: FakeControl | None = None
        self.started: dict[str, TaskStart] = {}

    def bind(self, events: Any) -> None:
        self.calls.append("bind")

    def preflight(self) -> None:
        self.calls.append("preflight")

    def open_job(self, job: JobSetup) -> FakeControl:
        self.calls.append("open_job")
        self.control = FakeControl(len(job.graph.nodes), self.calls)
        return self.control

    def check_capacity(self, consumers: list[Any], services: Mapping[str, Any], job_control: Any) -> None:
        self.calls.append("check_capacity")

    def make_inbox(self, node: Any) -> str:
        return f"inbox:{node.name}"

    def edge(self, inbox: Any, edge: Any) -> str:
        return f"{inbox}#{edge.slot}"

    def control_channel(self, task: str) -> str:
        return f"control:{task}"

    def job_segment(self) -> str:
        return "segment"

    def service_host(self) -> None:
        return None

    def stall_probes(self) -> dict[str, Any]:
        return {}

    def start(self, tasks: Mapping[str, TaskStart], before: Callable[[], None]) -> dict[str, Handle]:
        before()
        self.calls.append("start")
        self.started = dict(tasks)
        self.steps = self.script(self)
        return {name: Handle(1000 + i) for i, name in enumerate(tasks)}

    def wait(self, timeout: float | None) -> list[Any]:
        return self.steps.pop(0) if self.steps else []

    def wake(self) -> None:
        pass

    def failure_hint(self, report: ErrorReport) -> str:
        return ". Hint from the backend"

    def exit_error(self, exited: Exited, ready: bool, progress: str) -> JobFailedError:
        return JobFailedError(f"task {exited.task} vanished with code {exited.exitcode}, {progress}",
                              task=exited.task)

    def stop_tasks(self, failed: bool, grace: float) -> None:
        self.calls.append(f"stop_tasks(failed={failed})")

    def close_control(self) -> None:
        self.calls.append("close_control")

    def close_channels(self) -> None:
        self.calls.append("close_channels")

    def close_job_control(self) -> None:
        self.calls.append("close_job_control")


def run(script: Callable[[ScriptedBackend], list[list[Any]]], env_dir: str,
        collect: bool = False) -> tuple[Dispatcher, ScriptedBackend, Any]:
    env = LocalEnvironment("scripted", env_dir=env_dir)
    # parallelism=1: a source of its own, feeding both maps over channels (it would follow them, chained)
    stream = env.from_batch([1, 2, 3], parallelism=1).map(lambda r: r, parallelism=2)
    result = stream.collect() if collect else None
    backend = ScriptedBackend(script)
    checked: Backend = backend   # the scripted backend is a Backend as far as a type checker is concerned
    dispatcher = Dispatcher(env.compile(), config=env.config, env_dir=env.env_dir, backend=checked,
                            collectors=env._collectors)
    dispatcher.prepare()
    dispatcher.start()
    return dispatcher, backend, result


def every_node(b: ScriptedBackend) -> list[str]:
    """The nodes of the started tasks, the operators chained behind each included."""
    return [name for task in b.started.values() for name in task.names]


def ready_all(b: ScriptedBackend) -> list[Any]:
    return [Ready(name, 1000 + i) for i, name in enumerate(every_node(b))]


def stop_all(b: ScriptedBackend) -> list[Any]:
    return [Stopped(name, {"records_in": 1}) for name in every_node(b)]


def test_every_context_is_built_by_the_dispatcher_from_the_backends_parts(env_dir):
    dispatcher, backend, _ = run(lambda b: [ready_all(b), stop_all(b)], env_dir)
    ctx = dispatcher.contexts["map_1"]
    assert (ctx.inbox, ctx.control, ctx.job_segment) == ("inbox:map_1", "control:map_1", "segment")
    assert dispatcher.contexts["batch_0"].outputs[0].edges == ["inbox:map_0#0", "inbox:map_1#0"]
    assert ctx.config == dict(dispatcher.config) and ctx.config is not dispatcher.config
    assert set(backend.started) == set(dispatcher.contexts) == {"batch_0", "map_0", "map_1"}


def test_a_job_runs_to_finished_through_the_typed_messages(env_dir):
    entries = [{"record": 2, "error": "ValueError"}]
    dispatcher, backend, result = run(
        lambda b: [ready_all(b), [Results("collect", [1, 2]), DeadLetter("map_0", entries)], stop_all(b)],
        env_dir, collect=True)
    assert dispatcher.manager.status is JobStatus.FINISHED
    assert dispatcher.manager.dead_letters == entries
    assert result.results() == [1, 2]
    assert backend.calls.index("release_sources") > backend.calls.index("start")
    assert [m.pid for m in dispatcher.manager.tasks.values()][:3] == [1000, 1001, 1002]


def test_cleanup_runs_its_steps_in_one_fixed_order(env_dir):
    _, backend, _ = run(lambda b: [ready_all(b), stop_all(b)], env_dir)
    assert backend.calls[backend.calls.index("stop_tasks(failed=False)"):] == [
        "stop_tasks(failed=False)", "close_control", "close_channels", "close_job_control"]
    assert backend.control is not None and not backend.control.closed   # the backend closes its own


def test_a_failed_report_fails_the_job_with_the_backends_hint_and_writes_error_log(env_dir):
    report = ErrorReport("map_0", 7, "map(<lambda>)", "3", "ValueError", "bad record", "Traceback: here")
    dispatcher, backend, _ = run(lambda b: [ready_all(b), [Failed(report)]], env_dir)
    failure = dispatcher.manager.failure
    assert dispatcher.manager.status is JobStatus.FAILED
    assert "task map_0 (pid 7) failed in map(<lambda>) on record 3: ValueError: bad record. Hint" in str(failure)
    assert "stop_tasks(failed=True)" in backend.calls
    with open(os.path.join(dispatcher.job_dir, "Error.log")) as f:
        assert "Traceback: here" in f.read()


def test_a_live_cause_is_chained_as_it_is(env_dir):
    report = ErrorReport("map_0", 7, "map", None, "KeyError", "'k'", "tb")
    cause = KeyError("k")
    dispatcher, _, _ = run(lambda b: [[Failed(report, cause=cause)]], env_dir)
    assert dispatcher.manager.failure is not None and dispatcher.manager.failure.__cause__ is cause


def test_an_exit_without_stopped_asks_the_backend_for_the_error(env_dir):
    dispatcher, _, _ = run(lambda b: [ready_all(b), [Stopped("batch_0"), Exited("batch_0", 0),
                                                     Exited("map_1", -9)]], env_dir)
    assert "task map_1 vanished with code -9, its last published counters showed 0 record(s) in" in str(
        dispatcher.manager.failure)
    assert dispatcher.manager.tasks["map_1"].exitcode == -9


def chained_run(script: Callable[[ScriptedBackend], list[list[Any]]],
                env_dir: str) -> tuple[Dispatcher, ScriptedBackend]:
    """batch -> map -> sink, each of parallelism 1: one chain, one task."""
    env = LocalEnvironment("scripted", env_dir=env_dir)
    env.from_batch([1, 2]).map(lambda r: r).sink(lambda r: None)
    backend = ScriptedBackend(script)
    dispatcher = Dispatcher(env.compile(), config=env.config, env_dir=env.env_dir, backend=backend,
                            collectors={})
    dispatcher.prepare()
    dispatcher.start()
    return dispatcher, backend


def test_a_chain_is_one_task_whose_operators_keep_their_own_contexts(env_dir):
    from procflow.runtime.task.chain import ChainLink

    dispatcher, backend = chained_run(lambda b: [ready_all(b), stop_all(b)], env_dir)
    assert list(backend.started) == ["batch_0"]
    assert backend.started["batch_0"].names == ("batch_0", "map_0", "sink_0")
    contexts = dispatcher.contexts
    assert set(contexts) == {"batch_0", "map_0", "sink_0"}
    # fed by call: no inbox for the members, a ChainLink where a channel would be, one control channel
    assert [ctx.inbox for ctx in contexts.values()] == [None, None, None]
    link, = contexts["batch_0"].outputs[0].edges
    assert isinstance(link, ChainLink) and link.dst == "map_0"
    assert {ctx.control for ctx in contexts.values()} == {"control:batch_0"}
    assert [ctx.task_slot for ctx in contexts.values()] == [0, 1, 2]   # a counters row each
    assert dispatcher.manager.status is JobStatus.FINISHED
    assert list(dispatcher.handles) == ["batch_0"]


def test_the_exit_of_a_chains_task_fails_the_operators_that_did_not_stop(env_dir):
    dispatcher, _ = chained_run(lambda b: [ready_all(b), [Stopped("sink_0"), Exited("batch_0", -9)]], env_dir)
    failure = dispatcher.manager.failure
    assert failure is not None and failure.task == "batch_0"
    assert [t.exitcode for t in dispatcher.manager.tasks.values()] == [-9, -9, -9]


def test_chaining_false_gives_every_operator_instance_a_task(env_dir):
    env = LocalEnvironment("scripted", config={"chaining": False}, env_dir=env_dir)
    env.from_batch([1, 2]).map(lambda r: r).sink(lambda r: None)
    backend = ScriptedBackend(lambda b: [ready_all(b), stop_all(b)])
    dispatcher = Dispatcher(env.compile(), config=env.config, env_dir=env.env_dir, backend=backend,
                            collectors={})
    dispatcher.prepare()
    dispatcher.start()
    assert list(backend.started) == ["batch_0", "map_0", "sink_0"]
    assert all(not t.chained for t in backend.started.values())


@pytest.mark.parametrize("request_, status", [(ControlRequest.STOP, JobStatus.STOPPED),
                                              (ControlRequest.KILL, JobStatus.KILLED)])
def test_requests_reach_the_backend_through_the_monitor(env_dir, request_, status):
    holder: dict[str, Dispatcher] = {}

    def script(b: ScriptedBackend) -> list[list[Any]]:
        class Ask(list):   # an event list that files a request as the monitor reads it
            def __iter__(self):
                holder["d"].request(request_, "by the test")
                return super().__iter__()
        return [ready_all(b), Ask(), stop_all(b)]

    env = LocalEnvironment("scripted", env_dir=env_dir)
    env.from_batch([1]).map(lambda r: r).sink(lambda r: None)
    backend = ScriptedBackend(script)
    dispatcher = Dispatcher(env.compile(), config=env.config, env_dir=env.env_dir, backend=backend,
                            collectors={})
    holder["d"] = dispatcher
    dispatcher.prepare()
    dispatcher.start()
    assert dispatcher.manager.status is status
    assert ("request_stop" in backend.calls) == (request_ is ControlRequest.STOP)


def test_a_backend_without_a_service_host_refuses_services_by_name(env_dir):
    from procflow import BaseService

    class Echo(BaseService):
        def process(self, x: Any) -> Any:
            return x

    env = LocalEnvironment("scripted", env_dir=env_dir)
    env.register_service("echo", Echo)
    env.from_batch([1]).sink(lambda r: None)
    dispatcher = Dispatcher(env.compile(), config=env.config, env_dir=env.env_dir,
                            backend=ScriptedBackend(lambda b: []), collectors={}, services=env.services)
    with pytest.raises(ValueError, match=r"the scripted backend cannot run services yet \(registered: \['echo'\]\)"):
        dispatcher.prepare()
    dispatcher.cleanup()
    dispatcher.close_log()


class OneReplicaHost:
    """A ServiceHost of one replica whose life is told by the script (what a Ray host reports)."""

    def prepare(self, specs: Any, replicas: Any, callers: list[str]) -> str:
        return "directory"

    def start(self) -> None:
        pass

    def request_stop(self) -> None:
        pass

    def wait_stopping(self, timeout: float) -> list[Any]:
        return [Exited("echo[0]")]

    def terminate(self, deadline: float, grace: float) -> None:
        pass

    def read_counters(self) -> np.ndarray:
        return np.zeros((1, 3))

    def pids(self) -> dict[str, int | None]:
        return {}


def test_a_callers_lost_replica_waits_for_the_replicas_own_death_to_name_it(env_dir):
    """Issue 17: on Ray, a caller whose replica's actor died raises ServiceUnavailableError, and its task
    fails, usually before the replica's death arrives. Like a broken channel, that report waits the
    backend's grace, so that the job fails naming the replica (with the pid of its ServiceReady)."""
    from procflow import BaseService

    class Echo(BaseService):
        def process(self, x: Any) -> Any:
            return x

    class WithServices(ScriptedBackend):
        broken_channel_grace = 30.0

        def service_host(self) -> Any:
            return OneReplicaHost()

    report = ErrorReport("map_0", 7, "map", "1", "ServiceUnavailableError", "replica 0 died", "tb")
    env = LocalEnvironment("scripted", env_dir=env_dir)
    env.register_service("echo", Echo)
    env.from_batch([1]).map(lambda r: r).sink(lambda r: None)
    backend = WithServices(lambda b: [ready_all(b) + [ServiceReady("echo[0]", 99)], [Failed(report)],
                                      [Exited("echo[0]", cause="the actor died")]])
    dispatcher = Dispatcher(env.compile(), config=env.config, env_dir=env.env_dir, backend=backend,
                            collectors={}, services=env.services)
    dispatcher.prepare()
    dispatcher.start()
    failure = dispatcher.manager.failure
    assert failure is not None and failure.task == "echo[0]"
    assert "service replica echo[0] (pid 99) died: the actor died" in str(failure)


@pytest.mark.parametrize("request_, status", [(ControlRequest.STOP, JobStatus.STOPPED),
                                              (ControlRequest.KILL, JobStatus.KILLED)])
def test_the_inline_backend_applies_requests_between_chunks(env_dir, request_, status):
    """An unbounded source on the inline backend ends on a stop request (everything in flight drains)
    and a kill ends the job at once: both filed while the source runs, in the caller's thread."""
    from procflow.backends.inline.executor import InlineBackend

    holder: dict[str, Dispatcher] = {}
    seen: list[int] = []

    counter = itertools.count(1)

    def sink(record: int) -> None:
        seen.append(record)
        if record == 5000:
            holder["d"].request(request_, "by the test")

    env = LocalEnvironment("inline-requests", env_dir=env_dir)
    env.from_source(lambda: next(counter)).sink(sink)
    dispatcher = Dispatcher(env.compile(), config=env.config, env_dir=env.env_dir, backend=InlineBackend(),
                            collectors={})
    holder["d"] = dispatcher
    dispatcher.prepare()
    dispatcher.start()
    assert dispatcher.manager.status is status
    assert 5000 <= len(seen) < 5000 + 2 * 1024   # within a chunk or two of the request
