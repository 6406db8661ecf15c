"""Position ops: learned and sinusoidal position encodings, rotary embedding, class token.

They take sequences `[B, T, D]`. When a model decodes with a key/value cache,
the positions of learned_pe, sinusoidal_pe and rope continue from the number
of positions each has already seen (kept in the cache under its module path).

FLOPs: 1 per element for the added encodings, 3 per element for rope (two
multiplies and an add), 0 for cls_token (a copy).
"""
from __future__ import annotations

from typing import Literal

from ..dims import Dim
from ..ir import TensorType
from .base import Attrs, Code, Footprint, Module, Op, Param, Saved, ShapeError, expect_rank, register, static_int


def _seq(x: TensorType, what: str) -> int:
    """Checks a [B, T, D] input; returns D."""
    expect_rank(x, {3}, what)
    return static_int(x.shape[-1], f"{what}'s width (last axis)")


def _fits(t: Dim, max_len: int, what: str) -> None:
    if max_len <= 0:
        raise ShapeError("E0305", f"{what} needs a positive max_len, got {max_len}")
    if isinstance(t, int) and t > max_len:
        raise ShapeError("E0304", f"{what}: a sequence of {t} positions is longer than max_len={max_len}",
                         label=f"max_len={max_len}", help=f"raise max_len to at least {t}, or shorten the input")


class LearnedPEAttrs(Attrs):
    max_len: int
    layout: Literal["embedding", "param"] = "embedding"


@register
class LearnedPE(Op):
    name = "learned_pe"
    Attrs = LearnedPEAttrs
    doc = ("Adds a learned position table to [B, T, D]. layout=\"embedding\" (default): an embedding "
           "[max_len, D] at `<path>.weight` (GPT-2's `wpe`), positions continuing from the cached length "
           "when decoding; layout=\"param\": a bare parameter [1, max_len, D] whose state_dict key is the path "
           "(torchvision ViT's `encoder.pos_embedding`), added to the first T positions. T > max_len is E0304. "
           "FLOPs: 1 per element.")

    def infer(self, a, ins):
        (x,) = ins
        _seq(x, "learned_pe")
        _fits(x.shape[1], a.max_len, "learned_pe")
        return [x]

    def params(self, a, ins):
        d = _seq(ins[0], "learned_pe")
        return {"weight": (a.max_len, d)} if a.layout == "embedding" else {"": (1, a.max_len, d)}

    def flops(self, a, ins, outs):
        return ins[0].numel()

    def lower(self, a, ins, outs):
        d = _seq(ins[0], "learned_pe")
        if a.layout == "embedding":
            return Module("rt.LearnedPositionalEmbedding", (a.max_len, d), call="{m}({0}, cache={cache}, key={key})")
        t = ins[0].shape[1]
        call = "({0} + {m})" if t == a.max_len else "({0} + {m}[:, :{0}.shape[1]])"
        return Param((1, a.max_len, d), call=call, init="zeros")

    def saved(self, a, ins, outs, ctx):
        return []  # x + table[positions]: an addition keeps nothing

    def footprint(self, a, ins, outs, ctx):
        return Footprint(grad_views={0: 0})


class SinusoidalPEAttrs(Attrs):
    max_len: int


@register
class SinusoidalPE(Op):
    name = "sinusoidal_pe"
    Attrs = SinusoidalPEAttrs
    doc = ("Adds the fixed sinusoidal encoding of Vaswani et al. to [B, T, D] (sin on even channels, cos on "
           "odd ones, frequencies 10000^(-2i/D)), computed on the fly: no parameters or buffers. Positions "
           "continue from the cached length when decoding; T > max_len is E0304. FLOPs: 1 per element.")

    def infer(self, a, ins):
        (x,) = ins
        _seq(x, "sinusoidal_pe")
        _fits(x.shape[1], a.max_len, "sinusoidal_pe")
        return [x]

    def flops(self, a, ins, outs):
        return ins[0].numel()

    def lower(self, a, ins, outs):
        return Code(f"rt.sinusoidal_pe({{0}}, {a.max_len}, cache={{cache}}, key={{key}})")

    def saved(self, a, ins, outs, ctx):
        return []

    def footprint(self, a, ins, outs, ctx):
        x = ins[0]
        table = x.shape[1] * x.shape[2] * 4  # built in float32 each call, then cast
        return Footprint(fwd_peak=3 * table, grad_views={0: 0})


class RopeAttrs(Attrs):
    base: float = 10000.0
    heads: int | None = None


@register
class Rope(Op):
    name = "rope"
    Attrs = RopeAttrs
    doc = ("Rotary position embedding (transformers' Llama convention, rotate_half over the two halves of "
           "each head) of [B, H, T, Dh], or of [B, T, D] split into `heads` heads (one head when not given). "
           "Positions continue from the cached length when decoding. FLOPs: 3 per element.")

    def infer(self, a, ins):
        (x,) = ins
        expect_rank(x, {3, 4}, "rope")
        if a.base <= 0:
            raise ShapeError("E0207", f"rope needs a positive base, got {a.base}")
        d = static_int(x.shape[-1], "rope's width (last axis)")
        if x.rank == 4:
            hd = d
        else:
            h = a.heads or 1
            if h <= 0:
                raise ShapeError("E0305", f"rope needs a positive head count, got heads={h}")
            if d % h:
                raise ShapeError("E0303", f"rope: heads={h} does not divide the width {d}", label=f"heads={h}")
            hd = d // h
        if hd % 2:
            raise ShapeError("E0303", f"rope needs an even head size, got {hd}",
                             help="rotary embedding rotates pairs of channels")
        return [x]

    def flops(self, a, ins, outs):
        return 3 * ins[0].numel()

    def saved(self, a, ins, outs, ctx):
        if not ctx.any_grad:
            return []
        x = ins[0]
        hd = x.shape[-1] if x.rank == 4 else x.shape[-1] // (a.heads or 1)
        t = x.shape[-2] if x.rank == 4 else x.shape[1]
        # x * cos + rotate_half(x) * sin keeps cos and sin
        return [Saved.new(2 * t * hd * ctx.nbytes(x) // x.numel(), "cos and sin")]

    def footprint(self, a, ins, outs, ctx):
        n = ctx.in_bytes(0)
        # x*cos, rotate_half (a negated half and a concatenation), *sin; [B, T, D] inputs are
        # rotated per head and merged back with a copy
        extra = n if ins[0].rank == 3 else 0
        return Footprint(fwd_peak=n * 5 // 2 + extra, bwd_peak=2 * n)

    def lower(self, a, ins, outs):
        heads = f", heads={a.heads}" if a.heads and ins[0].rank == 3 else ""
        return Code(f"rt.rope({{0}}, {a.base!r}{heads}, cache={{cache}}, key={{key}})")


@register
class ClsToken(Op):
    name = "cls_token"
    doc = ("Prepends a learned [1, 1, D] token to [B, T, D] -> [B, T + 1, D]: a bare parameter whose state_dict "
           "key is the path (write `class_token: cls_token` for torchvision's ViT). FLOPs: 0.")

    def infer(self, a, ins):
        (x,) = ins
        _seq(x, "cls_token")
        return [TensorType((x.shape[0], x.shape[1] + 1, x.shape[2]), x.dtype)]

    def params(self, a, ins):
        return {"": (1, 1, _seq(ins[0], "cls_token"))}

    def lower(self, a, ins, outs):
        return Param((1, 1, _seq(ins[0], "cls_token")),
                     call="torch.cat([{m}.expand({0}.shape[0], -1, -1), {0}], dim=1)", init="zeros")

    def saved(self, a, ins, outs, ctx):
        return []

    def footprint(self, a, ins, outs, ctx):
        return Footprint(grad_views={0: 0})  # x's gradient is a slice of the output's
