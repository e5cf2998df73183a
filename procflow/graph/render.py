"""The ExecutionGraph as text, Graphviz DOT or Mermaid (for `procflow graph` and for docs).

Nodes are tasks (one per parallel instance), grouped by operator; edges are channels, labelled with the
partitioning strategy and, for multi-input operators, the logical input they feed.
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
                label = group.partitioning.strategy + (f" in{edge.input_index}" if multi else "")
                labels[(edge.src, edge.dst)] = label
    return labels


def to_text(graph: ExecutionGraph) -> str:
    ops = _operators(graph)
    n_channels = len(graph.edges)
    lines = [f"{len(ops)} operators, {len(graph.nodes)} tasks, {n_channels} channels", ""]
    width = max(len(name) for name in ops)
    for name, nodes in ops.items():
        t = graph.transformations[nodes[0].transformation_id]
        ups = ", ".join(f"{i.upstream.name}[{i.partitioning.strategy}]" for i in t.inputs)
        lines.append(f"{name:<{width}}  {t.kind} {t.function.label}, parallelism {t.parallelism}"
                     + (f", from {ups}" if ups else ", source"))
    lines += ["", "tasks:", graph.describe()]
    return "\n".join(lines) + "\n"


def _ident(name: str) -> str:
    return re.sub(r"\W", "_", name)


def to_dot(graph: ExecutionGraph) -> str:
    out = ["digraph procflow {", "  rankdir=LR;", "  node [shape=box, style=rounded];"]
    for name, nodes in _operators(graph).items():
        t = graph.transformations[nodes[0].transformation_id]
        out.append(f'  subgraph "cluster_{_ident(name)}" {{')
        out.append(f'    label="{name} ({t.kind}, p={t.parallelism})";')
        for node in nodes:
            out.append(f'    "{node.name}";')
        out.append("  }")
    for (src, dst), label in _edge_labels(graph).items():
        out.append(f'  "{src}" -> "{dst}" [label="{label}"];')
    out.append("}")
    return "\n".join(out) + "\n"


def to_mermaid(graph: ExecutionGraph) -> str:
    out = ["flowchart LR"]
    for name, nodes in _operators(graph).items():
        t = graph.transformations[nodes[0].transformation_id]
        out.append(f'  subgraph {_ident(name)}_op["{name} ({t.kind}, p={t.parallelism})"]')
        for node in nodes:
            out.append(f'    {_ident(node.name)}["{node.name}"]')
        out.append("  end")
    for (src, dst), label in _edge_labels(graph).items():
        out.append(f"  {_ident(src)} -->|{label}| {_ident(dst)}")
    return "\n".join(out) + "\n"


def render_graph(graph: ExecutionGraph, fmt: str = "text") -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    return {"text": to_text, "dot": to_dot, "mermaid": to_mermaid}[fmt](graph)
