"""User function base classes: small ABCs whose hooks run inside the task process.

Lifecycle of every function, in its own task process:

    constructed in the driver ──ship──► open() ──► execute(...) per record ──► handle_stop_signal(sig)
                                                                              ──► close()

`self.ctx` (the TaskContext) is set before `open()`. Plain callables are wrapped in the matching class,
so `stream.map(lambda x: x + 1)` and `stream.map(AddOne)` run the same code path.

The per-record classes are generic in the records they take and give, for type checkers and editors
only: `class Upper(MapFunction[str, str])` has its `execute` checked, and `stream.map(Upper)` is a
`DataStream[str]`. A plain `class Upper(MapFunction)` means `MapFunction[Any, Any]` and works as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from procflow.core.signals import StopSignal

_In = TypeVar("_In", contravariant=True)    # the records a function takes
_Out = TypeVar("_Out", covariant=True)      # the records it gives


class BaseFunction:
    """Common hooks. Subclasses override `execute`; the other hooks are optional.

    Checkpoints (LocalEnvironment(checkpoint_dir=...)): a function that keeps state across records
    defines `snapshot_state()`, returning a picklable value, and `restore_state(state)`. The first runs in
    the task at each checkpoint barrier, between records; the second on `submit(resume=True)`, after
    `open()` and before the first record. They are looked up by name, so functions without state need
    neither; a source that is not a split source or an iterable needs both to be checkpointed.
    """

    ctx: Any = None

    def open(self) -> None:
        """Runs in the task process before the first record: open files, load models, connect."""

    def handle_stop_signal(self, signal: StopSignal) -> Iterable[Any] | None:
        """Runs once at end of input, after the last record and before `close()`; may emit records.

        `signal` says why the input ended (`signal.reason`: "end of input", "stopped by request", ...).
        Return the records to send downstream, in order, or None for none: the place for what a function
        holds back until it has seen everything, such as the counts of a keyed aggregation. They leave
        unkeyed (no record is being processed, so none lends them its key): `keyby` again downstream if
        they must be partitioned. Sources get it too, after their last record.
        """
        return None

    def close(self) -> None:
        """Runs once at end of stream, after the last record and after `handle_stop_signal`."""

    @property
    def logger(self) -> logging.Logger:
        """The task's logger: writes to `<task>_info.log` / `<task>_debug.log` under the job directory."""
        if self.ctx is not None:
            logger: logging.Logger = self.ctx.logger
            return logger
        return logging.getLogger(f"procflow.user.{type(self).__name__}")

    def call_service(self, name: str, *args: Any, method: str = "process", timeout: float = 10,
                     **kwargs: Any) -> Any:
        """Call a registered service and wait for its answer (raises ServiceError / ServiceTimeoutError)."""
        return self._services().call(name, method, args, kwargs, timeout)

    def call_service_async(self, name: str, *args: Any, method: str = "process", timeout: float = 10,
                           **kwargs: Any) -> Future[Any]:
        """Call a registered service without waiting; the Future resolves to its answer."""
        future: Future[Any] = self._services().call_async(name, method, args, kwargs, timeout)
        return future

    def _services(self) -> Any:   # the runtime's ServiceClient: runtime/ sits above this layer
        if self.ctx is None:
            raise RuntimeError(
                "call_service() works only inside a running task (from open(), execute() or close()); "
                "the function has no task context yet")
        return self.ctx.services


class SourceFunction(BaseFunction, Generic[_Out]):
    """An unbounded source. `execute()` returns a record, None for "nothing right now", or a StopSignal."""

    def execute(self) -> _Out | StopSignal | None:
        raise NotImplementedError


class BatchFunction(BaseFunction, Generic[_Out]):
    """A bounded source. `execute()` returns the next record, or None / a StopSignal to end the batch."""

    def execute(self) -> _Out | StopSignal | None:
        raise NotImplementedError


class MapFunction(BaseFunction, Generic[_In, _Out]):
    def execute(self, record: _In) -> _Out:
        raise NotImplementedError


class FilterFunction(BaseFunction, Generic[_In]):
    def execute(self, record: _In) -> bool:
        raise NotImplementedError


class FlatMapFunction(BaseFunction, Generic[_In, _Out]):
    """Zero or more outputs per record: `execute` returns an iterable of them (None counts as empty)."""

    def execute(self, record: _In) -> Iterable[_Out] | None:
        raise NotImplementedError


class KeyByFunction(BaseFunction, Generic[_In]):
    """Chooses a record's partition key; runs in the task that sends the record."""

    def execute(self, record: _In) -> Any:
        raise NotImplementedError


class SinkFunction(BaseFunction, Generic[_In]):
    """Consumes records. A sink that must publish exactly once defines two more methods (two-phase
    commit, as Flink's TwoPhaseCommitSinkFunction), looked up by name:

    `prepare_commit() -> token`   in the task, at each checkpoint barrier (after the records before it)
                                  and at end of input (before `close()`): finish what it wrote since the
                                  last call (flush, stage a file) and return a picklable token naming it
    `commit(token)`               in the driver, on a sink object built there for the purpose (its
                                  `open()` is not called: the token must say everything), once the
                                  token's checkpoint has completed, or the job has succeeded. A token of a
                                  checkpoint that never completed, or of a failed job, is never committed.
                                  On `submit(resume=True)` the restored checkpoint's tokens are committed
                                  again (the crash may have come between completion and commit): commit
                                  must be idempotent
    """

    def execute(self, record: _In) -> None:
        raise NotImplementedError


class CoMapFunction(BaseFunction):
    """One method per input of a connected stream: `map0(record)`, `map1(record)`, ..."""


class JoinFunction(BaseFunction):
    """Two keyed inputs. `execute(payload, key, tag)` gets `tag` = input index and returns a list."""

    def execute(self, payload: Any, key: Any, tag: int) -> list[Any]:
        raise NotImplementedError


class ReduceFunction(BaseFunction):
    """Folds the records of one key: `execute(accumulated, record)` returns the new accumulated value."""

    def execute(self, accumulated: Any, record: Any) -> Any:
        raise NotImplementedError


# -- plain callables -------------------------------------------------------------------------------

class _Wrapped:
    """Mixin: a function object that calls a plain callable. Its repr names the callable for errors."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        # Operators look up `execute` once and call it per record: binding the callable itself saves a
        # Python frame per record (the class's execute below stays as the documented behaviour).
        self.execute = fn

    def __repr__(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))


class CallableMap(_Wrapped, MapFunction[Any, Any]):
    def execute(self, record: Any) -> Any:
        return self.fn(record)


class CallableFilter(_Wrapped, FilterFunction[Any]):
    def execute(self, record: Any) -> Any:   # any truthy value keeps the record, as in filter()
        return self.fn(record)


class CallableFlatMap(_Wrapped, FlatMapFunction[Any, Any]):
    def execute(self, record: Any) -> Any:
        return self.fn(record)


class CallableKeyBy(_Wrapped, KeyByFunction[Any]):
    def execute(self, record: Any) -> Any:
        return self.fn(record)


class CallableSink(_Wrapped, SinkFunction[Any]):
    def execute(self, record: Any) -> None:
        self.fn(record)


class CallableJoin(_Wrapped, JoinFunction):
    def execute(self, payload: Any, key: Any, tag: int) -> Any:
        return self.fn(payload, key, tag)


class CallableReduce(_Wrapped, ReduceFunction):
    def execute(self, accumulated: Any, record: Any) -> Any:
        return self.fn(accumulated, record)


class CallableSource(_Wrapped, SourceFunction[Any]):
    def execute(self) -> Any:
        return self.fn()


class CallableBatch(_Wrapped, BatchFunction[Any]):
    def execute(self) -> Any:
        return self.fn()


class IterableBatch(BatchFunction[Any]):
    """`from_batch(iterable)`: instance i of n takes items i, i+n, i+2n, ... None items are data here."""

    def __init__(self, iterable: Iterable[Any]) -> None:
        self.iterable = iterable

    def __repr__(self) -> str:
        return f"IterableBatch({type(self.iterable).__name__})"


WRAPPERS: dict[type, type] = {
    MapFunction: CallableMap,
    FilterFunction: CallableFilter,
    FlatMapFunction: CallableFlatMap,
    KeyByFunction: CallableKeyBy,
    SinkFunction: CallableSink,
    JoinFunction: CallableJoin,
    ReduceFunction: CallableReduce,
    SourceFunction: CallableSource,
    BatchFunction: CallableBatch,
}
