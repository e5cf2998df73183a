"""Logical plan: what the user wrote, one Transformation per operator call. Pure data, no processes."""

from __future__ import annotations

import enum
import inspect
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast, runtime_checkable

from procflow.core import functions as fx
from procflow.core.enums import OperatorKind

_ids = itertools.count()

ROUND_ROBIN, HASH, BROADCAST, CUSTOM, BALANCE = "round_robin", "hash", "broadcast", "custom", "balance"


@dataclass(frozen=True)
class FunctionSpec:
    """How to build a fresh function object for each parallel instance (in the driver)."""

    base: type
    target: Any
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    @classmethod
    def of(cls, base: type, target: Any, args: tuple = (), kwargs: dict | None = None,
           *, where: str) -> FunctionSpec:
        kwargs = kwargs or {}
        if inspect.isclass(target):
            if not issubclass(target, base):
                raise TypeError(
                    f"{where} needs a {base.__name__} subclass or a plain callable, got class "
                    f"{target.__name__}. Probably you passed the wrong class; instead, subclass "
                    f"{base.__name__} and define its hook methods.")
        elif isinstance(target, fx.BaseFunction):
            if args or kwargs:
                raise TypeError(f"{where}: constructor arguments were given for an already built "
                                f"{type(target).__name__} instance; pass the class instead")
        elif not callable(target):
            raise TypeError(f"{where} needs a {base.__name__} subclass or a callable, got "
                            f"{type(target).__name__} {target!r:.60}")
        elif args or kwargs:
            raise TypeError(f"{where}: extra arguments go to a function class's constructor, but "
                            f"{getattr(target, '__qualname__', target)!r} is a plain callable")
        return cls(base, target, tuple(args), dict(kwargs))

    def build(self) -> fx.BaseFunction:
        if inspect.isclass(self.target):
            function_class = cast("type[fx.BaseFunction]", self.target)   # of() checked: a subclass of base
            return function_class(*self.args, **self.kwargs)
        if isinstance(self.target, fx.BaseFunction):
            import copy

            return copy.deepcopy(self.target)
        return fx.WRAPPERS[self.base](self.target)

    @property
    def label(self) -> str:
        t = self.target
        return getattr(t, "__qualname__", None) or type(t).__name__


@runtime_checkable
class Partitioner(Protocol):
    """A custom partitioning strategy, passed as `keyby(selector, strategy=partitioner)`.

    Called in the sending task for every record with the record's key and the number of downstream
    instances; returns one instance index (0..n-1), or a non-empty list of indices (the record goes to
    each). Range, load-aware or fan-out partitioning is then user code. Any plain function with this
    signature qualifies; under `start_method="spawn"` it must be picklable.
    """

    def __call__(self, key: Any, n_instances: int) -> int | list[int]: ...


@dataclass(frozen=True)
class Partitioning:
    """How records leave a stream towards the next operator."""

    strategy: str = ROUND_ROBIN
    key_selector: FunctionSpec | None = None
    partitioner: Callable | None = None
    # True where the user asked for this placement (`.balance()`, `.round_robin()`): such an edge
    # redistributes records, so it is never fused into a chain; the default unkeyed edge may be.
    explicit: bool = False
    # The reduce function this edge feeds, where its senders may pre-reduce (a combiner, issue 19): set
    # by `reduce()` on a hash-partitioned edge, unless emit="running" or combine=False.
    combiner: FunctionSpec | None = None

    @property
    def keyed(self) -> bool:
        return self.strategy in (HASH, CUSTOM)


class ChainPolicy(enum.Enum):
    """How an operator may share a task with its neighbours (see execution_graph.plan_chains).

    AUTO   chains with the operator before it and after it wherever the edge is a forward one
    HEAD   `stream.start_new_chain()`: begins a new chain (never fused with the operator before it)
    NEVER  `stream.disable_chaining()`: a task of its own, fused with nothing
    """

    AUTO = "auto"
    HEAD = "head"
    NEVER = "never"


@dataclass(frozen=True)
class Input:
    upstream: Transformation
    partitioning: Partitioning
    input_index: int


@dataclass(eq=False)
class Transformation:
    kind: OperatorKind
    name: str
    function: FunctionSpec
    parallelism: int
    inputs: list[Input] = field(default_factory=list)
    options: dict = field(default_factory=dict)
    id: int = field(default_factory=lambda: next(_ids))
    # True when the user gave `parallelism=` (or set it later): a splittable source whose parallelism
    # was not given takes that of the operator it feeds (execution_graph.plan_parallelism).
    parallelism_set: bool = False
    chaining: ChainPolicy = ChainPolicy.AUTO

    def __post_init__(self) -> None:
        # A kind given as its string ("map") becomes the enum member; a misspelt one fails here, in the
        # driver while the graph is built, instead of as a KeyError in a task process.
        self.kind = OperatorKind(self.kind)

    @property
    def is_source(self) -> bool:
        return self.kind.is_source


def check_parallelism(parallelism: Any, where: str) -> int:
    if isinstance(parallelism, bool) or not isinstance(parallelism, int):
        raise TypeError(f"{where}: parallelism must be an int >= 1, got {parallelism!r}")
    if parallelism < 1:
        raise ValueError(f"{where}: parallelism must be >= 1, got {parallelism}")
    return parallelism
