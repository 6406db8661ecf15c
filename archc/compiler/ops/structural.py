"""Structural ops: identity (alias skip) and zero; weightless, FLOPs 0."""
from __future__ import annotations

from .base import Code, Op, alias, register


@register
class Identity(Op):
    name = "identity"
    doc = "Returns its input unchanged."

    def infer(self, a, ins):
        return [ins[0]]

    def lower(self, a, ins, outs):
        return Code("{0}")


@register
class Zero(Op):
    name = "zero"
    doc = "Zeros of the input's shape and dtype (a search space's `none` edge)."

    def infer(self, a, ins):
        return [ins[0]]

    def lower(self, a, ins, outs):
        return Code("torch.zeros_like({0})")


alias("skip", "identity")
