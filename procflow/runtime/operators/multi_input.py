"""Operators over connected streams: comap (one method per input) and keyed join.

Checkpoints: what a join or comap holds across records (the buffered side of a join, the table one input
builds for the other) lives in its function object's attributes. A function that defines
`snapshot_state()` says itself what to keep; otherwise its attributes are its state, so a resumed join
still pairs a record with those buffered before the checkpoint instead of silently dropping the pairs.
"""

from __future__ import annotations

from typing import Any

from procflow.core.functions import CoMapFunction, JoinFunction, _Wrapped
from procflow.runtime.operators.base import Operator

# Attributes procflow itself sets on a function: not the user's state.
_OWN_ATTRIBUTES = frozenset({"ctx"})


class _BufferedState:
    """snapshot/restore of a multi-input operator: the function's own hooks, else its attributes."""

    function: Any

    def snapshot(self) -> tuple[dict[str, Any], dict[str, Any]]:
        state, progress = super().snapshot()  # type: ignore[misc]
        fn = self.function
        if "function" not in state and not isinstance(fn, _Wrapped):
            state["attributes"] = {k: v for k, v in vars(fn).items() if k not in _OWN_ATTRIBUTES}
        return state, progress

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)  # type: ignore[misc]
        if "attributes" in state:
            vars(self.function).update(state["attributes"])


class CoMapOperator(_BufferedState, Operator[CoMapFunction]):
    def open(self) -> None:
        super().open()
        self._methods: dict[int, Any] = {}

    def process(self, record: Any) -> None:
        index = self.ctx.current_input
        method = self._methods.get(index)
        if method is None:
            method = self._methods[index] = getattr(self.function, f"map{index}")
        self.emit(method(record))


class JoinOperator(_BufferedState, Operator[JoinFunction]):
    def process(self, record: Any) -> None:
        ctx = self.ctx
        produced = self.function.execute(record, ctx.current_key, ctx.current_input)
        if produced is not None:
            for out in produced:
                self.emit(out)
