"""LocalEnvironment: one OS process per task on this machine, shared-memory rings between them.

`checkpoint_dir=` turns on checkpoints (runtime/checkpoint/): every `checkpoint_interval` seconds (config,
default 30) and on `job.checkpoint()`, each task's state is snapshotted into that folder, and
`env.submit(resume=True)` continues a job that was killed from its latest complete checkpoint, with
exactly-once output to file sinks. Process executor and queue="shm" only, for now.

`executor="inline"` runs the same graph in the driver process instead (backends/inline), for debugging
with pdb and measuring coverage; `task_factory=` plugs in another way to start tasks (see
runtime/task/factory.py). Either way the job is run by the one Dispatcher; this class only chooses the
Backend (backends/local or backends/inline).
"""

from __future__ import annotations

import os
from typing import Any

from procflow.api.environment import BaseEnvironment
from procflow.backends.inline.executor import InlineBackend
from procflow.backends.local.backend import LocalBackend
from procflow.backends.local.process_factory import ProcessFactory
from procflow.runtime.backend import Backend
from procflow.runtime.task.factory import TaskFactory

EXECUTORS = ("process", "inline")


class LocalEnvironment(BaseEnvironment):
    backend = "local"

    def __init__(self, name: str = "procflow", config: dict[str, Any] | None = None, *,
                 env_dir: str | os.PathLike[str] | None = None, start_method: str = "fork",
                 task_factory: Any = None, executor: str = "process",
                 checkpoint_dir: str | os.PathLike[str] | None = None) -> None:
        super().__init__(name, config, env_dir=env_dir, start_method=start_method)
        self.checkpoint_dir = os.path.abspath(os.fspath(checkpoint_dir)) if checkpoint_dir is not None else None
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
        self.task_factory: TaskFactory = task_factory or ProcessFactory(start_method)

    def _backend(self) -> Backend:
        if self.executor == "inline":
            # Runs the job to its end inside submit(), then returns it finished (or failed: wait() raises).
            return InlineBackend()
        return LocalBackend(self.task_factory)


def _check_factory(factory: Any) -> None:
    missing = [m for m in ("start_method", "control_pipe", "start") if not hasattr(factory, m)]
    if missing or not isinstance(factory, TaskFactory):
        raise TypeError(f"task_factory must implement procflow.runtime.task.factory.TaskFactory; "
                        f"{type(factory).__name__} lacks {', '.join(missing) or 'a callable start/control_pipe'}")
