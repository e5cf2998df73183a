"""Physical plan: one TaskNode per parallel instance, one Edge per (upstream, downstream) instance pair.

    Transformation (map, parallelism 2) ──► TaskNode map_0, map_1
    Input(upstream=source p=1)          ──► Edge source_0→map_0, source_0→map_1, grouped as one OutGroup

Each node knows its exact number of input channels (`num_inputs`): the stop protocol ends a task after
one StopSignal per input channel, so this count is the whole of end-of-stream accounting.

Chains (issue 19): operators joined by a forward edge run in one task and pass records by function call.

    source p=2 ─forward─► map p=2 ─forward─► filter p=2 ─hash─► reduce p=2
    chains: (source_0, map_0, filter_0)  (source_1, map_1, filter_1)  (reduce_0)  (reduce_1)

The graph still has one TaskNode per operator instance (counters, job table, errors and the dashboard
name each operator); a forward edge becomes one Edge per instance (`x_i -> y_i`) in an OutGroup marked
`chained`, and `chains` groups the nodes that one task runs, head first. A forward edge: the downstream
operator has this one input, the upstream feeds nothing else, both have the same parallelism, and the
edge is unkeyed, not broadcast and not placed by the user (`Partitioning.explicit`). A collect with one
instance stays out: the driver runs it (`driver_side_collects`), which already costs no hop.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from procflow.core import functions as fx
from procflow.core.enums import OperatorKind
from procflow.core.splits import SplitSource
from procflow.graph.transformation import BALANCE, ROUND_ROBIN, ChainPolicy, Input, Partitioning, Transformation


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
    # A forward edge fused into a chain: one edge, to the same instance index, passed by function call.
    chained: bool = False

    @property
    def label(self) -> str:
        """The strategy as graphs and tools show it."""
        return "chained" if self.chained else self.partitioning.strategy


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


def instance_name(operator: str, index: int) -> str:
    """The task name of `operator`'s instance `index` (a checkpoint names its state files by it)."""
    return f"{operator}_{index}"


@dataclass
class ExecutionGraph:
    nodes: dict[str, TaskNode] = field(default_factory=dict)
    transformations: dict[int, Transformation] = field(default_factory=dict)
    # head node -> the nodes its task runs, head first, in record order; a node in no chain runs alone.
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _head_of: dict[str, str] = field(default_factory=dict, repr=False)

    def set_chains(self, chains: dict[str, tuple[str, ...]]) -> None:
        self.chains = dict(chains)
        self._head_of = {member: head for head, members in chains.items() for member in members}

    def head_of(self, name: str) -> str:
        """The node whose task runs `name` (itself when it runs alone)."""
        return self._head_of.get(name, name)

    def chain(self, name: str) -> tuple[str, ...]:
        """Every node of the task that runs `name`, head first."""
        return self.chains.get(self.head_of(name), (name,))

    def heads(self) -> list[TaskNode]:
        """One node per task: the head of each chain, and every node that runs alone, in graph order."""
        return [n for n in self.nodes.values() if self.head_of(n.name) == n.name]

    @property
    def channel_edges(self) -> list[Edge]:
        """The edges that are real channels (rings, queues, actor calls): all but those inside chains."""
        return [e for n in self.nodes.values() for e in n.in_edges if self.head_of(e.dst) == e.dst]

    @property
    def edges(self) -> list[Edge]:
        return [e for n in self.nodes.values() for e in n.in_edges]

    def sources(self) -> list[TaskNode]:
        return [n for n in self.nodes.values() if not n.in_edges]

    def describe(self) -> str:
        lines = []
        for node in self.nodes.values():
            outs = ", ".join(f"{g.target}[{g.label}]" for g in node.out_groups) or "-"
            lines.append(f"{node.name:<24} inputs={node.num_inputs:<3} -> {outs}")
        return "\n".join(lines)


def compile_graph(transformations: list[Transformation], *, chaining: bool = True) -> ExecutionGraph:
    """Expand the logical plan; raises ValueError/TypeError for graphs that cannot work.

    `chaining` (config "chaining"): fuse forward edges into chains, and let a splittable source whose
    parallelism the user did not set follow the operator it feeds (see the module docstring).
    """
    if not transformations:
        raise ValueError("the pipeline is empty: add a source with env.from_batch(...) or "
                         "env.from_source(...) before submit()")
    for t in transformations:
        _validate(t)
    consumers: dict[int, list[Transformation]] = {}
    for t in transformations:
        for inp in t.inputs:
            consumers.setdefault(inp.upstream.id, []).append(t)
    par = plan_parallelism(transformations, consumers, chaining)
    in_edges: dict[str, list[Edge]] = {}
    out_groups: dict[str, list[OutGroup]] = {}
    slot_counter: dict[str, int] = {}
    chained_groups: list[tuple[str, str]] = []
    for t in transformations:
        for inp in t.inputs:
            up = inp.upstream
            chained = chaining and _forward(inp, t, consumers, par)
            for i in range(par[up.id]):
                src = instance_name(up.name, i)
                groups = out_groups.setdefault(src, [])
                edges = []
                # A chained edge joins instance i to instance i only: the records never leave the task.
                for j in (i,) if chained else range(par[t.id]):
                    dst = instance_name(t.name, j)
                    slot = slot_counter.get(dst, 0)
                    slot_counter[dst] = slot + 1
                    edge = Edge(src, dst, len(groups), slot, inp.input_index)
                    edges.append(edge)
                    in_edges.setdefault(dst, []).append(edge)
                    if chained:
                        chained_groups.append((src, dst))
                groups.append(OutGroup(t.name, inp.partitioning, tuple(edges), chained))
    graph = ExecutionGraph(transformations={t.id: t for t in transformations})
    for t in transformations:
        for i in range(par[t.id]):
            name = instance_name(t.name, i)
            graph.nodes[name] = TaskNode(name, t.name, t.kind, i, par[t.id], t.id,
                                         tuple(in_edges.get(name, ())), tuple(out_groups.get(name, ())))
    graph.set_chains(_group_chains(graph, chained_groups))
    return graph


def plan_parallelism(transformations: list[Transformation], consumers: dict[int, list[Transformation]],
                     chaining: bool) -> dict[int, int]:
    """Each operator's parallelism: as given, except that a splittable source whose parallelism the user
    did not set takes that of the one operator it feeds over a forward edge ("sources follow their
    work": `from_batch(list).map(f, parallelism=W)` then runs W tasks with no hop between source and
    map, where one source process used to feed W maps)."""
    par = {t.id: t.parallelism for t in transformations}
    if not chaining:
        return par
    for t in transformations:
        if not t.is_source or t.parallelism_set or not _splittable(t):
            continue
        downstream = consumers.get(t.id, [])
        if len(downstream) != 1:
            continue
        down = downstream[0]
        inp = next(i for i in down.inputs if i.upstream is t)
        if _fusable(inp, down, consumers):
            par[t.id] = par[down.id]
    return par


def _splittable(t: Transformation) -> bool:
    target = t.function.target
    cls = target if inspect.isclass(target) else type(target)
    return issubclass(cls, SplitSource)


# Operators that may run after another in its task: one input, no state shared across keys. A reduce
# takes a keyed stream (never forward); comap and join take several inputs.
_CHAINABLE_DOWNSTREAM = frozenset({OperatorKind.MAP, OperatorKind.FILTER, OperatorKind.FLATMAP,
                                   OperatorKind.SINK, OperatorKind.COLLECT})


def _fusable(inp: Input, down: Transformation, consumers: dict[int, list[Transformation]]) -> bool:
    """Every condition of a forward edge but equal parallelism."""
    up = inp.upstream
    part = inp.partitioning
    unkeyed = not part.keyed and part.key_selector is None and part.strategy in (ROUND_ROBIN, BALANCE)
    return (unkeyed and not part.explicit
            and len(down.inputs) == 1 and len(consumers.get(up.id, [])) == 1
            and up.chaining is not ChainPolicy.NEVER and down.chaining is ChainPolicy.AUTO
            and down.kind in _CHAINABLE_DOWNSTREAM)


def _forward(inp: Input, down: Transformation, consumers: dict[int, list[Transformation]],
             par: dict[int, int]) -> bool:
    """True where the edge is fused into a chain. A one-instance collect is left to the driver, which
    runs it without a task of its own (driver_side_collects)."""
    if par[inp.upstream.id] != par[down.id] or not _fusable(inp, down, consumers):
        return False
    return not (down.kind == OperatorKind.COLLECT and par[down.id] == 1)


def _group_chains(graph: ExecutionGraph, links: list[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    """head -> members for every node, from the chained (src, dst) pairs; graph order is topological,
    so a member's upstream is placed before it."""
    head_of = {name: name for name in graph.nodes}
    following = dict(links)   # src -> dst: a node feeds at most one chained edge
    for src, dst in links:
        head_of[dst] = head_of[src]
    chains: dict[str, tuple[str, ...]] = {}
    for name in graph.nodes:
        if head_of[name] != name:
            continue
        members = [name]
        while members[-1] in following:
            members.append(following[members[-1]])
        chains[name] = tuple(members)
    return chains


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
