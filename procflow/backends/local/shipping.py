"""Under spawn every function is pickled (with dill) as built: find the one that cannot be, before any
process starts, and say what to do instead."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from procflow.runtime.backend import TaskStart


def check_shippable(tasks: Mapping[str, TaskStart]) -> None:
    """Raise TypeError naming the operator whose function, key selector or partitioner dill cannot
    pickle; each operator is checked once (its instances were built alike)."""
    import dill

    seen: set[str] = set()
    every = [t for head in tasks.values() for t in (head, *head.chained)]
    for task in every:
        ctx = task.ctx
        operator = ctx.operator_name
        if operator in seen:
            continue
        seen.add(operator)
        things: list[tuple[str, Any]] = [("function", task.function)]
        for out in ctx.outputs:
            if out.key_selector is not None:
                things.append((f"key selector towards {out.target!r}", out.key_selector))
            if out.partitioner is not None:
                things.append((f"partitioner towards {out.target!r}", out.partitioner))
        for what, obj in things:
            try:
                dill.dumps(obj)
            except Exception as exc:
                raise TypeError(
                    f"the {what} of operator {operator!r} cannot be shipped to a spawned process: {exc}. "
                    "Under start_method='spawn' every function and its constructor arguments must be "
                    "picklable; instead, create unpicklable resources (files, locks, sockets, "
                    "generators) in open(), or use start_method='fork'.") from exc
