"""Pooling, rank-polymorphic: input rank 3/4/5 -> 1-D/2-D/3-D functional calls.

FLOPs: windowed pools count one per window element per output element;
adaptive and global pools one per input element.
"""
from __future__ import annotations

from ..dims import Dim, NotStatic, numel
from ..ir import TensorType
from .base import Attrs, Code, Op, Saved, ShapeError, register
from .conv import IntOrList, check_out, per_axis, spatial


def _args(*pairs: tuple[str, object, object]) -> str:
    """`, name=value` for each (name, value, default) whose value is not the default."""
    return "".join(f", {k}={v!r}" for k, v, d in pairs if v != d)


def _pool_size(h: Dim, k: int, s: int, p: int, d: int, ceil: bool) -> Dim:
    """PyTorch's pooling output size along one axis."""
    span = h + 2 * p - d * (k - 1) - 1
    if not ceil:
        return span // s + 1
    o = (span + s - 1) // s + 1
    try:
        if (o - 1) * s >= h + p:  # the last window must start inside the input
            o = o - 1
    except NotStatic:
        raise ShapeError("E0303", f"ceil_mode=true needs a known input size, but it is `{h}`",
                         help="bind the symbol, or use ceil_mode=false") from None
    return o


class WindowPool(Op):
    """Shared rule of max_pool and avg_pool; `func` is the functional name's stem."""

    func = ""

    def _geom(self, a, x: TensorType):
        n = spatial(x, self.name)
        ks = per_axis(a.kernel, n, "kernel", self.name)
        ss = per_axis(a.kernel if a.stride is None else a.stride, n, "stride", self.name)
        ps = per_axis(a.padding, n, "padding", self.name)
        ds = per_axis(getattr(a, "dilation", 1), n, "dilation", self.name)
        if min(ks + ss + ds) <= 0 or min(ps) < 0:
            raise ShapeError("E0305", f"{self.name} needs positive kernel, stride and dilation "
                             f"and non-negative padding")
        for k, p in zip(ks, ps):
            if p > k // 2:  # PyTorch's limit, dilation or not
                raise ShapeError("E0303", f"{self.name}: padding {p} is more than half the "
                                 f"kernel size {k}", label=f"padding={a.padding}")
        return n, ks, ss, ps, ds

    def infer(self, a, ins):
        (x,) = ins
        _, ks, ss, ps, ds = self._geom(a, x)
        sp = tuple(_pool_size(*v, a.ceil_mode) for v in zip(x.shape[2:], ks, ss, ps, ds))
        check_out(self.name, x, sp)
        return [TensorType(x.shape[:2] + sp, x.dtype)]

    def flops(self, a, ins, outs):
        return outs[0].numel() * numel(self._geom(a, ins[0])[1])

    def saved(self, a, ins, outs, ctx):
        if not ctx.any_grad:
            return []
        if self.name == "max_pool":  # the input and the argmax indices (int64)
            return [Saved.input(0), Saved.new(outs[0].numel() * 8, "argmax indices (int64)")]
        return [Saved.input(0)]  # avg_pool keeps its input (for its size and layout)


class MaxPoolAttrs(Attrs):
    kernel: IntOrList
    stride: IntOrList | None = None
    padding: IntOrList = 0
    dilation: IntOrList = 1
    ceil_mode: bool = False


@register
class MaxPool(WindowPool):
    name = "max_pool"
    Attrs = MaxPoolAttrs
    doc = "Max over sliding windows (F.max_pool1d/2d/3d); stride defaults to the kernel."

    def lower(self, a, ins, outs):
        n = spatial(ins[0], self.name)
        rest = _args(("stride", a.stride, None), ("padding", a.padding, 0),
                     ("dilation", a.dilation, 1), ("ceil_mode", a.ceil_mode, False))
        return Code(f"F.max_pool{n}d({{0}}, {a.kernel!r}{rest})")


class AvgPoolAttrs(Attrs):
    kernel: IntOrList
    stride: IntOrList | None = None
    padding: IntOrList = 0
    ceil_mode: bool = False
    count_include_pad: bool = True


@register
class AvgPool(WindowPool):
    name = "avg_pool"
    Attrs = AvgPoolAttrs
    doc = "Mean over sliding windows (F.avg_pool1d/2d/3d); stride defaults to the kernel."

    def infer(self, a, ins):
        (x,) = ins
        _, ks, _, _, _ = self._geom(a, x)
        if x.rank == 5:  # PyTorch's avg_pool3d wants every axis at least the kernel, padding or not
            for d, k in zip(x.shape[2:], ks):
                if isinstance(d, int) and d < k:
                    raise ShapeError("E0305", f"avg_pool: a 3-D input axis of {d} is smaller than the kernel {k}",
                                     help="PyTorch's avg_pool3d needs each spatial axis at least the kernel size")
        return super().infer(a, ins)

    def lower(self, a, ins, outs):
        n = spatial(ins[0], self.name)
        rest = _args(("stride", a.stride, None), ("padding", a.padding, 0),
                     ("ceil_mode", a.ceil_mode, False),
                     ("count_include_pad", a.count_include_pad, True))
        return Code(f"F.avg_pool{n}d({{0}}, {a.kernel!r}{rest})")


class AdaptiveAttrs(Attrs):
    size: int | None | tuple[int | None, ...]


class AdaptivePool(Op):
    """Pool to a fixed output size; `None` in `size` keeps that axis."""

    Attrs = AdaptiveAttrs
    kind = ""

    def infer(self, a, ins):
        (x,) = ins
        n = spatial(x, self.name)
        size = (a.size,) * n if a.size is None or isinstance(a.size, int) else a.size
        size = per_axis(size, n, "size", self.name)
        if any(s is not None and s <= 0 for s in size):
            raise ShapeError("E0305", f"{self.name} needs positive output sizes, got {a.size}")
        sp = tuple(h if s is None else s for h, s in zip(x.shape[2:], size))
        return [TensorType(x.shape[:2] + sp, x.dtype)]

    def flops(self, a, ins, outs):
        return ins[0].numel()

    def lower(self, a, ins, outs):
        n = spatial(ins[0], self.name)
        size = (a.size,) * n if a.size is None or isinstance(a.size, int) else a.size
        # `None` keeps an axis; PyTorch takes it only inside a 2-D/3-D tuple, so spell the size out
        sizes = [f"{{0}}.shape[{2 + i}]" if s is None else str(s) for i, s in enumerate(size)]
        arg = sizes[0] if n == 1 else "(" + ", ".join(sizes) + ")"
        if all(s is not None for s in size):
            arg = repr(a.size)
        return Code(f"F.adaptive_{self.kind}_pool{n}d({{0}}, {arg})")

    def saved(self, a, ins, outs, ctx):
        if not ctx.any_grad:
            return []
        if self.kind == "max":
            return [Saved.input(0), Saved.new(outs[0].numel() * 8, "argmax indices (int64)")]
        if all(d == 1 for d in outs[0].shape[2:]):
            return []  # pooling to 1 is a mean, which keeps nothing
        return [Saved.input(0)]


@register
class AdaptiveAvgPool(AdaptivePool):
    name = "adaptive_avg_pool"
    kind = "avg"
    doc = "Average pool to a fixed output size (F.adaptive_avg_pool1d/2d/3d)."


@register
class AdaptiveMaxPool(AdaptivePool):
    name = "adaptive_max_pool"
    kind = "max"
    doc = "Max pool to a fixed output size (F.adaptive_max_pool1d/2d/3d)."


@register
class GlobalAvgPool(Op):
    name = "global_avg_pool"
    doc = "Mean over all spatial axes, kept as size 1: [B, C, H, W] -> [B, C, 1, 1]."

    def infer(self, a, ins):
        (x,) = ins
        n = spatial(x, self.name)
        return [TensorType(x.shape[:2] + (1,) * n, x.dtype)]

    def flops(self, a, ins, outs):
        return ins[0].numel()

    def lower(self, a, ins, outs):
        return Code(f"F.adaptive_avg_pool{spatial(ins[0], self.name)}d({{0}}, 1)")

    def saved(self, a, ins, outs, ctx):
        return []  # adaptive pooling to 1 runs as a mean, which keeps nothing
