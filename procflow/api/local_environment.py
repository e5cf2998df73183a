"""LocalEnvironment: one OS process per task on this machine, shared-memory rings between them.

`executor="inline"` runs the same graph in the driver process instead (see backends/inline), for
debugging with pdb and measuring coverage; `task_factory=` plugs in another way to start tasks (see
runtime/task/factory.py).
"""

from __future__ import annotations

import os
from typing import Any

from procflow.api.environment import BaseEnvironment
from procflow.backends.local.process_factory import ProcessFactory
from procflow.graph.execution_graph import ExecutionGraph
from procflow.runtime.dispatcher import Dispatcher
from procflow.runtime.job import Job
from procflow.runtime.task.factory import TaskFactory
from procflow.runtime.task.main_guard import check_main_guard

EXECUTORS = ("process", "inline")


class LocalEnvironment(BaseEnvironment):
    backend = "local"

    def __init__(self, name: str = "procflow", config: dict[str, Any] | None = None, *,
                 env_dir: str | os.PathLike | None = None, start_method: str = "fork",
                 task_factory: Any = None, executor: str = "process") -> None:
        super().__init__(name, config, env_dir=env_dir, start_method=start_method)
        self._defers_interrupts_while_starting = executor == "process"
        if self.config["queue"] == "ray":
            raise ValueError("queue='ray' needs RayEnvironment; LocalEnvironment supports 'shm' and 'mp'")
        if executor not in EXECUTORS:
            raise ValueError(f"unknown executor {executor!r}; LocalEnvironment has {', '.join(map(repr, EXECUTORS))}"
                             " (one process per task, or the whole graph in this process for debugging)")
        if task_factory is not None:
            if executor == "inline":
                raise ValueError("task_factory= and executor='inline' do not mix: the inline executor starts "
                                 "no tasks. Instead, drop one of them")
            _check_factory(task_factory)
        self.executor = executor
        self.task_factory = task_factory or ProcessFactory(start_method)

    def _launch(self, graph: ExecutionGraph) -> Job:
        if self.executor == "inline":
            return self._launch_inline(graph)
        # Before anything is created: an unguarded main module under spawn fails here, once, not in
        # every task (see main_guard.py).
        check_main_guard(getattr(self.task_factory, "start_method", self.start_method))
        dispatcher = Dispatcher(graph, config=self.config, env_dir=self.env_dir, factory=self.task_factory,
                                collectors=self._collectors, services=self.services)
        try:
            dispatcher.prepare()
            if getattr(self.task_factory, "start_method", self.start_method) != "fork":
                _check_shippable(dispatcher)
        except BaseException:
            dispatcher.cleanup()
            dispatcher._close_log()
            raise
        dispatcher.start()
        return Job(dispatcher)

    def _launch_inline(self, graph: ExecutionGraph) -> Job:
        """Runs the job to its end right here, then returns it finished (or failed: wait() raises)."""
        from procflow.backends.inline.executor import InlineExecutor

        if self.services:
            raise ValueError(f"executor='inline' cannot run services yet (registered: {sorted(self.services)}); "
                             "use executor='process'")
        executor = InlineExecutor(graph, config=self.config, env_dir=self.env_dir, collectors=self._collectors)
        try:
            executor.prepare()
        except BaseException:
            executor.cleanup()
            raise
        executor.run()
        return Job(executor)  # type: ignore[arg-type]  # the executor offers what Job uses


def _check_factory(factory: Any) -> None:
    missing = [m for m in ("start_method", "control_pipe", "start") if not hasattr(factory, m)]
    if missing or not isinstance(factory, TaskFactory):
        raise TypeError(f"task_factory must implement procflow.runtime.task.factory.TaskFactory; "
                        f"{type(factory).__name__} lacks {', '.join(missing) or 'a callable start/control_pipe'}")


def _check_shippable(dispatcher: Dispatcher) -> None:
    """Under spawn every function is pickled (with dill) as built, with the state its constructor made:
    find the one that can't be, after prepare() built them and before any process starts."""
    import dill

    seen: set[str] = set()
    for name, ctx in dispatcher.contexts.items():
        operator = ctx.operator_name
        if operator in seen:
            continue
        seen.add(operator)
        things = [("function", dispatcher.functions[name])]
        for out in ctx.outputs:
            if out.key_selector is not None:
                things.append((f"key selector towards {out.target!r}", out.key_selector))
            if out.partitioner is not None:
                things.append((f"partitioner towards {out.target!r}", out.partitioner))
        for what, obj in things:
            try:
                dill.dumps(obj)
            except Exception as exc:
                raise TypeError(
                    f"the {what} of operator {operator!r} cannot be shipped to a spawned process: {exc}. "
                    "Under start_method='spawn' every function and its constructor arguments must be "
                    "picklable; instead, create unpicklable resources (files, locks, sockets, "
                    "generators) in open(), or use start_method='fork'.") from exc
