"""Operators over connected streams: comap (one method per input) and keyed join."""

from __future__ import annotations

from typing import Any

from procflow.runtime.operators.base import Operator


class CoMapOperator(Operator):
    def open(self) -> None:
        super().open()
        self._methods: dict[int, Any] = {}

    def process(self, packet: Any) -> None:
        index = packet.input_index
        method = self._methods.get(index)
        if method is None:
            method = self._methods[index] = getattr(self.function, f"map{index}")
        self.emit(method(packet.payload))


class JoinOperator(Operator):
    def process(self, packet: Any) -> None:
        produced = self.function.execute(packet.payload, packet.partition_key, packet.input_index)
        if produced is not None:
            for record in produced:
                self.emit(record)
