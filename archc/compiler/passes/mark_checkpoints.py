"""`checkpoint(on=SELECTOR)`: recompute the selected modules' activations in backward.

Each selected module (a block instance, say) becomes one checkpoint segment;
lowering runs it under torch.utils.checkpoint (non-reentrant).
"""
from __future__ import annotations

from ..ir import Graph
from ..selectors import select
from .apply_plan import plan_pass


@plan_pass("checkpoint")
def mark_checkpoints(graph: Graph, d, plan) -> Graph:
    sel = select(graph, d.args.on, d.args.exclude, span=d.at("on"), what="checkpoint selector")
    for n in graph.nodes():
        if n.id in sel.nodes:
            owner = next((m for m in sel.modules if n.path == m or n.path.startswith(m + ".")), n.path)
            n.meta["checkpoint"] = owner
    return graph
