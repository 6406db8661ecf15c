"""Normalization layers: batch, layer, RMS and group norm."""
from __future__ import annotations

from ..ir import TensorType
from .base import Attrs, Footprint, Module, Op, Saved, ShapeError, expect_rank, register, static_int


def _channels(x: TensorType, what: str) -> int:
    return static_int(x.shape[1], f"{what}'s channel count (axis 1)")


def _width(x: TensorType, what: str) -> int:
    if x.rank < 1:
        raise ShapeError("E0302", f"{what} expects at least one axis, got {x}")
    return static_int(x.shape[-1], f"{what}'s normalized width (last axis)")


def _kw(a: Attrs, defaults: dict, rename: dict | None = None) -> dict:
    """Keyword arguments for the fields that differ from their defaults."""
    rename = rename or {}
    return {rename.get(k, k): getattr(a, k) for k, d in defaults.items() if getattr(a, k) != d}


class BNAttrs(Attrs):
    eps: float = 1e-5
    momentum: float = 0.1
    affine: bool = True


@register
class BatchNorm(Op):
    name = "bn"
    Attrs = BNAttrs
    doc = ("Batch norm over axis 1 (nn.BatchNorm1d for rank 2/3, 2d for 4, 3d for 5), with "
           "running statistics. FLOPs: 2 per element (the folded inference scale-and-shift).")

    def infer(self, a, ins):
        expect_rank(ins[0], {2, 3, 4, 5}, "bn")
        _channels(ins[0], "bn")
        return [ins[0]]

    def params(self, a, ins):
        c = _channels(ins[0], "bn")
        return {"weight": (c,), "bias": (c,)} if a.affine else {}

    def buffers(self, a, ins):
        c = _channels(ins[0], "bn")
        return {"running_mean": (c,), "running_var": (c,), "num_batches_tracked": ()}

    def flops(self, a, ins, outs):
        return 2 * ins[0].numel()

    def lower(self, a, ins, outs):
        n = max(ins[0].rank - 2, 1)
        return Module(f"nn.BatchNorm{n}d", (_channels(ins[0], "bn"),),
                      _kw(a, {"eps": 1e-5, "momentum": 0.1, "affine": True}))

    def saved(self, a, ins, outs, ctx):
        if not ctx.any_grad:
            return []
        out = [Saved.input(0), Saved.param("running_mean"), Saved.param("running_var")]
        if a.affine:
            out.append(Saved.param("weight"))
        if ctx.training:  # the batch's mean and inverse std, float32 [C] each
            out.append(Saved.new(2 * _channels(ins[0], "bn") * 4, "batch mean and inverse std"))
        return out

    def footprint(self, a, ins, outs, ctx):
        c = _channels(ins[0], "bn")
        if ctx.device is not None and ctx.device.kind == "cpu":
            # the CPU kernel's backward holds one input-sized temporary
            return Footprint(fwd_peak=2 * c * 4, bwd_peak=ctx.in_bytes(0))
        return Footprint()


class LayerNormAttrs(Attrs):
    eps: float = 1e-5
    affine: bool = True
    bias: bool = True


@register
class LayerNorm(Op):
    name = "layernorm"
    Attrs = LayerNormAttrs
    doc = ("Layer norm over the last axis (nn.LayerNorm). FLOPs: 5 per element "
           "(mean 1, variance 2, normalize 1, scale 1; the shift is a bias, not counted).")

    def infer(self, a, ins):
        _width(ins[0], "layernorm")
        return [ins[0]]

    def params(self, a, ins):
        d = _width(ins[0], "layernorm")
        if not a.affine:
            return {}
        return {"weight": (d,), "bias": (d,)} if a.bias else {"weight": (d,)}

    def flops(self, a, ins, outs):
        return 5 * ins[0].numel()

    def lower(self, a, ins, outs):
        kw = _kw(a, {"eps": 1e-5, "affine": True}, {"affine": "elementwise_affine"})
        if a.affine and not a.bias:
            kw["bias"] = False
        return Module("nn.LayerNorm", (_width(ins[0], "layernorm"),), kw)

    def saved(self, a, ins, outs, ctx):
        if not ctx.any_grad:
            return []
        rows = ins[0].numel() // _width(ins[0], "layernorm")
        out = [Saved.input(0)]
        if a.affine:
            out.append(Saved.param("weight"))
            if a.bias:
                out.append(Saved.param("bias"))
        out.append(Saved.new(2 * rows * 4, "mean and rstd (float32)"))
        return out


class RMSNormAttrs(Attrs):
    eps: float = 1e-6


@register
class RMSNorm(Op):
    name = "rmsnorm"
    Attrs = RMSNormAttrs
    doc = ("RMS norm over the last axis (nn.RMSNorm) with a learned scale. FLOPs: 4 per element "
           "(square-accumulate 2, normalize 1, scale 1).")

    def infer(self, a, ins):
        _width(ins[0], "rmsnorm")
        return [ins[0]]

    def params(self, a, ins):
        return {"weight": (_width(ins[0], "rmsnorm"),)}

    def flops(self, a, ins, outs):
        return 4 * ins[0].numel()

    def lower(self, a, ins, outs):
        return Module("nn.RMSNorm", (_width(ins[0], "rmsnorm"),), {"eps": a.eps})

    def saved(self, a, ins, outs, ctx):
        if not ctx.any_grad:
            return []
        x = ins[0]
        rows = x.numel() // _width(x, "rmsnorm")
        if ctx.device is not None and ctx.device.kind == "cuda":  # the fused CUDA kernel
            return [Saved.input(0), Saved.new(rows * 4, "rstd"), Saved.param("weight")]
        # the composite CPU path: x (upcast to float32), rsqrt(mean(x^2) + eps), the
        # normalized x (kept for the weight's gradient) and the weight
        half = x.dtype in ("float16", "bfloat16")
        src = Saved.new(x.numel() * 4, "float32 copy of the input") if half else Saved.input(0)
        return [src, Saved.new(rows * 4, "rsqrt"), Saved.new(ctx.in_bytes(0), "normalized input"),
                Saved.param("weight")]

    def footprint(self, a, ins, outs, ctx):
        if ctx.device is not None and ctx.device.kind == "cpu":
            return Footprint(bwd_peak=2 * ctx.in_bytes(0))  # the composite's intermediate gradients
        return Footprint()


class GroupNormAttrs(Attrs):
    groups: int
    eps: float = 1e-5
    affine: bool = True


@register
class GroupNorm(Op):
    name = "groupnorm"
    Attrs = GroupNormAttrs
    doc = ("Group norm over channel axis 1 (nn.GroupNorm). FLOPs: 5 per element, as layernorm.")

    def infer(self, a, ins):
        x = ins[0]
        if x.rank < 2:
            raise ShapeError("E0302", f"groupnorm expects [B, C, ...], got {x}")
        c = _channels(x, "groupnorm")
        if a.groups <= 0:
            raise ShapeError("E0305", f"groupnorm needs a positive group count, got {a.groups}")
        if c % a.groups:
            raise ShapeError("E0303", f"groupnorm: groups={a.groups} does not divide the {c} "
                             f"channels of {x}", label=f"groups={a.groups}")
        return [x]

    def params(self, a, ins):
        c = _channels(ins[0], "groupnorm")
        return {"weight": (c,), "bias": (c,)} if a.affine else {}

    def flops(self, a, ins, outs):
        return 5 * ins[0].numel()

    def lower(self, a, ins, outs):
        return Module("nn.GroupNorm", (a.groups, _channels(ins[0], "groupnorm")),
                      _kw(a, {"eps": 1e-5, "affine": True}))

    def saved(self, a, ins, outs, ctx):
        if not ctx.any_grad:
            return []
        out = [Saved.input(0)] + ([Saved.param("weight")] if a.affine else [])
        return out + [Saved.new(2 * ins[0].shape[0] * a.groups * 4, "mean and rstd (float32)")]
