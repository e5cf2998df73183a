"""Resume with a keyed reduce's parallelism changed: its state re-partitioned by the router's own hash.

    Dispatcher._open_checkpoints ─► resume_differences(graph, saved, now): what differs, less a keyed
                                    reduce's change of parallelism, accepted; and the reduces to split
                                 ─► repartition(restored, graph, rescaled): every old instance's per-key
                                    dict merged, then split over the new instances by `hash_channel`,
                                    the function the Hash placement sends records by

Why only a keyed reduce: its state is a dict per key, fed by a hash-partitioned edge, so where each key
belongs after the change is known exactly. A user function's `snapshot_state()` is one opaque value per
instance, which cannot be split by key: refused. Every other operator keeps its parallelism, since its
state (a reader's splits, a sink's parts, a join's buffers) belongs to its instance; an operator that
merely followed the reduce's parallelism (a sink after it) must be given its old one explicitly. What
comes after the reduce is never chained to it: its records go on by their key's hash over the next
operator's own instances, so what those received, and hold, does not depend on the reduce's parallelism.

The driver unpickles the reduce's state files here, rather than the tasks that wrote them: they come from
the same private, verified checkpoint folder (store.py), written by this user's own tasks.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from typing import Any

from procflow.core.enums import OperatorKind
from procflow.graph.execution_graph import ExecutionGraph, instance_name
from procflow.runtime.checkpoint.coordinator import graph_differences
from procflow.runtime.checkpoint.store import LoadedCheckpoint
from procflow.runtime.communication.placement import HASH, hash_channel

_ENTRY = re.compile(r"(\S+) x([0-9]+) (.*)", re.DOTALL)   # a fingerprint entry: "reduce x2 add"


def _parallelism_only(saved: str, now: str) -> tuple[int, int] | None:
    """(old, new) parallelism where two fingerprint entries differ in parallelism alone, else None."""
    a, b = _ENTRY.fullmatch(saved), _ENTRY.fullmatch(now)
    if a is None or b is None or a.group(1) != b.group(1) or a.group(3) != b.group(3):
        return None
    return int(a.group(2)), int(b.group(2))


def _instances(graph: ExecutionGraph, operator: str) -> list[str]:
    """The task names of `operator`'s instances, in instance order (the order of a Hash group's channels)."""
    nodes = sorted((n for n in graph.nodes.values() if n.operator == operator), key=lambda n: n.index)
    return [n.name for n in nodes]


def _why_not_rescalable(graph: ExecutionGraph, operator: str) -> str | None:
    """Why `operator`'s state cannot be re-partitioned by key, or None where it can."""
    t = next(t for t in graph.transformations.values() if t.name == operator)
    if t.kind is not OperatorKind.REDUCE:
        return f"only a keyed reduce's state can be re-partitioned, and {operator!r} is a {t.kind.value}"
    target = t.function.target
    cls = target if isinstance(target, type) else type(target)
    if callable(getattr(cls, "snapshot_state", None)):
        return (f"reduce {operator!r}'s function defines snapshot_state(), one value per instance that "
                "cannot be split by key")
    for node in graph.nodes.values():
        for group in node.out_groups:
            if group.target == operator and (group.partitioning.strategy != HASH
                                             or group.partitioning.partitioner is not None):
                return (f"reduce {operator!r} is fed by a {group.label} edge from {node.operator!r}, not by "
                        "keyby's hash partitioning, so where each key's state belongs is not known")
    return None


def resume_differences(graph: ExecutionGraph, saved: Mapping[str, str],
                       now: Mapping[str, str]) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """(differences, rescaled): why this graph cannot resume the checkpoint whose fingerprint is `saved`
    (empty where it can), and the keyed reduces whose parallelism changed, operator -> (old, new), whose
    state `repartition` splits anew. A change of parallelism alone is named with why it is refused."""
    differences: list[str] = []
    rescaled: dict[str, tuple[int, int]] = {}
    changes = {name: _parallelism_only(saved[name], now[name]) for name in now
               if name in saved and saved[name] != now[name]}
    for name, change in changes.items():
        if change is None:
            continue
        why = _why_not_rescalable(graph, name)
        if why is None:
            rescaled[name] = change
        else:
            differences.append(f"operator {name!r} was {saved[name]}, now {now[name]}, but {why}. Give it its "
                               f"old parallelism={change[0]} explicitly (an operator that sets none follows "
                               "its neighbour's, a reduce's too)")
    named = {f"operator {name!r} was {saved[name]}, now {now[name]}" for name, c in changes.items() if c}
    differences += [d for d in graph_differences(saved, now) if d not in named]
    return differences, rescaled


def repartition(restored: LoadedCheckpoint, graph: ExecutionGraph, rescaled: Mapping[str, tuple[int, int]]) -> None:
    """Replace each rescaled reduce's per-instance states in `restored` by new ones: new instance i of n
    holds every old instance's entries whose key `hash_channel` sends to i. Raises ValueError where a
    state cannot be split (a function's own state, a finished instance, a key held twice)."""
    for operator, (old, _new) in rescaled.items():
        merged: dict[Any, Any] = {}
        for task in (instance_name(operator, i) for i in range(old)):
            data = restored.states.pop(task, None)
            if data is None:
                raise ValueError(f"checkpoint {restored.number} holds no state for {task!r}")
            state = pickle.loads(data)
            if set(state) - {"reduce"}:
                raise ValueError(f"the state of {task!r} holds more than its per-key dict "
                                 f"({', '.join(sorted(set(state) - {'reduce'}))}), which cannot be split by key")
            for key, value in state["reduce"].items():
                if key in merged:
                    raise ValueError(f"key {key!r:.80} is held by two instances of {operator!r}")
                merged[key] = value
        tasks = _instances(graph, operator)
        parts: list[dict[Any, Any]] = [{} for _ in tasks]
        for key, value in merged.items():
            parts[hash_channel(key, len(tasks))][key] = value
        for task, part in zip(tasks, parts):
            restored.states[task] = pickle.dumps({"reduce": part}, protocol=5)
