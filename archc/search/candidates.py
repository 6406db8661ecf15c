"""Candidates of a space: deciding one choice at a time, enumerating all of them, and
what the graph alone says about one (parameters, FLOPs, memory). Never imports torch.

A space's choices may open further choices (a depth choice opens the choices of
the extra copies), so a candidate is decided the way elaboration meets its
choices: elaborate with what is decided so far (the rest at their first
candidate), decide the first choice met that is still open, repeat. A label that
is never met under the decisions taken is never decided, so every decision a
candidate records is one that shapes it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..compiler.diagnostics import CompileError
from .config import SearchConfig, graph_metrics


@dataclass
class Candidate:
    decisions: dict[str, int]  # label -> candidate index, for every choice the candidate meets
    graph: Any  # the elaborated Graph
    metrics: dict[str, Any] = field(default_factory=dict)  # params, flops, memory (from the graph)

    def arch(self, cfg: SearchConfig) -> dict[str, str]:
        """The decisions as written in the spec."""
        return {lbl: cfg.decisions[lbl][i] for lbl, i in self.decisions.items()}

    @property
    def key(self) -> str:
        """A canonical text of the decisions (equal keys: the same architecture)."""
        return ",".join(f"{k}={v}" for k, v in sorted(self.decisions.items()))


def decide(program, cfg: SearchConfig, suggest: Callable[[str, int], int]) -> Candidate:
    """Decide a candidate choice by choice; `suggest(label, n_candidates)` gives an index."""
    assign: dict[str, int] = {}
    while True:
        graph = program.graph(cfg.model, dims=cfg.dims, args=cfg.args, decisions=dict(assign), strict=False)
        open_ = next((lbl for lbl in graph.decisions if lbl not in assign), None)
        if open_ is None:
            return Candidate(assign, graph)
        n = len(cfg.decisions[open_]) if open_ in cfg.decisions else None
        if n is None:  # pragma: no cover - exploration finds every label
            raise CompileError([])
        v = int(suggest(open_, n))
        if not 0 <= v < n:
            raise ValueError(f"decision {open_}={v} is out of range 0..{n - 1}")
        assign[open_] = v


def build_candidate(program, cfg: SearchConfig, decisions: dict[str, int]) -> Candidate:
    """The candidate for complete decisions (as recorded by an earlier trial)."""
    graph = program.graph(cfg.model, dims=cfg.dims, args=cfg.args, decisions=dict(decisions))
    return Candidate(dict(decisions), graph)


def enumerate_candidates(program, cfg: SearchConfig, limit: int) -> list[dict[str, int]]:
    """Every complete set of decisions, depth first in the order choices are met."""
    out: list[dict[str, int]] = []

    def walk(assign: dict[str, int]) -> None:
        graph = program.graph(cfg.model, dims=cfg.dims, args=cfg.args, decisions=dict(assign), strict=False)
        open_ = next((lbl for lbl in graph.decisions if lbl not in assign), None)
        if open_ is None:
            out.append(assign)
            if len(out) > limit:
                raise OverflowError(f"more than {limit} candidates")
            return
        for v in range(len(cfg.decisions[open_])):
            walk({**assign, open_: v})

    walk({})
    return out


def measure_graph(cand: Candidate, cfg: SearchConfig) -> dict[str, Any]:
    """params, flops and memory of a candidate, from its graph (see config.graph_metrics)."""
    m = graph_metrics(cand.graph, cfg.dims, plan=cfg.plan_obj, batch=cfg.batch)
    cand.metrics.update({k: m[k] for k in ("params", "flops", "memory", "memory_kind") if m.get(k) is not None})
    return cand.metrics


def broken_constraint(cfg: SearchConfig, values: dict[str, Any], metrics=("params", "flops", "memory")) -> str | None:
    """Why the candidate is rejected (the first constraint it breaks among `metrics`), or None."""
    for c in cfg.constraints:
        if c.metric in metrics and c.metric in values and not c.holds(values[c.metric]):
            return f"{c.metric} = {fmt_metric(c.metric, values[c.metric])} breaks `{c.text}`"
    return None


def fmt_metric(name: str, v: Any) -> str:
    if v is None:
        return "-"
    if name == "accuracy":
        return f"{100 * v:.2f}%"
    if name == "latency":
        return f"{v:.3f} ms"
    if name == "memory":
        for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if v >= size:
                return f"{v / size:.2f} {unit}"
        return f"{int(v)} B"
    if name in ("params", "flops"):
        for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
            if v >= size:
                return f"{v / size:.2f}{unit}"
        return str(int(v))
    return f"{v:.4g}" if isinstance(v, float) else str(v)
