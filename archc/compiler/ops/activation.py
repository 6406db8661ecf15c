"""Activations: weightless, shape-preserving, lowered to functional calls.

FLOPs: one per element (softmax: three, for exp, sum and divide).
"""
from __future__ import annotations

from typing import ClassVar, Literal

from ..ir import TensorType
from .base import Attrs, Code, Footprint, Op, Saved, register
from .shape import norm_dim


class Activation(Op):
    """Base of the element-wise activations: `template` is the lowered call."""

    template: ClassVar[str] = ""
    cost: ClassVar[int] = 1

    def infer(self, a, ins: list[TensorType]) -> list[TensorType]:
        return [ins[0]]

    def flops(self, a, ins, outs):
        return self.cost * ins[0].numel()

    def lower(self, a, ins, outs):
        return Code(self.template.format("{0}", a=a))

    def saved(self, a, ins, outs, ctx):
        """gelu, silu, leaky_relu differentiate at their input; relu, sigmoid, tanh and
        softmax at their output (they override this)."""
        return [Saved.input(0)] if ctx.any_grad else []


@register
class Relu(Activation):
    name = "relu"
    template = "F.relu({0})"
    # The code generator may use this when the input is dead after the op.
    inplace_template: ClassVar[str] = "F.relu({0}, inplace=True)"
    doc = "max(x, 0)."

    def saved(self, a, ins, outs, ctx):
        return [Saved.output(0)] if ctx.any_grad else []

    def footprint(self, a, ins, outs, ctx):
        return Footprint(views={0: 0}) if ctx.inplace else Footprint()


class GeluAttrs(Attrs):
    approximate: Literal["none", "tanh"] = "none"


@register
class Gelu(Activation):
    name = "gelu"
    Attrs = GeluAttrs
    doc = "Gaussian error linear unit; approximate=\"tanh\" for the tanh form."

    def lower(self, a, ins, outs):
        return Code("F.gelu({0})" if a.approximate == "none" else "F.gelu({0}, approximate='tanh')")


@register
class Silu(Activation):
    name = "silu"
    template = "F.silu({0})"
    doc = "x * sigmoid(x)."


@register
class Sigmoid(Activation):
    name = "sigmoid"
    template = "torch.sigmoid({0})"
    doc = "1 / (1 + exp(-x))."

    def saved(self, a, ins, outs, ctx):
        return [Saved.output(0)] if ctx.any_grad else []


@register
class Tanh(Activation):
    name = "tanh"
    template = "torch.tanh({0})"
    doc = "Hyperbolic tangent."

    def saved(self, a, ins, outs, ctx):
        return [Saved.output(0)] if ctx.any_grad else []


class LeakyReluAttrs(Attrs):
    slope: float = 0.01


@register
class LeakyRelu(Activation):
    name = "leaky_relu"
    Attrs = LeakyReluAttrs
    template = "F.leaky_relu({0}, {a.slope!r})"
    doc = "x if x > 0 else slope * x."


class SoftmaxAttrs(Attrs):
    dim: int = -1


@register
class Softmax(Activation):
    name = "softmax"
    Attrs = SoftmaxAttrs
    template = "F.softmax({0}, dim={a.dim})"
    cost = 3
    doc = "exp(x) / sum(exp(x)) along `dim`. FLOPs: 3 per element."

    def infer(self, a, ins):
        norm_dim(a.dim, ins[0], "softmax")
        return [ins[0]]

    def saved(self, a, ins, outs, ctx):
        return [Saved.output(0)] if ctx.any_grad else []
