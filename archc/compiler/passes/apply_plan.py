"""Run a plan's directives over the graph, in the order the plan writes them.

Each graph-rewriting directive has a pass (one file each) registered here by
name; directives that only configure an analysis (precision, optimizer,
device...) have none and are read by the analysis itself.
"""
from __future__ import annotations

from typing import Callable

from ..ir import Graph
from ..plans import Plan, PlanDirective

PLAN_PASSES: dict[str, Callable[[Graph, PlanDirective, Plan], Graph]] = {}


def plan_pass(name: str):
    def deco(fn):
        PLAN_PASSES[name] = fn
        return fn

    return deco


def apply_plan(graph: Graph, plan: Plan) -> Graph:
    from . import freeze, mark_checkpoints  # noqa: F401  (they register themselves)

    for d in plan.directives:
        fn = PLAN_PASSES.get(d.name)
        if fn is not None:
            graph = fn(graph, d, plan)
    graph.plan = plan
    return graph
