"""`freeze(SELECTOR)` / `unfreeze(SELECTOR)`: which parameters train.

A frozen node's parameters get no gradient and no optimizer state; lowering
sets `requires_grad_(False)` on them, and the memory estimate drops their
gradient and optimizer bytes. Later directives override earlier ones.
"""
from __future__ import annotations

from ..ir import Graph
from ..selectors import select
from .apply_plan import plan_pass


@plan_pass("freeze")
def freeze(graph: Graph, d, plan) -> Graph:
    for nid in select(graph, d.args.on, d.args.exclude, span=d.at("on"), what="freeze selector").nodes:
        graph.node(nid).meta["frozen"] = True
    return graph


@plan_pass("unfreeze")
def unfreeze(graph: Graph, d, plan) -> Graph:
    for nid in select(graph, d.args.on, d.args.exclude, span=d.at("on"), what="unfreeze selector").nodes:
        graph.node(nid).meta["frozen"] = False
    return graph
