"""TaskFactory: the plug-in point through which a backend runs tasks.

The Dispatcher asks the factory to start each task and then only uses the returned handle: a `sentinel`
to wait on, the `pid`, `exitcode`, and `terminate()` / `kill()` / `join()`. The process factory (local
backend) forks OS processes; the Ray backend starts actors; a user can plug in another, for example one
running tasks as threads for I/O-bound work.
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
