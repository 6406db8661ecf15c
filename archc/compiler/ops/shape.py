"""Shape ops: flatten, reshape, permute, transpose, concat, split, mean, upsample.

FLOPs: 0 (data movement), except mean (one per input element) and upsample
(0 for nearest; 2 per output element per spatial axis for interpolating modes).
"""
from __future__ import annotations

import math
from typing import Literal

from ..dims import Dim, Sym, numel
from ..ir import TensorType
from .base import Attrs, Code, Footprint, Op, ShapeError, contiguous_strides, register, static_int, view_strides
from .conv import per_axis, spatial


def norm_dim(d: int, x: TensorType, what: str) -> int:
    """A possibly negative axis index of `x`, made non-negative; E0304 if out of range."""
    if not -x.rank <= d < x.rank:
        raise ShapeError("E0304", f"{what}: dimension {d} is out of range for {x} (rank {x.rank})",
                         label=f"dim={d}", help=f"use an axis in [{-x.rank}, {x.rank - 1}]")
    return d % x.rank


def _dims(ds: tuple[int, ...], x: TensorType, what: str) -> list[int]:
    out = [norm_dim(d, x, what) for d in ds]
    if len(set(out)) != len(out):
        raise ShapeError("E0303", f"{what}: dimensions {list(ds)} repeat an axis of {x}")
    return out


def exact_div(a: Dim, b: Dim) -> Dim | None:
    """a / b when it is known to be a whole number (b a single monomial), else None."""
    if isinstance(b, int):
        q = a // b if b else None
    elif isinstance(a, Sym) and len(b.terms) == 1:
        (mb, cb), = b.terms
        q = 0
        for m, c in a.terms:
            rest = list(m)
            for atom in mb:
                if atom not in rest:
                    return None
                rest.remove(atom)
            term: Dim = c // cb
            for atom in rest:
                term = term * Sym.symbol(atom)
            q = q + term
    else:
        q = 1 if a == b else None
    return q if q is not None and q * b == a else None


def _reshaped(ins, outs, ctx) -> Footprint:
    """reshape / flatten: a view when the strides allow it, else a contiguous copy; either
    way the gradient comes back as a view of the output's gradient."""
    x = ins[0]
    strides = ctx.strides[0] if ctx.strides else contiguous_strides(x.shape)
    st = view_strides(x.shape, strides, outs[0].shape)
    if st is None:
        return Footprint(grad_views={0: 0})
    return Footprint(views={0: 0}, grad_views={0: 0}, strides={0: st})


def _permuted(ctx, order) -> Footprint:
    strides = ctx.strides[0] if ctx.strides else contiguous_strides(ctx.ins[0].shape)
    return Footprint(views={0: 0}, grad_views={0: 0}, strides={0: tuple(strides[d] for d in order)})


class FlattenAttrs(Attrs):
    start: int = 1
    end: int = -1


@register
class Flatten(Op):
    name = "flatten"
    Attrs = FlattenAttrs
    doc = "Merge axes start..end into one (torch.flatten)."

    def infer(self, a, ins):
        (x,) = ins
        s, e = norm_dim(a.start, x, "flatten"), norm_dim(a.end, x, "flatten")
        if s > e:
            raise ShapeError("E0303", f"flatten: start={a.start} comes after end={a.end} in {x}")
        return [TensorType(x.shape[:s] + (numel(x.shape[s:e + 1]),) + x.shape[e + 1:], x.dtype)]

    def lower(self, a, ins, outs):
        return Code(f"torch.flatten({{0}}, {a.start})" if a.end == -1
                    else f"torch.flatten({{0}}, {a.start}, {a.end})")

    def saved(self, a, ins, outs, ctx):
        return []

    def footprint(self, a, ins, outs, ctx):
        return _reshaped(ins, outs, ctx)


class ReshapeAttrs(Attrs):
    shape: tuple[Dim, ...]


@register
class Reshape(Op):
    name = "reshape"
    Attrs = ReshapeAttrs
    doc = ("Reshape to `shape` (one -1 allowed; symbolic dims are computed from the input "
           "at run time).")

    def _plan(self, a: ReshapeAttrs, x: TensorType) -> tuple[tuple[Dim, ...], list[str]]:
        """The output shape and the run-time expression of each output dim."""
        holes = [i for i, d in enumerate(a.shape) if isinstance(d, int) and d == -1]
        if len(holes) > 1:
            raise ShapeError("E0303", f"reshape: at most one -1 is allowed, got {list(a.shape)}")
        if any(isinstance(d, int) and d <= 0 and d != -1 for d in a.shape):
            raise ShapeError("E0305", f"reshape: sizes must be positive, got {list(a.shape)}")
        known = numel(d for i, d in enumerate(a.shape) if i not in holes)
        out = a.shape
        if holes:
            rest = exact_div(x.numel(), known)
            if rest is None:
                raise ShapeError("E0303", f"cannot reshape {x} to {list(a.shape)}: "
                                 f"{x.numel()} elements do not divide into rows of {known}")
            out = a.shape[:holes[0]] + (rest,) + a.shape[holes[0] + 1:]
        elif x.numel() != known:
            raise ShapeError("E0303", f"cannot reshape {x} ({x.numel()} elements) to "
                             f"{list(a.shape)} ({known} elements)")
        parts, unknown = [], list(holes)
        for i, d in enumerate(a.shape):
            if isinstance(d, int):
                parts.append(str(d))
            elif d in x.shape:
                j = i if i < x.rank and x.shape[i] == d else x.shape.index(d)
                parts.append(f"{{0}}.shape[{j}]")
            else:
                parts.append("-1")
                unknown.append(i)
        if len(unknown) > 1:
            raise ShapeError("E0303", f"reshape to {list(a.shape)}: more than one size must be "
                             f"inferred at run time", help="write the other sizes as input axes "
                             "or numbers, leaving at most one to be inferred")
        return out, parts

    def infer(self, a, ins):
        return [TensorType(self._plan(a, ins[0])[0], ins[0].dtype)]

    def lower(self, a, ins, outs):
        return Code("{0}.reshape(" + ", ".join(self._plan(a, ins[0])[1]) + ")")

    def saved(self, a, ins, outs, ctx):
        return []

    def footprint(self, a, ins, outs, ctx):
        return _reshaped(ins, outs, ctx)


class PermuteAttrs(Attrs):
    dims: tuple[int, ...]


@register
class Permute(Op):
    name = "permute"
    Attrs = PermuteAttrs
    doc = "Reorder the axes (torch.permute)."

    def infer(self, a, ins):
        (x,) = ins
        if len(a.dims) != x.rank:
            raise ShapeError("E0302", f"permute: {list(a.dims)} names {len(a.dims)} axes but "
                             f"the input {x} has {x.rank}")
        return [TensorType(tuple(x.shape[d] for d in _dims(a.dims, x, "permute")), x.dtype)]

    def lower(self, a, ins, outs):
        return Code(f"{{0}}.permute({', '.join(map(str, a.dims))})")

    def saved(self, a, ins, outs, ctx):
        return []

    def footprint(self, a, ins, outs, ctx):
        return _permuted(ctx, _dims(a.dims, ins[0], "permute"))


class TransposeAttrs(Attrs):
    a: int
    b: int


@register
class Transpose(Op):
    name = "transpose"
    Attrs = TransposeAttrs
    doc = "Swap two axes (torch.transpose)."

    def infer(self, a, ins):
        (x,) = ins
        i, j = norm_dim(a.a, x, "transpose"), norm_dim(a.b, x, "transpose")
        s = list(x.shape)
        s[i], s[j] = s[j], s[i]
        return [TensorType(tuple(s), x.dtype)]

    def lower(self, a, ins, outs):
        return Code(f"{{0}}.transpose({a.a}, {a.b})")

    def saved(self, a, ins, outs, ctx):
        return []

    def footprint(self, a, ins, outs, ctx):
        x = ins[0]
        order = list(range(x.rank))
        i, j = norm_dim(a.a, x, "transpose"), norm_dim(a.b, x, "transpose")
        order[i], order[j] = order[j], order[i]
        return _permuted(ctx, order)


class ConcatAttrs(Attrs):
    dim: int = 1


@register
class Concat(Op):
    name = "concat"
    Attrs = ConcatAttrs
    arity = None
    doc = "Join two or more tensors along `dim` (torch.cat); other axes must agree."

    def infer(self, a, ins):
        if len(ins) < 2:
            raise ShapeError("E0306", f"concat needs at least two tensors, got {len(ins)}")
        x = ins[0]
        d = norm_dim(a.dim, x, "concat")
        for y in ins[1:]:
            if y.rank != x.rank:
                raise ShapeError("E0302", f"concat: inputs have different ranks: {x} vs {y}",
                                 label=f"this is {y}")
            if any(p != q for k, (p, q) in enumerate(zip(x.shape, y.shape)) if k != d):
                raise ShapeError("E0303", f"concat along dim {a.dim}: sizes differ on the other "
                                 f"axes: {x} vs {y}", label=f"this is {y}")
        total: Dim = 0
        for y in ins:
            total = total + y.shape[d]
        return [TensorType(x.shape[:d] + (total,) + x.shape[d + 1:], x.dtype)]

    def lower(self, a, ins, outs):
        names = ", ".join(f"{{{i}}}" for i in range(len(ins)))
        return Code(f"torch.cat([{names}], dim={a.dim})")

    def saved(self, a, ins, outs, ctx):
        return []

    def footprint(self, a, ins, outs, ctx):
        # each input's gradient is a slice (a view) of the output's gradient
        return Footprint(grad_views={i: 0 for i, t in enumerate(ins) if t.dtype == outs[0].dtype})


class SplitAttrs(Attrs):
    sizes: int | tuple[int, ...]
    dim: int = -1


@register
class Split(Op):
    name = "split"
    Attrs = SplitAttrs
    doc = ("Split along `dim` into chunks of `sizes` (an int) or pieces of the listed sizes "
           "(torch.split); one output per piece.")

    def infer(self, a, ins):
        (x,) = ins
        d = norm_dim(a.dim, x, "split")
        n = x.shape[d]
        if isinstance(a.sizes, int):
            n = static_int(n, "split's axis (the number of chunks depends on it)")
            if a.sizes <= 0:
                raise ShapeError("E0305", f"split needs a positive chunk size, got {a.sizes}")
            pieces = [a.sizes] * (n // a.sizes) + ([n % a.sizes] if n % a.sizes else [])
        else:
            pieces = list(a.sizes)
            if not pieces or min(pieces) <= 0:
                raise ShapeError("E0305", f"split needs positive sizes, got {pieces}")
            if sum(pieces) != n:
                raise ShapeError("E0303", f"split sizes {pieces} add up to {sum(pieces)}, but "
                                 f"axis {a.dim} of {x} has size {n}")
        return [TensorType(x.shape[:d] + (p,) + x.shape[d + 1:], x.dtype) for p in pieces]

    def lower(self, a, ins, outs):
        sizes = a.sizes if isinstance(a.sizes, int) else list(a.sizes)
        return Code(f"torch.split({{0}}, {sizes!r}, dim={a.dim})")

    def saved(self, a, ins, outs, ctx):
        return []

    def footprint(self, a, ins, outs, ctx):
        # the pieces are views; backward concatenates their gradients into a new tensor
        strides = tuple(ctx.strides[0]) if ctx.strides else contiguous_strides(ins[0].shape)
        return Footprint(views={j: 0 for j in range(len(outs))}, strides={j: strides for j in range(len(outs))})


class MeanAttrs(Attrs):
    dim: int | tuple[int, ...]
    keepdim: bool = False


@register
class Mean(Op):
    name = "mean"
    Attrs = MeanAttrs
    doc = "Mean over one or more axes (torch.mean). FLOPs: one per input element."

    def infer(self, a, ins):
        (x,) = ins
        ds = set(_dims((a.dim,) if isinstance(a.dim, int) else a.dim, x, "mean"))
        shape = tuple(1 if i in ds else s for i, s in enumerate(x.shape)
                      if a.keepdim or i not in ds)
        return [TensorType(shape, x.dtype)]

    def flops(self, a, ins, outs):
        return ins[0].numel()

    def lower(self, a, ins, outs):
        return Code(f"{{0}}.mean(dim={a.dim!r}" + (", keepdim=True)" if a.keepdim else ")"))

    def saved(self, a, ins, outs, ctx):
        return []


_MODE_RANK = {"linear": 3, "bilinear": 4, "bicubic": 4, "trilinear": 5}


class UpsampleAttrs(Attrs):
    scale: int | float | tuple[int | float, ...]
    mode: Literal["nearest", "nearest-exact", "linear", "bilinear", "bicubic", "trilinear",
                  "area"] = "nearest"


@register
class Upsample(Op):
    name = "upsample"
    Attrs = UpsampleAttrs
    doc = "Resize the spatial axes by `scale` (F.interpolate); sizes are floor(size * scale)."

    def infer(self, a, ins):
        (x,) = ins
        n = spatial(x, "upsample")
        if a.mode in _MODE_RANK and x.rank != _MODE_RANK[a.mode]:
            raise ShapeError("E0302", f"upsample mode '{a.mode}' needs a rank-"
                             f"{_MODE_RANK[a.mode]} input, got {x}")
        scale = a.scale if isinstance(a.scale, tuple) else (a.scale,) * n
        scales = per_axis(scale, n, "scale", "upsample")
        if min(scales) <= 0:
            raise ShapeError("E0305", f"upsample needs a positive scale, got {a.scale}")
        sp = tuple(h * int(s) if float(s).is_integer()
                   else math.floor(static_int(h, "upsample's input size (fractional scale)") * s)
                   for h, s in zip(x.shape[2:], scales))
        if any(isinstance(d, int) and d <= 0 for d in sp):
            raise ShapeError("E0305", f"upsample by {a.scale} empties {x}")
        return [TensorType(x.shape[:2] + sp, x.dtype)]

    def flops(self, a, ins, outs):
        return 0 if a.mode.startswith("nearest") else 2 * (ins[0].rank - 2) * outs[0].numel()

    def lower(self, a, ins, outs):
        return Code(f"F.interpolate({{0}}, scale_factor={a.scale!r}, mode={a.mode!r})")

    def saved(self, a, ins, outs, ctx):
        return []  # the backward needs only the sizes


class ChannelShuffleAttrs(Attrs):
    groups: int


@register
class ChannelShuffle(Op):
    name = "channel_shuffle"
    Attrs = ChannelShuffleAttrs
    doc = ("ShuffleNet's channel shuffle: [B, g·c, ...] viewed as [B, g, c, ...], transposed to "
           "[B, c, g, ...] and flattened back (torch.nn.ChannelShuffle). FLOPs 0.")

    def infer(self, a, ins):
        (x,) = ins
        if x.rank < 2:
            raise ShapeError("E0302", f"channel_shuffle needs a channel axis, got {x}")
        if a.groups < 1 or exact_div(x.shape[1], a.groups) is None:
            raise ShapeError("E0303", f"channel_shuffle: {a.groups} groups do not divide {x.shape[1]} channels",
                             help="choose a group count that divides the channels")
        return [x]

    def lower(self, a, ins, outs):
        return Code(f"F.channel_shuffle({{0}}, {a.groups})")

    def saved(self, a, ins, outs, ctx):
        return []  # a permuting copy
