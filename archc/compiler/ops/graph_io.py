"""The model's inputs and outputs, as nodes, so passes see one flat graph."""
from __future__ import annotations

from .base import Attrs, Code, Op, register


class IOAttrs(Attrs):
    name: str


@register
class Input(Op):
    name = "input"
    Attrs = IOAttrs
    arity = 0
    doc = "A model input (`input x: float32[B, 3, 224, 224]`); its type is the node's output."

    def infer(self, a, ins):  # the elaborator gives an input node its declared type
        raise NotImplementedError

    def lower(self, a, ins, outs):
        return Code(a.name)

    def saved(self, a, ins, outs, ctx):
        return []


@register
class Output(Op):
    name = "output"
    Attrs = IOAttrs
    doc = "A named model output (`output logits = ...`)."

    def infer(self, a, ins):
        return []

    def lower(self, a, ins, outs):
        return Code("{0}")

    def saved(self, a, ins, outs, ctx):
        return []
