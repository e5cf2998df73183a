"""Operators adapt a user function to the task loop: `process(record)` in, `emit(record)` out.

The task sets `ctx.current_key` / `ctx.current_keyed` / `ctx.current_input` for the record being
processed before calling `process`, so an emitted record inherits that record's key and a multi-input
operator knows which input it came on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from procflow.core.functions import BaseFunction
from procflow.runtime.communication.router import BaseRouter
from procflow.runtime.context.task_context import TaskContext, attached_router

# The function class an operator drives (MapOperator: a MapFunction), so that its `execute` is checked.
F = TypeVar("F", bound=BaseFunction)


class Operator(Generic[F]):
    # True for operators that take a whole list of records at once (`process_all`): no per-record call.
    bulk = False
    # > 0 for operators that need no prompt wake-up when input arrives: the task polls this often.
    poll_period = 0.0
    # True for operators that can take unkeyed records a chunk at a time (`process_many`).
    chunked = False
    # Operators whose `process_many` sends its results on as lists: chunked exactly when the router can
    # take lists (`routes_many`), decided at open().
    chunks_when_routing_lists = False
    # After `process_many` raised: how many records of the chunk were done before the failing one.
    completed = 0
    # Checkpoints: run between handle_stop_signal and close() (BaseTask's final snapshot, taken when a task
    # ends before the job); True when restored from one, whose end-of-input records went out already.
    before_close: Callable[[], None] | None = None
    restored_finished = False
    end_commit: tuple[Any, ...] = ()   # a two-phase sink's token of its tail, for Stopped (transforms.py)

    # Set by open(), from the attached context: emitting is only possible once the task is open.
    router: BaseRouter

    def __init__(self, function: F, ctx: TaskContext) -> None:
        self.function = function
        self.ctx = ctx

    def open(self) -> None:
        self.router = attached_router(self.ctx)
        if self.chunks_when_routing_lists:
            self.chunked = self.router.routes_many
        self.function.ctx = self.ctx
        self.function.open()

    def emit(self, record: Any) -> None:
        ctx = self.ctx
        self.router.fast_route(record, ctx.current_key, ctx.current_keyed)

    def process(self, record: Any) -> None:
        raise NotImplementedError

    def per_record(self) -> Callable[[Any], None]:
        """What the task calls for each record, asked once the operator is open: `process`, or an
        equivalent that saves a frame per record."""
        return self.process

    def process_all(self, records: list[Any]) -> None:
        """Bulk operators only: every record of one input batch."""
        raise NotImplementedError

    def process_many(self, records: list[Any]) -> None:
        """Chunked operators only: unkeyed records of one input, as `process` on each would. On an
        exception, `completed` tells the task which record failed."""
        raise NotImplementedError

    def flush(self) -> None:
        """Called whenever the task flushes its outputs (idle, timer, end)."""

    # -- checkpoints (runtime/checkpoint/) -------------------------------------------------------------

    def snapshot(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """At a checkpoint barrier, once every input is aligned: (state, progress). `state` is pickled
        into this instance's state file and handed back to `restore` on resume; `progress` goes to the
        driver with the ack. Here: the function's own `snapshot_state()`, where it defines one."""
        snapshot_state = getattr(self.function, "snapshot_state", None)
        return ({"function": snapshot_state()} if callable(snapshot_state) else {}), {}

    def restore(self, state: dict[str, Any]) -> None:
        """On resume, after open(): the state `snapshot` returned at the checkpoint restored."""
        if "function" in state:
            self.function.restore_state(state["function"])  # type: ignore[attr-defined]
        self.restored_finished = bool(state.get("finished"))

    def finish(self, signal: Any) -> None:
        """End of every input: let the function flush state, then close it."""
        self.ctx.current_key, self.ctx.current_keyed = None, False
        produced = None if self.restored_finished else self.function.handle_stop_signal(signal)
        if produced is not None:
            for record in produced:
                self.emit(record)
        if self.before_close is not None:
            self.before_close()
        self.function.close()

    @property
    def label(self) -> str:
        return repr(self.function) if type(self.function).__repr__ is not object.__repr__ else \
            type(self.function).__qualname__
