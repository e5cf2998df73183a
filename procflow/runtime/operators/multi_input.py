"""Operators over connected streams: comap (one method per input) and keyed join."""

from __future__ import annotations

from typing import Any

from procflow.core.functions import CoMapFunction, JoinFunction
from procflow.runtime.operators.base import Operator


class CoMapOperator(Operator[CoMapFunction]):
    def open(self) -> None:
        super().open()
        self._methods: dict[int, Any] = {}

    def process(self, record: Any) -> None:
        index = self.ctx.current_input
        method = self._methods.get(index)
        if method is None:
            method = self._methods[index] = getattr(self.function, f"map{index}")
        self.emit(method(record))


class JoinOperator(Operator[JoinFunction]):
    def process(self, record: Any) -> None:
        ctx = self.ctx
        produced = self.function.execute(record, ctx.current_key, ctx.current_input)
        if produced is not None:
            for out in produced:
                self.emit(out)
