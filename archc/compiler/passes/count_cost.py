"""Parameter and FLOP counting: a per-node report and totals."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..dims import Dim, Sym, fmt_shape
from ..ir import Graph
from ..ops import REGISTRY


@dataclass
class NodeCost:
    path: str
    op: str
    shapes: list[str]  # output shapes
    params: int  # 0 for a node that reuses another's weights
    flops: Dim
    shared: bool = False
    cache_bytes: int = 0  # key/value cache bytes per token and batch element (causal attention)
    arch: bool = False  # architecture parameters of a supernet, not weights
    frozen: bool = False  # a plan froze its parameters


@dataclass
class CostReport:
    model: str
    inputs: dict[str, str]
    outputs: dict[str, str]
    nodes: list[NodeCost] = field(default_factory=list)

    @property
    def params(self) -> int:
        """Weights: what `module.parameters()` holds."""
        return sum(n.params for n in self.nodes if not n.arch)

    @property
    def trainable(self) -> int:
        """Weights that train (not frozen by a plan)."""
        return sum(n.params for n in self.nodes if not n.arch and not n.frozen)

    @property
    def arch_params(self) -> int:
        """Architecture parameters of a supernet (`module.arch_parameters()`)."""
        return sum(n.params for n in self.nodes if n.arch)

    @property
    def kv_cache_bytes_per_token(self) -> int:
        """Key/value cache memory per decoded token, per batch element."""
        return sum(n.cache_bytes for n in self.nodes)

    @property
    def flops(self) -> Dim:
        total: Dim = 0
        for n in self.nodes:
            total = total + n.flops
        return total

    def to_json(self, dims: dict[str, int] | None = None) -> dict:
        def num(d):
            if isinstance(d, Sym) and dims:
                d = d.subs(dims)
            return d if isinstance(d, int) else str(d)

        return {
            "model": self.model,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "totals": {"params": self.params, "trainable": self.trainable, "arch_params": self.arch_params, "flops": num(self.flops),
                       "kv_cache_bytes_per_token": self.kv_cache_bytes_per_token},
            "nodes": [{"path": n.path, "op": n.op, "shapes": n.shapes, "params": n.params,
                       "flops": num(n.flops), "shared": n.shared} for n in self.nodes],
        }


def count_params(graph: Graph) -> int:
    return count_cost(graph).params


def count_cost(graph: Graph) -> CostReport:
    report = CostReport(
        graph.name,
        inputs={graph.node(i).path: str(graph.node(i).outputs[0]) for i in graph.inputs},
        outputs={graph.node(o).path: str(graph.in_types(o)[0]) for o in graph.outputs},
    )
    for node in graph.nodes():
        if node.op in ("input", "output"):
            continue
        op = REGISTRY[node.op]
        ins = graph.in_types(node.id)
        params = 0 if node.shared else sum(math.prod(s) for s in op.params(node.attrs, ins).values())
        report.nodes.append(NodeCost(node.path, node.op, [fmt_shape(t.shape) for t in node.outputs], params,
                                     op.flops(node.attrs, ins, node.outputs), node.shared,
                                     op.cache_bytes_per_token(node.attrs, ins), op.is_arch,
                                     bool(node.meta.get("frozen"))))
    return report
