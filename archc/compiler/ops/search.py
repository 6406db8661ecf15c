"""Ops of relaxed search spaces: architecture parameters and mixed operations.

A supernet (`relax="darts"`) gives every relaxed decision an `arch_param`
table (one row per edge, one column per candidate) and replaces the decision
by a `mixed` node over all candidates. Architecture parameters are counted and
optimised apart from the weights (`arch_parameters()` vs `parameters()`).
"""
from __future__ import annotations

from typing import Literal

from ..ir import TensorType
from .base import Attrs, Code, Footprint, Op, Param, Saved, ShapeError, register


class ArchParamAttrs(Attrs):
    rows: int
    cols: int


@register
class ArchParam(Op):
    name = "arch_param"
    Attrs = ArchParamAttrs
    arity = 0
    is_arch = True  # its parameters are architecture parameters, not weights
    doc = "A table of architecture parameters α (rows: edges, columns: candidates), initialised to 1e-3·N(0, 1)."

    def infer(self, a, ins):
        return [TensorType((a.rows, a.cols))]

    def params(self, a, ins):
        return {"": (a.rows, a.cols)}

    def lower(self, a, ins, outs):
        return Param((a.rows, a.cols), init="randn", scale=1e-3)

    def saved(self, a, ins, outs, ctx):
        return []

    def footprint(self, a, ins, outs, ctx):
        return Footprint(views={0: 0})  # the parameter itself


class MixedAttrs(Attrs):
    row: int  # which row of the α table weighs this edge
    relax: Literal["softmax", "gumbel"] = "softmax"


@register
class Mixed(Op):
    name = "mixed"
    Attrs = MixedAttrs
    arity = None
    doc = ("Σ_k w_k · candidate_k with w = softmax(α[row]) (DARTS) or a hard Gumbel-softmax sample (GDAS); "
           "its first input is the α table. FLOPs: 2 per element per candidate.")

    def infer(self, a, ins):
        alpha, *cands = ins
        if not cands:
            raise ShapeError("E0306", "a mixed op needs candidates")
        if alpha.rank != 2 or a.row >= alpha.shape[0] or alpha.shape[1] != len(cands):
            raise ShapeError("E0303", f"α table {alpha} does not fit row {a.row} of {len(cands)} candidates")
        for c in cands[1:]:
            if c.shape != cands[0].shape:
                raise ShapeError("E0603", f"candidates produce different shapes: {cands[0]} vs {c}")
        return [cands[0]]

    def flops(self, a, ins, outs):
        return 2 * outs[0].numel() * (len(ins) - 1)

    def lower(self, a, ins, outs):
        cands = ", ".join(f"{{{i}}}" for i in range(1, len(ins)))
        return Code(f"rt.mixed({{0}}[{a.row}], [{cands}], {a.relax!r}, self.training)")

    def saved(self, a, ins, outs, ctx):
        if not ctx.any_grad:
            return []
        # w_k * c_k keeps c_k (for w's gradient) and the weights (for c_k's)
        n = len(ins) - 1
        return [Saved.input(i) for i in range(1, len(ins))] + [Saved.new(n * 4 * 2, "mixing weights")]

    def footprint(self, a, ins, outs, ctx):
        return Footprint(fwd_peak=ctx.out_bytes(0), bwd_peak=ctx.out_bytes(0))  # one product at a time


class WeightedSumAttrs(Attrs):
    start: int  # the first of this node's entries in the β table


@register
class WeightedSum(Op):
    name = "weighted_sum"
    Attrs = WeightedSumAttrs
    arity = None
    doc = ("PC-DARTS edge normalisation: Σ_i softmax(β[start:start+n])_i · edge_i; its first input is the β "
           "table. FLOPs: 2 per element per edge.")

    def infer(self, a, ins):
        beta, *edges = ins
        if not edges or beta.rank != 2 or beta.shape[1] != 1 or a.start + len(edges) > beta.shape[0]:
            raise ShapeError("E0303", f"β table {beta} does not fit {len(edges)} edges from {a.start}")
        for e in edges[1:]:
            if e.shape != edges[0].shape:
                raise ShapeError("E0301", f"edges have different shapes: {edges[0]} vs {e}")
        return [edges[0]]

    def flops(self, a, ins, outs):
        return 2 * outs[0].numel() * (len(ins) - 1)

    def lower(self, a, ins, outs):
        edges = ", ".join(f"{{{i}}}" for i in range(1, len(ins)))
        return Code(f"rt.weighted_sum({{0}}[{a.start}:{a.start + len(ins) - 1}, 0], [{edges}])")

    def saved(self, a, ins, outs, ctx):
        # w_k * x_k keeps x_k (for w's gradient) and w (for x_k's)
        return [Saved.input(i) for i in range(1, len(ins))] if ctx.any_grad else []

    def footprint(self, a, ins, outs, ctx):
        return Footprint(fwd_peak=ctx.out_bytes(0), bwd_peak=ctx.out_bytes(0))  # one product at a time
