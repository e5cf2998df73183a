"""User function base classes: small ABCs whose hooks run inside the task process.

Lifecycle of every function, in its own task process:

    constructed in the driver ──ship──► open() ──► execute(...) per record ──► handle_stop_signal(sig)
                                                                              ──► close()

`self.ctx` (the TaskContext) is set before `open()`. Plain callables are wrapped in the matching class,
so `stream.map(lambda x: x + 1)` and `stream.map(AddOne)` run the same code path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from procflow.core.signals import StopSignal


class BaseFunction:
    """Common hooks. Subclasses override `execute`; the other hooks are optional."""

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
            return self.ctx.logger
        return logging.getLogger(f"procflow.user.{type(self).__name__}")

    def call_service(self, name: str, *args: Any, method: str = "process", timeout: float = 10,
                     **kwargs: Any) -> Any:
        """Call a registered service and wait for its answer (raises ServiceError / ServiceTimeoutError)."""
        return self._services().call(name, method, args, kwargs, timeout)

    def call_service_async(self, name: str, *args: Any, method: str = "process", timeout: float = 10,
                           **kwargs: Any) -> Future:
        """Call a registered service without waiting; the Future resolves to its answer."""
        return self._services().call_async(name, method, args, kwargs, timeout)

    def _services(self):
        if self.ctx is None:
            raise RuntimeError(
                "call_service() works only inside a running task (from open(), execute() or close()); "
                "the function has no task context yet")
        return self.ctx.services


class SourceFunction(BaseFunction):
    """An unbounded source. `execute()` returns a record, None for "nothing right now", or a StopSignal."""

    def execute(self) -> Any:
        raise NotImplementedError


class BatchFunction(BaseFunction):
    """A bounded source. `execute()` returns the next record, or None / a StopSignal to end the batch."""

    def execute(self) -> Any:
        raise NotImplementedError


class MapFunction(BaseFunction):
    def execute(self, record: Any) -> Any:
        raise NotImplementedError


class FilterFunction(BaseFunction):
    def execute(self, record: Any) -> bool:
        raise NotImplementedError


class FlatMapFunction(BaseFunction):
    def execute(self, record: Any) -> Iterable[Any]:
        raise NotImplementedError


class KeyByFunction(BaseFunction):
    """Chooses a record's partition key; runs in the task that sends the record."""

    def execute(self, record: Any) -> Any:
        raise NotImplementedError


class SinkFunction(BaseFunction):
    def execute(self, record: Any) -> None:
        raise NotImplementedError


class CoMapFunction(BaseFunction):
    """One method per input of a connected stream: `map0(record)`, `map1(record)`, ..."""


class JoinFunction(BaseFunction):
    """Two keyed inputs. `execute(payload, key, tag)` gets `tag` = input index and returns a list."""

    def execute(self, payload: Any, key: Any, tag: int) -> list:
        raise NotImplementedError


class ReduceFunction(BaseFunction):
    """Folds the records of one key: `execute(accumulated, record)` returns the new accumulated value."""

    def execute(self, accumulated: Any, record: Any) -> Any:
        raise NotImplementedError


# -- plain callables -------------------------------------------------------------------------------

class _Wrapped:
    """Mixin: a function object that calls a plain callable. Its repr names the callable for errors."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        # Operators look up `execute` once and call it per record: binding the callable itself saves a
        # Python frame per record (the class's execute below stays as the documented behaviour).
        self.execute = fn

    def __repr__(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))


class CallableMap(_Wrapped, MapFunction):
    def execute(self, record):
        return self.fn(record)


class CallableFilter(_Wrapped, FilterFunction):
    def execute(self, record):
        return self.fn(record)


class CallableFlatMap(_Wrapped, FlatMapFunction):
    def execute(self, record):
        return self.fn(record)


class CallableKeyBy(_Wrapped, KeyByFunction):
    def execute(self, record):
        return self.fn(record)


class CallableSink(_Wrapped, SinkFunction):
    def execute(self, record):
        self.fn(record)


class CallableJoin(_Wrapped, JoinFunction):
    def execute(self, payload, key, tag):
        return self.fn(payload, key, tag)


class CallableReduce(_Wrapped, ReduceFunction):
    def execute(self, accumulated, record):
        return self.fn(accumulated, record)


class CallableSource(_Wrapped, SourceFunction):
    def execute(self):
        return self.fn()


class CallableBatch(_Wrapped, BatchFunction):
    def execute(self):
        return self.fn()


class IterableBatch(BatchFunction):
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
