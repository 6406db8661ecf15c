"""The ops tensor operators lower to: `+ - * /`, `@`, unary `-` and tensor-scalar arithmetic.

FLOPs: one per output element; matmul 2 * output elements * inner size.
"""
from __future__ import annotations

from typing import ClassVar, Literal

from ..dims import Dim
from ..ir import TensorType
from .base import Attrs, Code, Footprint, Op, Saved, ShapeError, register, view_strides


def broadcast_dim(p: Dim, q: Dim) -> Dim | None:
    """PyTorch's broadcast of two sizes, or None when they are incompatible."""
    if p == q or q == 1:
        return p
    if p == 1:
        return q
    return None


def broadcast(x: TensorType, y: TensorType, what: str) -> tuple[Dim, ...]:
    """The broadcast shape of two tensors (E0301 on a mismatch)."""
    n = max(x.rank, y.rank)
    xs, ys = (1,) * (n - x.rank) + x.shape, (1,) * (n - y.rank) + y.shape
    out = []
    for p, q in zip(xs, ys):
        d = broadcast_dim(p, q)
        if d is None:
            raise ShapeError("E0301", f"shape mismatch in `{what}`: {x} vs {y}",
                             label=f"left is {x}, right is {y}",
                             help=f"sizes {p} and {q} neither match nor are 1")
        out.append(d)
    return tuple(out)


class Binary(Op):
    """An element-wise binary operator with PyTorch broadcasting."""

    arity = 2
    symbol: ClassVar[str] = ""

    def infer(self, a, ins):
        x, y = ins
        return [TensorType(broadcast(x, y, self.symbol), x.dtype)]

    def flops(self, a, ins, outs):
        return outs[0].numel()

    def lower(self, a, ins, outs):
        return Code(f"{{0}} {self.symbol} {{1}}")

    def saved(self, a, ins, outs, ctx):
        return []  # + and - need nothing; * and / override

    def footprint(self, a, ins, outs, ctx):
        # `+` hands the incoming gradient itself to both inputs (when shapes and dtypes
        # match); a broadcast input gets a new, reduced gradient.
        same = [i for i, t in enumerate(ins) if t.shape == outs[0].shape and t.dtype == outs[0].dtype]
        return Footprint(grad_views={i: 0 for i in same if i == 0 or self.name == "add"})


@register
class Add(Binary):
    name, symbol, doc = "add", "+", "a + b, broadcasting."


@register
class Sub(Binary):
    name, symbol, doc = "sub", "-", "a - b, broadcasting."


@register
class Mul(Binary):
    name, symbol, doc = "mul", "*", "a * b (element-wise), broadcasting."

    def saved(self, a, ins, outs, ctx):
        # d(a*b)/da needs b and d(a*b)/db needs a: each kept only if the other's gradient is needed
        rg = ctx.requires_grad
        return ([Saved.input(1)] if rg[0] else []) + ([Saved.input(0)] if rg[1] else [])

    def footprint(self, a, ins, outs, ctx):
        # a broadcast input's gradient is the full product, then reduced
        full = ctx.out_bytes(0)
        return Footprint(bwd_peak=full if any(t.shape != outs[0].shape for t in ins) else 0)


@register
class Div(Binary):
    name, symbol, doc = "div", "/", "a / b, broadcasting."

    def saved(self, a, ins, outs, ctx):
        # d/da = 1/b needs b; d/db = -a/b² needs a and b
        rg = ctx.requires_grad
        return ([Saved.input(1)] if rg[0] or rg[1] else []) + ([Saved.input(0)] if rg[1] else [])

    def footprint(self, a, ins, outs, ctx):
        return Footprint(bwd_peak=2 * ctx.out_bytes(0) if ctx.requires_grad[1] else 0)


@register
class Matmul(Op):
    name = "matmul"
    arity = 2
    doc = "a @ b with torch.matmul's rules (1-D operands, batched broadcasting)."

    def infer(self, a, ins):
        x, y = ins
        if x.rank == 0 or y.rank == 0:
            raise ShapeError("E0302", f"`@` needs tensors of rank 1 or more, got {x} @ {y}")
        xs = (1,) + x.shape if x.rank == 1 else x.shape
        ys = y.shape + (1,) if y.rank == 1 else y.shape
        if xs[-1] != ys[-2]:
            raise ShapeError("E0303", f"`@` inner sizes differ: {x} @ {y} ({xs[-1]} vs {ys[-2]})",
                             label=f"left is {x}, right is {y}")
        batch = broadcast(TensorType(xs[:-2]), TensorType(ys[:-2]), "@")
        out = batch + (xs[-2],) * (x.rank > 1) + (ys[-1],) * (y.rank > 1)
        return [TensorType(out, x.dtype)]

    def flops(self, a, ins, outs):
        return 2 * outs[0].numel() * ins[0].shape[-1]

    def lower(self, a, ins, outs):
        return Code("torch.matmul({0}, {1})")

    def _operands(self, ins, ctx) -> list[bool]:
        """Whether each operand reaches the (batched) product as a view of itself; one that
        cannot be folded into [batch, rows, cols] without a copy is copied (and the copy kept)."""
        out = []
        for i, t in enumerate(ins):
            if t.rank <= 2 or not ctx.strides:
                out.append(True)
                continue
            other = ins[1 - i]
            if i == 0 and other.rank <= 2:  # [..., n, k] @ [k, m]: folded to [-1, k]
                out.append(view_strides(t.shape, ctx.strides[i], (t.numel() // t.shape[-1], t.shape[-1])) is not None)
            else:
                batch = 1
                for d in t.shape[:-2]:
                    batch = batch * d
                out.append(view_strides(t.shape, ctx.strides[i], (batch,) + t.shape[-2:]) is not None)
        return out

    def saved(self, a, ins, outs, ctx):
        rg = ctx.requires_grad
        views = self._operands(ins, ctx)

        def keep(i):
            return Saved.input(i) if views[i] else Saved.new(ctx.in_bytes(i), f"contiguous copy of operand {i}")
        return ([keep(1)] if rg[0] else []) + ([keep(0)] if rg[1] else [])

    def footprint(self, a, ins, outs, ctx):
        rg = ctx.requires_grad
        views = self._operands(ins, ctx)
        # copies nobody keeps live only during the product
        tmp = sum(ctx.in_bytes(i) for i in range(2) if not views[i] and not rg[1 - i])
        if ctx.device is not None and ctx.device.kind == "cpu" and ins[0].dtype in ("bfloat16", "float16"):
            big = max(ctx.in_bytes(0), ctx.in_bytes(1), ctx.out_bytes(0))
            return Footprint(fwd_peak=tmp + ctx.out_bytes(0), bwd_peak=big)  # oneDNN's packing buffers
        return Footprint(fwd_peak=tmp)


@register
class Neg(Op):
    name = "neg"
    doc = "-a."

    def infer(self, a, ins):
        return [ins[0]]

    def flops(self, a, ins, outs):
        return ins[0].numel()

    def lower(self, a, ins, outs):
        return Code("-{0}")

    def saved(self, a, ins, outs, ctx):
        return []


_SCALAR = {"add": "{0} + {v}", "sub": "{0} - {v}", "rsub": "{v} - {0}", "mul": "{0} * {v}",
           "div": "{0} / {v}", "rdiv": "{v} / {0}", "pow": "{0} ** {v}"}


class ScalarAttrs(Attrs):
    op: Literal["add", "sub", "rsub", "mul", "div", "rdiv", "pow"]
    value: int | float


@register
class Scalar(Op):
    name = "scalar"
    Attrs = ScalarAttrs
    doc = "Tensor-number arithmetic: `x * 2` is scalar(op=\"mul\", value=2); r-ops put the number first."

    def infer(self, a, ins):
        return [ins[0]]

    def flops(self, a, ins, outs):
        return ins[0].numel()

    def saved(self, a, ins, outs, ctx):
        if not ctx.any_grad:
            return []
        if a.op == "pow":
            return [Saved.input(0)]
        if a.op == "rdiv":  # v / x = v * reciprocal(x): the reciprocal is kept
            return [Saved.new(ctx.in_bytes(0), "reciprocal")]
        return []

    def footprint(self, a, ins, outs, ctx):
        # x + v and x - v pass the gradient through unchanged
        return Footprint(grad_views={0: 0} if a.op in ("add", "sub") else {})

    def lower(self, a, ins, outs):
        v = repr(a.value)
        return Code(_SCALAR[a.op].format("{0}", v=f"({v})" if a.value < 0 else v))
