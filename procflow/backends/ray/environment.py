"""RayEnvironment: the same pipelines as Ray actors. Only this package imports ray."""

from __future__ import annotations

from typing import Any

from procflow.api.environment import BaseEnvironment


class RayEnvironment(BaseEnvironment):
    backend = "ray"

    def __init__(self, name: str = "procflow", config: dict[str, Any] | None = None, *,
                 address: str | None = None, env_dir: str | None = None) -> None:
        super().__init__(name, config, env_dir=env_dir)
        self.address = address

    def _launch(self, graph: Any) -> Any:
        raise NotImplementedError("the Ray backend is not implemented yet")
