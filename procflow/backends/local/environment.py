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
        dispatcher = Dispatcher(graph, config=self.config, env_dir=self.env_dir, factory=self.task_factory,
                                collectors=self._collectors, services=self.services)
        try:
            dispatcher.prepare()
            if self.start_method != "fork":
                _check_shippable(dispatcher)
        except BaseException:
            dispatcher.cleanup()
            dispatcher._close_log()
            raise
        dispatcher.start()
        return Job(dispatcher)


def _check_shippable(dispatcher: Dispatcher) -> None:
    """Under spawn every function is pickled (with dill); find the one that can't be, before starting.

    The objects checked are the very ones the tasks will receive: the functions as the driver built them
    (a constructor may create unpicklable state) and the built key selectors and partitioners.
    """
    import dill

    for name, function in dispatcher.functions.items():
        node = dispatcher.graph.nodes[name]
        things = [("function", function)]
        for spec in dispatcher.contexts[name].outputs:
            if spec.key_selector is not None:
                things.append((f"key selector towards {spec.target!r}", spec.key_selector))
            if spec.partitioner is not None:
                things.append((f"partitioner towards {spec.target!r}", spec.partitioner))
        for what, obj in things:
            try:
                dill.dumps(obj)
            except Exception as exc:
                raise TypeError(
                    f"the {what} of operator {node.operator!r} cannot be shipped to a spawned process: {exc}. "
                    "Under start_method='spawn' every function and its constructor arguments must be "
                    "picklable; instead, create unpicklable resources (files, locks, sockets, "
                    "generators) in open(), or use start_method='fork'.") from exc
