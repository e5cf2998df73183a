"""Physical plan: one TaskNode per parallel instance, one Edge per (upstream, downstream) instance pair.

    Transformation (map, parallelism 2) ──► TaskNode map_0, map_1
    Input(upstream=source p=1)          ──► Edge source_0→map_0, source_0→map_1, grouped as one OutGroup

Each node knows its exact number of input channels (`num_inputs`): the stop protocol ends a task after
one StopSignal per input channel, so this count is the whole of end-of-stream accounting.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from procflow.core import functions as fx
from procflow.core.enums import OperatorKind
from procflow.graph.transformation import Partitioning, Transformation


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    group: int          # index of the OutGroup at the source task
    slot: int           # index of this channel among the destination task's inputs
    input_index: int    # logical input of the destination operator (comap / join)


@dataclass(frozen=True)
class OutGroup:
    target: str                      # downstream operator name
    partitioning: Partitioning
    edges: tuple[Edge, ...]          # in downstream instance order


@dataclass(frozen=True)
class TaskNode:
    name: str
    operator: str
    kind: OperatorKind
    index: int
    parallelism: int
    transformation_id: int
    in_edges: tuple[Edge, ...] = ()
    out_groups: tuple[OutGroup, ...] = ()

    @property
    def num_inputs(self) -> int:
        return len(self.in_edges)


@dataclass
class ExecutionGraph:
    nodes: dict[str, TaskNode] = field(default_factory=dict)
    transformations: dict[int, Transformation] = field(default_factory=dict)

    @property
    def edges(self) -> list[Edge]:
        return [e for n in self.nodes.values() for e in n.in_edges]

    def sources(self) -> list[TaskNode]:
        return [n for n in self.nodes.values() if not n.in_edges]

    def describe(self) -> str:
        lines = []
        for node in self.nodes.values():
            outs = ", ".join(f"{g.target}[{g.partitioning.strategy}]" for g in node.out_groups) or "-"
            lines.append(f"{node.name:<24} inputs={node.num_inputs:<3} -> {outs}")
        return "\n".join(lines)


def compile_graph(transformations: list[Transformation]) -> ExecutionGraph:
    """Expand the logical plan; raises ValueError/TypeError for graphs that cannot work."""
    if not transformations:
        raise ValueError("the pipeline is empty: add a source with env.from_batch(...) or "
                         "env.from_source(...) before submit()")
    for t in transformations:
        _validate(t)
    in_edges: dict[str, list[Edge]] = {}
    out_groups: dict[str, list[OutGroup]] = {}
    slot_counter: dict[str, int] = {}
    for t in transformations:
        for inp in t.inputs:
            up = inp.upstream
            for i in range(up.parallelism):
                src = f"{up.name}_{i}"
                groups = out_groups.setdefault(src, [])
                edges = []
                for j in range(t.parallelism):
                    dst = f"{t.name}_{j}"
                    slot = slot_counter.get(dst, 0)
                    slot_counter[dst] = slot + 1
                    edge = Edge(src, dst, len(groups), slot, inp.input_index)
                    edges.append(edge)
                    in_edges.setdefault(dst, []).append(edge)
                groups.append(OutGroup(t.name, inp.partitioning, tuple(edges)))
    graph = ExecutionGraph(transformations={t.id: t for t in transformations})
    for t in transformations:
        for i in range(t.parallelism):
            name = f"{t.name}_{i}"
            graph.nodes[name] = TaskNode(name, t.name, t.kind, i, t.parallelism, t.id,
                                         tuple(in_edges.get(name, ())), tuple(out_groups.get(name, ())))
    return graph


def _validate(t: Transformation) -> None:
    where = f"{t.kind} operator {t.name!r}"
    if t.kind == OperatorKind.JOIN:
        if len(t.inputs) != 2:
            raise ValueError(f"{where}: join needs exactly two inputs, got {len(t.inputs)}. "
                             "Instead, use a.connect(b).keyby(...).join(...)")
        for inp in t.inputs:
            if not inp.partitioning.keyed:
                raise ValueError(f"{where}: join inputs must be keyed so that equal keys meet in one "
                                 "instance; call .keyby(selector) on the connected streams first")
    if t.kind == OperatorKind.COMAP:
        target = t.function.target
        cls = target if inspect.isclass(target) else type(target)
        missing = [f"map{i}" for i in range(len(t.inputs)) if not callable(getattr(cls, f"map{i}", None))]
        if missing:
            raise ValueError(f"{where}: {cls.__name__} has {len(t.inputs)} inputs but no "
                             f"{', '.join(missing)} method; a CoMapFunction needs map0..map{len(t.inputs) - 1}")
        if not issubclass(cls, fx.CoMapFunction):
            raise TypeError(f"{where}: comap needs a CoMapFunction subclass, got {cls.__name__}")


def driver_side_collects(graph: ExecutionGraph) -> set[str]:
    """The collect nodes whose records the upstream tasks can ship to the driver themselves.

    A collect with one instance and unkeyed input decides nothing: every record it receives goes to the
    driver as it is. A keyed input runs its key selector (user code, whose errors must name their
    record) on the way, so such a collect keeps its task, as does one with several instances.
    """
    names = set()
    for node in graph.nodes.values():
        if node.kind != OperatorKind.COLLECT or node.parallelism != 1:
            continue
        inputs = graph.transformations[node.transformation_id].inputs
        if all(not i.partitioning.keyed and i.partitioning.key_selector is None for i in inputs):
            names.add(node.name)
    return names
