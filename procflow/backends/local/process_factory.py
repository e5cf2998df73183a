"""The local backend's TaskFactory: one `multiprocess` process per task (fork by default, or spawn)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import multiprocess


class ProcessFactory:
    def __init__(self, start_method: str = "fork") -> None:
        self.start_method = start_method
        self.mp_context = multiprocess.get_context(start_method)

    def control_pipe(self) -> tuple[Any, Any]:
        return self.mp_context.Pipe(duplex=False)

    def start(self, name: str, target: Callable[..., None], args: tuple) -> Any:
        process = self.mp_context.Process(target=target, args=args, name=f"procflow:{name}", daemon=False)
        process.start()
        return process
