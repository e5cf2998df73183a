"""Operators adapt a user function to the task loop: `process(packet)` in, `emit(record)` out.

The task sets `ctx.current` to the packet being processed before calling `process`, so an emitted record
inherits that packet's key, and an error can name the record.
"""

from __future__ import annotations

from typing import Any

from procflow.api.functions import BaseFunction
from procflow.runtime.context.task_context import TaskContext


class Operator:
    def __init__(self, function: BaseFunction, ctx: TaskContext) -> None:
        self.function = function
        self.ctx = ctx
        self.router = None

    def open(self) -> None:
        self.router = self.ctx.router
        self.function.ctx = self.ctx
        self.function.open()

    def emit(self, record: Any) -> None:
        packet = self.ctx.current
        if packet is not None:
            self.router.route(record, packet.partition_key, packet.keyed)
        else:
            self.router.route(record, None, False)

    def process(self, packet: Any) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Called whenever the task flushes its outputs (idle, timer, end)."""

    def finish(self, signal: Any) -> None:
        """End of every input: let the function flush state, then close it."""
        self.ctx.current = None
        handler = getattr(self.function, "handle_stop_signal", None)
        if handler is not None:
            produced = handler(signal)
            if produced is not None:
                for record in produced:
                    self.emit(record)
        self.function.close()

    @property
    def label(self) -> str:
        return repr(self.function) if type(self.function).__repr__ is not object.__repr__ else \
            type(self.function).__qualname__
