"""Run a plan's directives over the graph, in the order the plan writes them.

Each graph-rewriting directive has a pass (one file each) registered here by
name; directives that only configure an analysis (precision, optimizer,
device...) have none and are read by the analysis itself.
"""
from __future__ import annotations

from typing import Callable

from ..diagnostics import CompileError
from ..ir import Graph
from ..plans import Plan, PlanDirective

PLAN_PASSES: dict[str, Callable[[Graph, PlanDirective, Plan], Graph]] = {}


def plan_pass(name: str):
    def deco(fn):
        PLAN_PASSES[name] = fn
        return fn

    return deco


def apply_plan(graph: Graph, plan: Plan) -> Graph:
    from . import freeze, mark_checkpoints, insert_lora, insert_residual  # noqa: F401  (they register themselves)
    from ..selectors import select

    for d in plan.directives:
        fn = PLAN_PASSES.get(d.name)
        if fn is not None:
            # What the directive selects, for `archc check --plan`; a pass may record it itself
            # (and reports a selector that matches nothing with its own diagnostic).
            seen = None
            if isinstance(getattr(d.args, "on", None), str):
                try:
                    seen = select(graph, d.args.on, getattr(d.args, "exclude", None)).modules
                except CompileError:
                    pass
            d.matched = None
            graph = fn(graph, d, plan)
            if d.matched is None:
                d.matched = seen
    graph.plan = plan
    return graph
