"""TaskFactory: the plug-in point through which the local backend starts task processes.

The LocalBackend (backends/local/backend.py, the process half of runtime/backend.py's Backend) asks the
factory for one control pipe per task (`control_pipe()`), then to start each task (`start(name, target,
args)`: run `target(*args)` somewhere), and from then on only uses the returned handle: a `sentinel` to
wait on, the `pid`, `exitcode`, and `terminate()` / `kill()` / `join()`.

    LocalEnvironment(task_factory=MyFactory())   # any object with these members; checked up front

The process factory (backends/local/process_factory.py) forks OS processes (the Ray and inline backends
start tasks their own way, through their Backend). A user factory can wrap it (to record, pin CPUs, set
the environment), or start tasks some other way. `target` is procflow's task entry point: it expects its
own process (it installs signal handlers and ends with `os._exit`), so a factory must give each task a
process of its own. An optional
`mp_context` attribute (a multiprocessing context) is used for `queue="mp"` channels when present.
`LocalEnvironment(executor="inline")` is the way to run everything in the driver, for debugging.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class TaskHandle(Protocol):
    name: str

    @property
    def sentinel(self) -> Any: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def exitcode(self) -> int | None: ...

    def is_alive(self) -> bool: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...


@runtime_checkable
class TaskFactory(Protocol):
    """Starts the process (or actor, or thread) that runs `target(*args)` for one task."""

    start_method: str

    def control_pipe(self) -> tuple[Any, Any]:
        """(reader for the driver, writer for the task)."""
        ...

    def start(self, name: str, target: Callable[..., None], args: tuple) -> TaskHandle: ...
