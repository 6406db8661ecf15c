"""Shape inference over the whole graph.

Elaboration infers each node's shape as it adds it (later decisions depend on
it); this pass re-derives every type from the inputs so that a rewriting pass
(LoRA, residual insertion, pruning) leaves a graph whose types are current.
"""
from __future__ import annotations

from ..diagnostics import CompileError, Diagnostic
from ..ir import Graph
from ..ops import REGISTRY, ShapeError


def infer_shapes(graph: Graph) -> Graph:
    for node in graph.nodes():
        if node.op == "input":
            continue
        ins = graph.in_types(node.id)
        try:
            node.outputs = list(REGISTRY[node.op].infer(node.attrs, ins))
        except ShapeError as e:
            raise CompileError(Diagnostic(e.code, e.message, node.span, label=e.label, help=e.help))
        for _, _, data in graph.g.out_edges(node.id, data=True):
            data["type"] = node.outputs[data["src_port"]]
    return graph
