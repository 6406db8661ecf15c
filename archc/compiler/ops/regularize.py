"""Regularization: dropout."""
from __future__ import annotations

from pydantic import Field

from .base import Attrs, Module, Op, register


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
