"""One-input operators: map, filter, flatmap, sink, collect, keyed reduce."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from procflow.core.errors import unhashable_key_error
from procflow.core.functions import (
    BaseFunction,
    FilterFunction,
    FlatMapFunction,
    MapFunction,
    ReduceFunction,
    SinkFunction,
)
from procflow.runtime.checkpoint.barrier import FINAL
from procflow.runtime.communication.queue_descriptor.driver import DriverWriter
from procflow.runtime.communication.slabs import owned
from procflow.runtime.context.task_context import attached_router
from procflow.runtime.operators.base import Operator


class MapOperator(Operator[MapFunction[Any, Any]]):
    """One output per record. Chunked where the router takes lists: unkeyed ones (`routes_many`), or a
    keyby's (`routes_selected_many`: the key selector runs over the list, and since a map's outputs
    match its inputs one to one, the output that failed there names the input record; on_error="fail"
    only)."""

    chunks_when_routing_lists = True

    def open(self) -> None:
        super().open()
        self._execute = self.function.execute
        self._route = self.router.fast_route
        router = self.router
        # Only where a failing record fails the task: a record set aside (skip, dead_letter) in the
        # middle of a routed list would have the task call the function again on the records after it.
        if not router.routes_many and router.routes_selected_many and self.ctx.options.get("on_error") == "fail":
            self.chunked = True
            self._route_list = router.route_selected_many
        else:
            self._route_list = router.route_many

    def process(self, record: Any) -> None:
        ctx = self.ctx
        self._route(self._execute(record), ctx.current_key, ctx.current_keyed)

    def process_many(self, records: list[Any]) -> None:
        # The function's results go downstream as one list: no per-record routing call.
        execute = self._execute
        out: list[Any] = []
        append = out.append
        try:
            for record in records:
                append(execute(record))
        except BaseException:
            self.completed = len(out)
            raise
        finally:
            if out:   # also what was done before a failure leaves, as it would record by record
                try:
                    self._route_list(out)
                except BaseException:
                    self.completed = self.router.failed_at   # out[i] came from records[i]
                    raise


class FilterOperator(Operator[FilterFunction[Any]]):
    chunks_when_routing_lists = True

    def process(self, record: Any) -> None:
        if self.function.execute(record):
            self.emit(record)

    def process_many(self, records: list[Any]) -> None:
        execute = self.function.execute
        kept: list[Any] = []
        i = 0
        try:
            for i, record in enumerate(records):  # noqa: B007 (i names the failing record)
                if execute(record):
                    kept.append(record)
        except BaseException:
            self.completed = i
            raise
        finally:
            if kept:
                self.router.route_many(kept)


class FlatMapOperator(Operator[FlatMapFunction[Any, Any]]):
    # A record may expand into many: results leave in lists of at most this many, so one huge
    # expansion still meets back-pressure instead of piling up in memory.
    _SEND_AT = 1024
    chunks_when_routing_lists = True

    def process(self, record: Any) -> None:
        produced = self.function.execute(record)
        if produced is not None:
            for out in produced:
                self.emit(out)

    def process_many(self, records: list[Any]) -> None:
        execute = self.function.execute
        route_many = self.router.route_many
        out: list[Any] = []
        i = 0
        try:
            for i, record in enumerate(records):  # noqa: B007 (i names the failing record)
                produced = execute(record)
                if produced is not None:
                    for item in produced:
                        out.append(item)
                        if len(out) >= self._SEND_AT:
                            full, out = out, []
                            route_many(full)
        except BaseException:
            self.completed = i
            raise
        finally:
            if out:
                route_many(out)


def two_phase(function: Any) -> bool:
    """A sink that commits in two phases: prepare_commit() in its task, commit(token) in the driver."""
    return callable(getattr(function, "prepare_commit", None)) and callable(getattr(function, "commit", None))


class SinkOperator(Operator[SinkFunction[Any]]):
    """Runs a sink. A two-phase sink (`prepare_commit()` / `commit(token)`) prepares a token at every
    barrier (it goes to the driver in the ack: `progress["commit"]`), at its final snapshot, or else at
    end of input before close() (it goes with Stopped): the driver commits each once its checkpoint
    completes, or the job succeeds."""

    chunked = True     # nothing to route: a chunk is one loop over the function
    _prepared_tail = False   # the final snapshot prepared the token of the records after the last barrier

    def finish(self, signal: Any) -> None:
        if two_phase(self.function):
            chained = self.before_close

            def prepare_tail() -> None:
                if chained is not None:
                    chained()   # a final snapshot, which prepares the tail's token itself
                if not self._prepared_tail:
                    self.end_commit = (self.function.prepare_commit(),)  # type: ignore[attr-defined]
            self.before_close = prepare_tail
        super().finish(signal)

    def process(self, record: Any) -> None:
        self.function.execute(record)

    def per_record(self) -> Callable[[Any], None]:
        return self.function.execute   # nothing to add per record: the task calls the function itself

    def snapshot(self) -> tuple[dict[str, Any], dict[str, Any]]:
        state, progress = super().snapshot()
        if callable(getattr(self.function, "adopt_parts", None)) and "function" in state:
            # A file sink: its rolled parts, which the driver moves into the new staging on resume.
            progress["parts"] = [part["name"] for part in state["function"]]
        if two_phase(self.function):
            progress["commit"] = self.function.prepare_commit()  # type: ignore[attr-defined]
            self._prepared_tail = self.ctx.checkpoint_number == FINAL
        return state, progress

    def process_many(self, records: list[Any]) -> None:
        execute = self.function.execute
        i = 0
        try:
            for i, record in enumerate(records):  # noqa: B007 (i names the failing record)
                execute(record)
        except BaseException:
            self.completed = i
            raise


class CollectOperator(Operator[BaseFunction]):
    """A collect task: ships what it receives to the driver through a DriverWriter (batched by count and
    time, all at end of input), as upstream tasks do where the driver runs the collect itself.

    Only where a collect has something to decide (keyed input, several instances), or under the inline
    executor (queue_descriptor/driver.py). The task flushes whenever its input runs dry,
    which with slow upstream functions is after every record; a message to the driver per record cost
    the 1 ms CPU-scaling bench 40% of its speed, hence the batching.
    """

    bulk = True
    poll_period = 0.005

    def open(self) -> None:
        self.router = attached_router(self.ctx)
        self._to_driver = DriverWriter(self.ctx.operator_name)
        self._to_driver.bind_control(self.ctx.control, self.ctx.name)

    def process(self, record: Any) -> None:
        self._to_driver.send_object(record, None, False)

    def process_all(self, records: list[Any]) -> None:
        self._to_driver.send_many(records)

    def flush(self) -> None:
        self._to_driver.flush()

    def snapshot(self) -> tuple[dict[str, Any], dict[str, Any]]:
        # Everything received before the barrier reaches the driver before this task's ack (same channel),
        # not after SEND_INTERVAL: the driver counts what a sender shipped before its ack as the checkpoint's.
        self._to_driver.send_control(None)
        return super().snapshot()

    def finish(self, signal: Any) -> None:
        self._to_driver.send_control(signal)
        if self.before_close is not None:
            self.before_close()


class ReduceOperator(Operator[ReduceFunction]):
    """Keyed fold: state per key; emits (key, value) per update or once per key at end of input."""

    def open(self) -> None:
        super().open()
        self._state: dict[Any, Any] = {}
        self._running = self.ctx.options.get("emit", "final") == "running"

    def process(self, record: Any) -> None:
        key = self.ctx.current_key
        state = self._state
        try:
            held = key in state
        except TypeError:
            raise unhashable_key_error(key, self.ctx.operator_name) from None
        if held:
            value = self.function.execute(state[key], record)
        else:
            value = record
        if type(value) is np.ndarray:   # a received array is a read-only view on a slab: keep a copy
            value = owned(value)
        state[key] = value
        if self._running:
            self.emit((key, value))

    def snapshot(self) -> tuple[dict[str, Any], dict[str, Any]]:
        state, progress = super().snapshot()
        state["reduce"] = self._state
        return state, progress

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self._state = dict(state["reduce"])

    def finish(self, signal: Any) -> None:
        if not self._running and not self.restored_finished:   # restored finished: it emitted them already
            for key, value in self._state.items():
                self.router.fast_route((key, value), key, True)
        super().finish(signal)
