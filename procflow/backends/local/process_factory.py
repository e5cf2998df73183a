"""The local backend's TaskFactory: one `multiprocess` process per task (fork by default, or spawn)."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import multiprocess


class ControlWriter:
    """The task's end of its control pipe: messages go out through the C pickler.

    A multiprocess pipe's send() pickles with dill, a pure-Python pickler: a task's first message took
    0.9 ms of its CPU, and of the 6 ms a task with nothing to do burned between fork and exit, over a
    millisecond went on pickling two small messages. dill stays the fallback for what only it can pack
    (a lambda in a dead letter). The driver's recv() reads either: dill unpickles plain pickles.
    """

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def send(self, message: Any) -> None:
        try:
            data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            self._connection.send(message)
            return
        self._connection.send_bytes(data)

    def close(self) -> None:
        self._connection.close()

    def __getattr__(self, name: str) -> Any:   # fileno, poll, closed, ...: the pipe's own
        if name.startswith("_"):   # not yet set while unpickling (spawn): no lookup on the pipe
            raise AttributeError(name)
        return getattr(self._connection, name)


class ProcessFactory:
    def __init__(self, start_method: str = "fork") -> None:
        self.start_method = start_method
        self.mp_context = multiprocess.get_context(start_method)

    def control_pipe(self) -> tuple[Any, Any]:
        reader, writer = self.mp_context.Pipe(duplex=False)
        return reader, ControlWriter(writer)

    def start(self, name: str, target: Callable[..., None], args: tuple) -> Any:
        process = self.mp_context.Process(target=target, args=args, name=f"procflow:{name}", daemon=False)
        process.start()
        return process
