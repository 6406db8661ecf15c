"""Pruning: structured (channels and heads, group-wise, from the IR) and unstructured (masks).

Structured pruning reads the coupled channels from the graph
(archc.compiler.passes.prune_groups), ranks each group's atoms by a criterion,
removes the lowest `amount` of them (per group, or ranked across groups with
scope="global"), rewrites the graph's widths and slices the weights to match:

    res = prune_structured(graph, state_dict, on="op:conv", amount=0.5, criterion="l2")
    res.graph          # the smaller graph: archc.compress.spec.write_spec(res.graph) is its spec
    res.state_dict     # the sliced weights, keyed by the same module paths
    build_module(res.graph).load_state_dict(res.state_dict)

Criteria (per atom, summed over the group's weights, each member normalised by its
mean as Torch-Pruning does, then averaged): "l1" and "l2" magnitude, "bn_scale"
(|gamma| of the group's batch norms; magnitude where it has none), "taylor"
(|w · dL/dw|, from gradients the caller accumulated on the plan's data).

Unstructured pruning zeroes the smallest weights through masks
(torch.nn.utils.prune: `weight_orig` and `weight_mask` while masked; a mask is not
a saving), per layer or globally, and `make_permanent` folds them into the weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..compiler.diagnostics import CompileError, Diagnostic, Span
from ..compiler.ir import Graph
from ..compiler.ops import REGISTRY
from ..compiler.passes.prune_groups import Analysis, analyze, describe, prune_graph
from ..compiler.selectors import select

CRITERIA = ("l1", "l2", "bn_scale", "taylor")


@dataclass
class PruneResult:
    graph: Graph
    state_dict: dict[str, torch.Tensor]
    analysis: Analysis
    removed: set[int]
    groups: list = field(default_factory=list)  # describe() rows of the groups pruned, with before/after
    notes: list[str] = field(default_factory=list)


def selected_nodes(graph: Graph, on: str, exclude: str | None, span: Span | None = None) -> tuple[set[int], set[int]]:
    sel = select(graph, on, exclude, span=span, what="prune selector").nodes
    ex = select(graph, exclude, span=span, what="prune exclude").nodes if exclude else set()
    return sel, ex


def importance(analysis: Analysis, state: dict[str, torch.Tensor], criterion: str = "l2",
               grads: dict[str, torch.Tensor] | None = None) -> dict[int, float]:
    """A score per atom (higher: more important), comparable across groups."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion `{criterion}`; one of {', '.join(CRITERIA)}")
    if criterion == "taylor" and not grads:
        raise ValueError("the taylor criterion needs gradients")
    scores: dict[int, float] = {}
    for grp in analysis.groups:
        members = [m for m in grp.members if m.weight and m.key in state]
        if criterion == "bn_scale" and any(m.role == "norm" for m in members):
            members = [m for m in members if m.role == "norm"]
        per_member = []
        for m in members:
            w = state[m.key].detach().float()
            if criterion == "taylor":
                g = grads.get(m.key)
                if g is None:
                    continue
                t = (w * g.float()).abs()
            elif criterion == "l1" or criterion == "bn_scale":
                t = w.abs()
            else:
                t = w.pow(2)
            t = t.movedim(m.dim, 0).reshape(t.shape[m.dim], -1).sum(1) if t.dim() > 1 else t
            acc: dict[int, float] = {}
            for e, v in zip(m.elems, t.tolist()):
                a = analysis.atom(e)
                acc[a] = acc.get(a, 0.0) + v
            mean = sum(acc.values()) / max(1, len(acc))
            per_member.append({a: v / mean if mean > 0 else 0.0 for a, v in acc.items()})
        for a in grp.atoms:
            vals = [pm[a] for pm in per_member if a in pm]
            scores[a] = sum(vals) / len(vals) if vals else 0.0
    return scores


def slice_state(state: dict[str, torch.Tensor], keep: dict[str, dict[int, list[int]]]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        dims = keep.get(k)
        if dims:
            for d, idx in dims.items():
                v = v.index_select(d, torch.as_tensor(idx, dtype=torch.long))
        out[k] = v.clone() if dims else v
    return out


def prune_structured(graph: Graph, state: dict[str, torch.Tensor], *, on: str = "op:conv,op:linear",
                     exclude: str | None = None, amount: float = 0.5, scope: str = "layer", criterion: str = "l2",
                     grads: dict[str, torch.Tensor] | None = None, span: Span | None = None) -> PruneResult:
    """Remove channels (and heads) group-wise; return the smaller graph and its sliced weights."""
    analysis = analyze(graph)
    sel, ex = selected_nodes(graph, on, exclude, span)
    groups = analysis.prunable(sel, ex)
    scores = importance(analysis, state, criterion, grads)
    removed = analysis.choose(groups, amount, scores, scope)
    small = prune_graph(analysis, removed, span)
    sliced = slice_state(state, analysis.keep_indices(removed))
    rows = []
    for grp, row in zip(groups, describe(analysis, groups)):
        row["removed"] = sum(1 for a in grp.atoms if a in removed)
        rows.append(row)
    notes = [f"{path}: {why}" for path, why in analysis.notes.items()]
    if not groups:
        raise CompileError(Diagnostic("E0805", f"nothing to prune: no channel group selected by `{on}` is free "
                                      "to shrink", span, help="every selected layer's width is fixed: "
                                      + "; ".join(notes[:3]) if notes else None))
    return PruneResult(small, sliced, analysis, removed, rows, notes)


def zero_removed(model: torch.nn.Module, analysis: Analysis, removed: set[int]) -> None:
    """Zero, in the unpruned network, what structured pruning removes: the removed channels'
    output weights, biases and norm scales. Where activations map 0 to 0, the network then
    computes what the pruned one computes (what the tests check)."""
    state = model.state_dict()
    with torch.no_grad():
        for m in analysis.members:
            if m.role not in ("out", "norm", "bias"):
                continue
            idx = [i for i, e in enumerate(m.elems) if analysis.atom(e) in removed]
            if idx and m.key in state:
                state[m.key].index_fill_(m.dim, torch.as_tensor(idx, dtype=torch.long), 0.0)


# -- unstructured ------------------------------------------------------------------------------

def weight_params(graph: Graph, nodes: set[int]) -> list[tuple[str, str]]:
    """(module path, parameter name) of the weight matrices and kernels of the selected nodes."""
    out = []
    for n in graph.nodes():
        if n.id not in nodes or n.shared or n.op in ("input", "output"):
            continue
        params = REGISTRY[n.op].params(n.attrs, graph.in_types(n.id))
        for name, shape in params.items():
            if len(shape) >= 2 and name.rsplit(".", 1)[-1].endswith("weight"):
                mod, _, leaf = f"{n.path}.{name}".rpartition(".")
                out.append((mod, leaf))
    return out


def prune_unstructured(model: torch.nn.Module, params: list[tuple[str, str]], amount: float,
                       scope: str = "layer") -> int:
    """Mask the smallest `amount` of the weights (|w|, per layer or ranked globally);
    returns how many weights the masks zero."""
    import torch.nn.utils.prune as tp

    targets = [(model.get_submodule(mod), name) for mod, name in params]
    if scope == "global":
        tp.global_unstructured(targets, pruning_method=tp.L1Unstructured, amount=amount)
    else:
        for mod, name in targets:
            tp.l1_unstructured(mod, name, amount=amount)
    return sum(int((getattr(mod, name + "_mask") == 0).sum()) for mod, name in targets)


def make_permanent(model: torch.nn.Module) -> int:
    """Fold every pruning mask into its weight (the zeros stay, the masks go); returns how many."""
    import torch.nn.utils.prune as tp

    n = 0
    for mod in model.modules():
        for hook in list(getattr(mod, "_forward_pre_hooks", {}).values()):
            if isinstance(hook, tp.BasePruningMethod):
                tp.remove(mod, hook._tensor_name)
                n += 1
    return n
