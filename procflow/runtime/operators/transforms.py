"""One-input operators: map, filter, flatmap, sink, collect, keyed reduce."""

from __future__ import annotations

from typing import Any

from procflow.runtime.control import Results
from procflow.runtime.operators.base import Operator


class MapOperator(Operator):
    def process(self, packet: Any) -> None:
        self.emit(self.function.execute(packet.payload))


class FilterOperator(Operator):
    def process(self, packet: Any) -> None:
        if self.function.execute(packet.payload):
            self.emit(packet.payload)


class FlatMapOperator(Operator):
    def process(self, packet: Any) -> None:
        produced = self.function.execute(packet.payload)
        if produced is not None:
            for record in produced:
                self.emit(record)


class SinkOperator(Operator):
    def process(self, packet: Any) -> None:
        self.function.execute(packet.payload)


class CollectOperator(Operator):
    """Ships records to the driver over the control pipe, in batches."""

    BATCH = 2048

    def open(self) -> None:
        self.router = self.ctx.router
        self._buffer: list = []

    def process(self, packet: Any) -> None:
        self._buffer.append(packet.payload)
        if len(self._buffer) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            batch, self._buffer = self._buffer, []
            self.ctx.control.send(Results(self.ctx.operator_name, batch))

    def finish(self, signal: Any) -> None:
        self.flush()


class ReduceOperator(Operator):
    """Keyed fold: state per key; emits (key, value) per update or once per key at end of input."""

    def open(self) -> None:
        super().open()
        self._state: dict = {}
        self._running = self.ctx.options.get("emit", "final") == "running"

    def process(self, packet: Any) -> None:
        key = packet.partition_key
        state = self._state
        if key in state:
            value = self.function.execute(state[key], packet.payload)
        else:
            value = packet.payload
        state[key] = value
        if self._running:
            self.emit((key, value))

    def finish(self, signal: Any) -> None:
        if not self._running:
            for key, value in self._state.items():
                self.router.route((key, value), key, True)
        super().finish(signal)
