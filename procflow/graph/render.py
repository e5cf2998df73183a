"""The ExecutionGraph as text, Graphviz DOT or Mermaid (for `procflow graph` and for docs).

Nodes are operator instances, grouped by operator; edges are channels, labelled with the partitioning
strategy and, for multi-input operators, the logical input they feed. An edge inside a chain (operators
that one task runs, passing records by call) is labelled "chained"; the text form lists every task with
the operators it runs, and DOT draws chained edges bold.
"""

from __future__ import annotations

import re

from procflow.graph.execution_graph import ExecutionGraph

FORMATS = ("text", "dot", "mermaid")


def _operators(graph: ExecutionGraph) -> dict[str, list]:
    ops: dict[str, list] = {}
    for node in graph.nodes.values():
        ops.setdefault(node.operator, []).append(node)
    return ops


def _edge_labels(graph: ExecutionGraph) -> dict[tuple[str, str], str]:
    labels = {}
    for node in graph.nodes.values():
        for group in node.out_groups:
            for edge in group.edges:
                dst = graph.nodes[edge.dst]
                multi = len(graph.transformations[dst.transformation_id].inputs) > 1
                label = group.label + (f" in{edge.input_index}" if multi else "")
                labels[(edge.src, edge.dst)] = label
    return labels


def _chained_inputs(graph: ExecutionGraph) -> set[str]:
    """Operators whose input is fused into their upstream's task."""
    return {graph.nodes[e.dst].operator for n in graph.nodes.values() for g in n.out_groups if g.chained
            for e in g.edges}


def to_text(graph: ExecutionGraph) -> str:
    ops = _operators(graph)
    heads = graph.heads()
    lines = [f"{len(ops)} operators, {len(heads)} tasks, {len(graph.channel_edges)} channels", ""]
    width = max(len(name) for name in ops)
    chained = _chained_inputs(graph)
    for name, nodes in ops.items():
        t = graph.transformations[nodes[0].transformation_id]
        strategy = "chained" if name in chained else None
        ups = ", ".join(f"{i.upstream.name}[{strategy or i.partitioning.strategy}]" for i in t.inputs)
        lines.append(f"{name:<{width}}  {t.kind} {t.function.label}, parallelism {len(nodes)}"
                     + (f", from {ups}" if ups else ", source"))
    fused = [graph.chain(h.name) for h in heads if len(graph.chain(h.name)) > 1]
    if fused:
        lines += ["", "chains (one task each, records passed by call):"]
        lines += [f"  {' -> '.join(members)}" for members in fused]
    lines += ["", "operator instances:", graph.describe()]
    return "\n".join(lines) + "\n"


def _ident(name: str) -> str:
    return re.sub(r"\W", "_", name)


def to_dot(graph: ExecutionGraph) -> str:
    out = ["digraph procflow {", "  rankdir=LR;", "  node [shape=box, style=rounded];"]
    for name, nodes in _operators(graph).items():
        t = graph.transformations[nodes[0].transformation_id]
        out.append(f'  subgraph "cluster_{_ident(name)}" {{')
        out.append(f'    label="{name} ({t.kind}, p={len(nodes)})";')
        for node in nodes:
            out.append(f'    "{node.name}";')
        out.append("  }")
    for (src, dst), label in _edge_labels(graph).items():
        style = ", style=bold" if graph.head_of(dst) != dst else ""
        out.append(f'  "{src}" -> "{dst}" [label="{label}"{style}];')
    out.append("}")
    return "\n".join(out) + "\n"


def to_mermaid(graph: ExecutionGraph) -> str:
    out = ["flowchart LR"]
    for name, nodes in _operators(graph).items():
        t = graph.transformations[nodes[0].transformation_id]
        out.append(f'  subgraph {_ident(name)}_op["{name} ({t.kind}, p={len(nodes)})"]')
        for node in nodes:
            out.append(f'    {_ident(node.name)}["{node.name}"]')
        out.append("  end")
    for (src, dst), label in _edge_labels(graph).items():
        arrow = "==>" if graph.head_of(dst) != dst else "-->"
        out.append(f"  {_ident(src)} {arrow}|{label}| {_ident(dst)}")
    return "\n".join(out) + "\n"


def render_graph(graph: ExecutionGraph, fmt: str = "text") -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    return {"text": to_text, "dot": to_dot, "mermaid": to_mermaid}[fmt](graph)
