"""Services: long-lived objects that run in their own processes and that functions call by name."""

from __future__ import annotations

import dis
import inspect
import logging
import types
from dataclasses import dataclass, field
from typing import Any


class BaseService:
    """Subclass and add methods; callers use `self.call_service(name, *args, method="process")`.

    Lifecycle in the service process: constructed in the driver ─► setup() ─► calls ─► stop() ─► cleanup().
    """

    ctx: Any = None

    def setup(self) -> None:
        """Runs once in the service process before the first call: load models, open connections."""

    def process(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no process() method")

    def stop(self) -> None:
        """Called when the batch completes, before cleanup()."""

    def cleanup(self) -> None:
        """Release resources; the last hook to run."""

    @property
    def logger(self) -> logging.Logger:
        if self.ctx is not None:
            logger: logging.Logger = self.ctx.logger
            return logger
        return logging.getLogger(f"procflow.service.{type(self).__name__}")

    def call_service(self, name: str, *args: Any, method: str = "process", timeout: float = 10,
                     **kwargs: Any) -> Any:
        """Services may call other services."""
        return self.ctx.services.call(name, method, args, kwargs, timeout)

    def call_service_async(self, name: str, *args: Any, method: str = "process", timeout: float = 10,
                           **kwargs: Any) -> Any:
        return self.ctx.services.call_async(name, method, args, kwargs, timeout)


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    service_class: type[BaseService]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    parallelism: int = 1

    def build(self) -> BaseService:
        return self.service_class(*self.args, **self.kwargs)


_CALLS = ("call_service", "call_service_async")


def services_called(target: object) -> set[str]:
    """Service names a function or service class is known to call, found before anything runs.

    Two sources: a `services = ("name", ...)` attribute declaring its needs, and literal names in its
    own methods' code, as in `self.call_service("vocab", x)`. A name computed at run time is not seen
    here; it fails at call time with UnknownServiceError instead.
    """
    cls = target if inspect.isclass(target) else type(target)
    declared = getattr(target, "services", ()) or ()
    names = {declared} if isinstance(declared, str) else set(declared)
    for klass in cls.__mro__:
        if klass.__module__.startswith("procflow.") or klass is object:
            continue
        for attr in vars(klass).values():
            fn = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
            code = getattr(fn, "__code__", None)
            if code is not None:
                names |= _literal_calls(code)
    return names


def _literal_calls(code: types.CodeType) -> set[str]:
    found: set[str] = set()
    prev = None
    for ins in dis.get_instructions(code):
        if (prev is not None and prev.opname in ("LOAD_ATTR", "LOAD_METHOD") and prev.argval in _CALLS
                and ins.opname == "LOAD_CONST" and isinstance(ins.argval, str)):
            found.add(ins.argval)
        prev = ins
    for const in code.co_consts:
        if inspect.iscode(const):
            found |= _literal_calls(const)
    return found
