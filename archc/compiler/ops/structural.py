"""Structural ops: identity (alias skip) and zero; weightless, FLOPs 0."""
from __future__ import annotations

from ..ir import TensorType
from .base import Attrs, Code, Footprint, Op, ShapeError, alias, register


@register
class Identity(Op):
    name = "identity"
    doc = "Returns its input unchanged."

    def infer(self, a, ins):
        return [ins[0]]

    def lower(self, a, ins, outs):
        return Code("{0}")

    def saved(self, a, ins, outs, ctx):
        return []

    def footprint(self, a, ins, outs, ctx):
        return Footprint(views={0: 0}, grad_views={0: 0}, strides={0: tuple(ctx.strides[0])} if ctx.strides else {})


class ZeroAttrs(Attrs):
    stride: int = 1


@register
class Zero(Op):
    name = "zero"
    Attrs = ZeroAttrs
    doc = ("Zeros of the input's shape and dtype (a search space's `none` edge); with `stride`, "
           "of the strided spatial shape, as DARTS's Zero.")

    def infer(self, a, ins):
        (x,) = ins
        if a.stride == 1:
            return [x]
        if x.rank < 3:
            raise ShapeError("E0302", f"a strided zero needs spatial axes, got {x}")
        return [TensorType(x.shape[:2] + tuple((d + a.stride - 1) // a.stride for d in x.shape[2:]), x.dtype)]

    def lower(self, a, ins, outs):
        if a.stride == 1:
            return Code("torch.zeros_like({0})")
        sl = ", ".join([":", ":"] + [f"::{a.stride}"] * (ins[0].rank - 2))
        return Code(f"{{0}}[{sl}].mul(0.0)")

    def saved(self, a, ins, outs, ctx):
        return []

    def footprint(self, a, ins, outs, ctx):
        # zeros_like needs no gradient; the strided form (a slice times 0) passes zeros back
        return Footprint(differentiable=a.stride != 1)


alias("skip", "identity")
