"""The graph IR: a networkx.MultiDiGraph of op instances joined by tensor edges.

A node is one op application (`Node`); an edge carries one tensor from an
output port of its source to an input port of its destination, with its
`TensorType`. Model inputs and outputs are nodes of the `input` and `output`
ops, so every pass sees one flat graph; hierarchy lives in each node's module
`path` and block-call chain.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from .diagnostics import Span
from .dims import Dim, fmt_shape, numel


@dataclass(frozen=True)
class TensorType:
    shape: tuple[Dim, ...]
    dtype: str = "float32"

    @property
    def rank(self) -> int:
        return len(self.shape)

    def numel(self) -> Dim:
        return numel(self.shape)

    def __str__(self) -> str:
        prefix = "" if self.dtype == "float32" else self.dtype
        return prefix + fmt_shape(self.shape)


@dataclass(frozen=True)
class CallSite:
    """One block call on the way to a node: which block, at which path, from where."""

    block: str
    path: str
    span: Span | None


@dataclass
class Node:
    id: int
    op: str
    attrs: Any  # the op's pydantic Attrs instance
    path: str  # dotted module path; the state_dict prefix when the op has weights
    span: Span | None = None
    calls: tuple[CallSite, ...] = ()
    outputs: list[TensorType] = field(default_factory=list)
    shared: bool = False  # True when this node reuses the module created at `path` earlier
    meta: dict = field(default_factory=dict)  # open annotations passes write into


@dataclass(frozen=True)
class Value:
    """A reference to one output of a node: what a tensor variable holds."""

    node: int
    port: int
    type: TensorType


class Graph:
    def __init__(self, name: str = "model"):
        self.name = name
        self.g = nx.MultiDiGraph()
        self._next = 0
        self.inputs: list[int] = []   # input node ids, in declaration order
        self.outputs: list[int] = []  # output node ids, in declaration order
        self.containers: dict[str, str] = {}  # path -> "seq" | "block:Name": module containers
        self.decisions: dict[str, int] = {}  # search-space label -> chosen candidate index
        self.plan = None  # the plan applied to this graph, if any

    # -- building ---------------------------------------------------------
    def add(self, op: str, attrs, inputs: list[Value], outputs: list[TensorType], path: str,
            span: Span | None = None, calls: tuple[CallSite, ...] = (), shared: bool = False) -> Node:
        node = Node(self._next, op, attrs, path, span, calls, list(outputs), shared)
        self._next += 1
        self.g.add_node(node.id, node=node)
        for port, v in enumerate(inputs):
            self.g.add_edge(v.node, node.id, src_port=v.port, dst_port=port, type=v.type)
        if op == "input":
            self.inputs.append(node.id)
        elif op == "output":
            self.outputs.append(node.id)
        return node

    # -- reading ----------------------------------------------------------
    def node(self, nid: int) -> Node:
        return self.g.nodes[nid]["node"]

    def nodes(self) -> list[Node]:
        """Nodes in a topological order that keeps creation order where it can."""
        return [self.node(n) for n in nx.lexicographical_topological_sort(self.g)]

    def in_values(self, nid: int) -> list[Value]:
        edges = sorted(self.g.in_edges(nid, data=True), key=lambda e: e[2]["dst_port"])
        return [Value(u, d["src_port"], d["type"]) for u, _, d in edges]

    def in_types(self, nid: int) -> list[TensorType]:
        return [v.type for v in self.in_values(nid)]

    def users(self, nid: int, port: int | None = None) -> list[tuple[int, int]]:
        """(consumer node, consumer port) pairs that read node `nid`'s output `port`."""
        return [(v, d["dst_port"]) for _, v, d in self.g.out_edges(nid, data=True)
                if port is None or d["src_port"] == port]

    def __len__(self) -> int:
        return self.g.number_of_nodes()

    def verify(self) -> None:
        """Check the IR's invariants; passes' tests run this after every pass."""
        assert nx.is_directed_acyclic_graph(self.g), "graph has a cycle"
        for n in self.nodes():
            ports = sorted(d["dst_port"] for _, _, d in self.g.in_edges(n.id, data=True))
            assert ports == list(range(len(ports))), f"node {n.id} ({n.path}) has ports {ports}"
            for _, _, d in self.g.out_edges(n.id, data=True):
                assert d["src_port"] < len(n.outputs), f"edge from missing port of {n.path}"
                assert d["type"] == n.outputs[d["src_port"]], f"stale edge type after {n.path}"
