"""Dense layers: linear and embedding."""
from __future__ import annotations

from ..ir import TensorType
from .base import Attrs, Footprint, Module, Op, Saved, ShapeError, register, static_int, view_strides


class LinearAttrs(Attrs):
    out: int
    bias: bool = True
    tie: str | None = None
    transposed: bool = False


@register
class Linear(Op):
    name = "linear"
    Attrs = LinearAttrs
    doc = ("y = x Wᵀ + b over the last axis (torch.nn.Linear), weight [out, in]. `tie=NAME` shares the "
           "weight of the labelled embedding NAME. `transposed=true` stores the weight [in, out] and computes "
           "y = x W + b (transformers' GPT-2 `Conv1D`, lowered to rt.TransposedLinear with torch.addmm), so "
           "GPT-2's c_attn / c_proj / c_fc weights load by name without transposing.")

    def infer(self, a, ins):
        (x,) = ins
        if x.rank < 1:
            raise ShapeError("E0302", f"linear expects at least one axis, got {x}")
        if a.out <= 0:
            raise ShapeError("E0305", f"linear needs a positive output size, got {a.out}")
        return [TensorType(x.shape[:-1] + (a.out,), x.dtype)]

    def params(self, a, ins):
        n_in = static_int(ins[0].shape[-1], "linear's input width")
        shape = (n_in, a.out) if a.transposed else (a.out, n_in)
        p = {} if a.tie else {"weight": shape}  # a tied weight is the embedding's
        if a.bias:
            p["bias"] = (a.out,)
        return p

    def tied(self, a, ins):
        if not a.tie:
            return {}
        n_in = static_int(ins[0].shape[-1], "linear's input width")
        return {"weight": (f"{a.tie}.weight", (n_in, a.out) if a.transposed else (a.out, n_in))}

    def flops(self, a, ins, outs):
        return 2 * ins[0].numel() * a.out

    def lower(self, a, ins, outs):
        target = "rt.TransposedLinear" if a.transposed else "nn.Linear"
        return Module(target, (static_int(ins[0].shape[-1], "linear's input width"), a.out),
                      {} if a.bias else {"bias": False}, ties={"weight": f"{a.tie}.weight"} if a.tie else {})

    def _folds(self, ins, ctx) -> bool:
        """Whether the input reaches the matrix product as a view (else as a contiguous copy)."""
        x = ins[0]
        if x.rank <= 2 or not ctx.strides:
            return True
        return view_strides(x.shape, ctx.strides[0], (x.numel() // x.shape[-1], x.shape[-1])) is not None

    def saved(self, a, ins, outs, ctx):
        out = []
        if ctx.weights_grad:  # the weight's gradient needs the input
            out.append(Saved.input(0) if self._folds(ins, ctx) else
                       Saved.new(ctx.in_bytes(0), "contiguous copy of the input"))
        if ctx.requires_grad[0]:  # the input's gradient needs the weight
            out.append(Saved.param("weight"))
        return out

    def footprint(self, a, ins, outs, ctx):
        copy = 0 if self._folds(ins, ctx) or ctx.weights_grad else ctx.in_bytes(0)  # a copy for the product
        if ctx.device is not None and ctx.device.kind == "cpu" and ins[0].dtype in ("bfloat16", "float16"):
            # oneDNN's half-precision GEMM packs its operands into scratch buffers (measured:
            # up to the output's size forward, the larger operand's size backward)
            return Footprint(fwd_peak=copy + ctx.out_bytes(0), bwd_peak=max(ctx.in_bytes(0), ctx.out_bytes(0)))
        return Footprint(fwd_peak=copy)


class EmbeddingAttrs(Attrs):
    num: int
    dim: int
    padding_idx: int | None = None


@register
class Embedding(Op):
    name = "embedding"
    Attrs = EmbeddingAttrs
    doc = "Table lookup (torch.nn.Embedding): int[...] -> float32[..., dim]. FLOPs: 0 (a lookup)."

    def infer(self, a, ins):
        (x,) = ins
        if x.dtype not in ("int64", "int32"):
            raise ShapeError("E0303", f"embedding expects integer indices, got {x}",
                             label=f"this is {x}", help="embed token ids (int64), not features")
        if a.num <= 0 or a.dim <= 0:
            raise ShapeError("E0305", f"embedding needs positive sizes, got num={a.num}, dim={a.dim}")
        if a.padding_idx is not None and not -a.num <= a.padding_idx < a.num:
            raise ShapeError("E0304", f"padding_idx={a.padding_idx} is outside a table of {a.num} rows")
        return [TensorType(x.shape + (a.dim,), "float32")]

    def params(self, a, ins):
        return {"weight": (a.num, a.dim)}

    def saved(self, a, ins, outs, ctx):
        return [Saved.input(0, "indices")] if ctx.weights_grad else []

    def lower(self, a, ins, outs):
        kw = {} if a.padding_idx is None else {"padding_idx": a.padding_idx}
        return Module("nn.Embedding", (a.num, a.dim), kw)
