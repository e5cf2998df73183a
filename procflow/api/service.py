"""Services: long-lived objects that run in their own processes and that functions call by name."""

from __future__ import annotations

import logging
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
            return self.ctx.logger
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
    service_class: type
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    parallelism: int = 1

    def build(self) -> BaseService:
        return self.service_class(*self.args, **self.kwargs)
