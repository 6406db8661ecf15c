"""Costs per input stream: the cost report grouped by which model inputs reach each node.

A model with several inputs (a two-stream network's `input rgb` and `input flow`, a
multimodal model's image and text) is often several towers joined late. Each node
belongs to the set of inputs it depends on (its ancestors in the graph): nodes that
only `rgb` reaches are the rgb stream, nodes that both reach are where the streams
are fused (`rgb+flow`), nodes no input reaches are constants (parameters used on
their own, a supernet's α). Parameters of a module used again count once, where it is
created, as in the cost report. Never imports torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..dims import Dim, Sym
from ..ir import Graph
from ..ops import REGISTRY


@dataclass
class StreamCost:
    inputs: tuple[str, ...]  # the model inputs that reach these nodes, in declaration order
    params: int
    flops: Dim
    nodes: int

    @property
    def name(self) -> str:
        return "+".join(self.inputs) if self.inputs else "constants"

    @property
    def fusion(self) -> bool:
        return len(self.inputs) > 1


def reaching_inputs(graph: Graph) -> dict[int, tuple[str, ...]]:
    """Node id -> the names of the model inputs it depends on, in declaration order."""
    order = {graph.node(i).path: k for k, i in enumerate(graph.inputs)}
    reach: dict[int, set[str]] = {}
    for n in graph.nodes():
        s: set[str] = {n.path} if n.op == "input" else set()
        for v in graph.in_values(n.id):
            s |= reach[v.node]
        reach[n.id] = s
    return {k: tuple(sorted(v, key=order.__getitem__)) for k, v in reach.items()}


def stream_costs(graph: Graph) -> list[StreamCost]:
    """Parameters, FLOPs and node counts per set of reaching inputs: single inputs first
    (declaration order), then fusions, then constants."""
    reach = reaching_inputs(graph)
    groups: dict[tuple[str, ...], StreamCost] = {}
    for name in (graph.node(i).path for i in graph.inputs):
        groups[(name,)] = StreamCost((name,), 0, 0, 0)
    for n in graph.nodes():
        if n.op in ("input", "output"):
            continue
        op = REGISTRY[n.op]
        ins = graph.in_types(n.id)
        g = groups.setdefault(reach[n.id], StreamCost(reach[n.id], 0, 0, 0))
        if not n.shared:
            g.params += sum(math.prod(s) for s in op.params(n.attrs, ins).values())
        g.flops = g.flops + op.flops(n.attrs, ins, n.outputs)
        g.nodes += 1
    index = {name: k for k, name in enumerate(graph.node(i).path for i in graph.inputs)}
    return sorted(groups.values(), key=lambda c: (not c.inputs, len(c.inputs), [index[i] for i in c.inputs]))


def stream_summary(graph: Graph, dims: dict[str, int] | None = None) -> str | None:
    """One line for `archc build`: each stream's parameters and FLOPs; None for a model
    with one input."""
    if len(graph.inputs) < 2:
        return None
    from ..lower.report import human

    def num(d):
        return human(d.subs(dims) if isinstance(d, Sym) and dims else d)

    parts = []
    for c in stream_costs(graph):
        if not c.nodes:
            continue
        label = c.name + (" (fusion)" if c.fusion else "")
        parts.append(f"{label} {num(c.params)} params, {num(c.flops)} FLOPs")
    return "per input stream: " + "; ".join(parts)
