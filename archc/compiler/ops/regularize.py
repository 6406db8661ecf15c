"""Regularization: dropout."""
from __future__ import annotations

from pydantic import Field

from .base import Attrs, Footprint, Module, Op, Saved, register


class DropoutAttrs(Attrs):
    p: float = Field(0.5, ge=0.0, lt=1.0)


@register
class Dropout(Op):
    name = "dropout"
    Attrs = DropoutAttrs
    doc = "Zeroes elements with probability p in training (nn.Dropout); no weights. FLOPs: 0."

    def infer(self, a, ins):
        return [ins[0]]

    def lower(self, a, ins, outs):
        return Module("nn.Dropout", () if a.p == 0.5 else (a.p,))

    def saved(self, a, ins, outs, ctx):
        if not ctx.any_grad or not ctx.training or a.p == 0:
            return []
        # the keep-mask: 1 byte per element on CUDA (bool), the input's dtype on the CPU
        return [Saved.new(ctx.mask_bytes(ins[0]), "dropout mask")]

    def footprint(self, a, ins, outs, ctx):
        if not ctx.training or a.p == 0:
            return Footprint(views={0: 0}, grad_views={0: 0})  # returns its input itself
        return Footprint()
