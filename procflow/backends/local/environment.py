"""LocalEnvironment: one OS process per task on this machine, shared-memory rings between them."""

from __future__ import annotations

import os
from typing import Any

from procflow.api.environment import BaseEnvironment
from procflow.backends.local.process_factory import ProcessFactory
from procflow.graph.execution_graph import ExecutionGraph
from procflow.runtime.dispatcher import Dispatcher
from procflow.runtime.job import Job


class LocalEnvironment(BaseEnvironment):
    backend = "local"

    def __init__(self, name: str = "procflow", config: dict[str, Any] | None = None, *,
                 env_dir: str | os.PathLike | None = None, start_method: str = "fork",
                 task_factory: Any = None) -> None:
        super().__init__(name, config, env_dir=env_dir, start_method=start_method)
        if self.config["queue"] == "ray":
            raise ValueError("queue='ray' needs RayEnvironment; LocalEnvironment supports 'shm' and 'mp'")
        self.task_factory = task_factory or ProcessFactory(start_method)

    def _launch(self, graph: ExecutionGraph) -> Job:
        if self.start_method != "fork":
            _check_shippable(graph)
        dispatcher = Dispatcher(graph, config=self.config, env_dir=self.env_dir, factory=self.task_factory,
                                collectors=self._collectors, services=self.services)
        try:
            dispatcher.prepare()
        except BaseException:
            dispatcher.cleanup()
            dispatcher._close_log()
            raise
        dispatcher.start()
        return Job(dispatcher)


def _check_shippable(graph: ExecutionGraph) -> None:
    """Under spawn every function is pickled (with dill); find the one that can't be, before starting."""
    import dill

    for t in graph.transformations.values():
        things = [("function", t.function)]
        for inp in t.inputs:
            if inp.partitioning.key_selector is not None:
                things.append(("key selector", inp.partitioning.key_selector))
            if inp.partitioning.partitioner is not None:
                things.append(("partitioner", inp.partitioning.partitioner))
        for what, obj in things:
            try:
                dill.dumps(obj)
            except Exception as exc:
                raise TypeError(
                    f"the {what} of operator {t.name!r} cannot be shipped to a spawned process: {exc}. "
                    "Under start_method='spawn' every function and its constructor arguments must be "
                    "picklable; instead, create unpicklable resources (files, locks, sockets, "
                    "generators) in open(), or use start_method='fork'.") from exc
