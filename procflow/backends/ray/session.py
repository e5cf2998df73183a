"""Connecting to Ray and letting it go: the only place RayEnvironment's `ray.init` / `ray.shutdown` live,
so that `ray` is imported under procflow/backends/ray only (tests/unit/test_layers.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ray


def connect(address: str | None, namespace: str, num_cpus: int | None, init_options: Mapping[str, Any]) -> bool:
    """Join `address`, or start a local instance on this machine only; True when this call started
    (or joined) Ray, False when it was already initialised."""
    if ray.is_initialized():
        return False
    if address is not None:
        ray.init(address=address, namespace=namespace, **init_options)
    else:
        # address="local" never joins another instance found on this machine or through RAY_ADDRESS.
        options = {"include_dashboard": False, "log_to_driver": True, **init_options}
        ray.init(address="local", num_cpus=num_cpus, namespace=namespace, **options)
    return True


def shutdown() -> None:
    ray.shutdown()
