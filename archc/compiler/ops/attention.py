"""Attention: the weightless core `attention` and `mha` with its own projections.

Both lower to `F.scaled_dot_product_attention` (through archc.runtime.modules).
Sequences are `[B, T, D]`. Causal self-attention keeps its keys and values in
the key/value cache (`{cache}`) under its module path, so models built from
decoder specs decode incrementally.

FLOPs: 4·B·T·S·D for the scores and the weighted sum (the full T x S product,
causal or not, as torch's counter reports it), plus the projections' 2 per
multiply-add (biases not counted, as in `linear`).
"""
from __future__ import annotations

import keyword
from typing import Literal

from ..dims import Dim
from ..ir import TensorType
from .base import Attrs, Code, Module, Op, ShapeError, expect_rank, register, static_int

BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
         "int8": 1, "uint8": 1, "bool": 1}


def _known(a: Dim, b: Dim) -> bool:
    """True if two sizes certainly differ."""
    return isinstance(a, int) and isinstance(b, int) and a != b


def _heads(d: int, heads: int, kv_heads: int | None, what: str) -> int:
    """Checks head counts; returns the key/value width (d * kv_heads / heads)."""
    if heads <= 0:
        raise ShapeError("E0305", f"{what} needs a positive head count, got heads={heads}", label=f"heads={heads}")
    if d % heads:
        raise ShapeError("E0303", f"{what}: heads={heads} does not divide the width {d}", label=f"heads={heads}",
                         help=f"use a head count that divides {d}")
    if kv_heads is None:
        return d
    if kv_heads <= 0:
        raise ShapeError("E0305", f"{what} needs a positive kv_heads, got {kv_heads}", label=f"kv_heads={kv_heads}")
    if heads % kv_heads:
        raise ShapeError("E0303", f"{what}: kv_heads={kv_heads} does not divide heads={heads}",
                         label=f"kv_heads={kv_heads}", help="each key/value head serves a whole group of query heads")
    return d // heads * kv_heads


def _seq(t: TensorType, what: str) -> None:
    expect_rank(t, {3}, what)


class AttentionAttrs(Attrs):
    heads: int
    causal: bool = False
    dropout: float = 0.0
    scale: float | None = None
    kv_heads: int | None = None


@register
class Attention(Op):
    name = "attention"
    Attrs = AttentionAttrs
    arity = 3
    doc = ("The weightless attention core: `attention(q, k, v, heads)` with q [B, T, D] and k, v [B, S, Dkv] "
           "-> [B, T, D]: split into heads, scaled_dot_product_attention, merge heads. `kv_heads` < heads is "
           "grouped-query attention (Dkv = D·kv_heads/heads); `scale` defaults to 1/sqrt(D/heads); `causal` "
           "masks future positions and keeps keys and values in the key/value cache when decoding. "
           "FLOPs: 4·B·T·S·D.")

    def _widths(self, a, ins):
        q, k, v = ins
        for t, n in zip(ins, "qkv"):
            _seq(t, f"attention's `{n}`")
        d = static_int(q.shape[-1], "attention's query width")
        dk = _heads(d, a.heads, a.kv_heads, "attention")
        for t, n in ((k, "k"), (v, "v")):
            w = static_int(t.shape[-1], f"attention's `{n}` width")
            if w != dk:
                why = f" (kv_heads={a.kv_heads} of heads={a.heads})" if a.kv_heads else ""
                raise ShapeError("E0303", f"attention: `{n}` has width {w}, but queries of width {d} need "
                                 f"{dk}{why}", label=f"`{n}` is {t}",
                                 help="project keys and values to the query width (times kv_heads/heads)")
        if _known(k.shape[1], v.shape[1]):
            raise ShapeError("E0301", f"attention: keys {k} and values {v} have different lengths")
        for t in (k, v):
            if _known(q.shape[0], t.shape[0]):
                raise ShapeError("E0301", f"attention: batch sizes differ, queries {q} vs {t}")
        if a.causal and _known(q.shape[1], k.shape[1]):
            raise ShapeError("E0303", f"causal attention needs as many keys as queries, got {q} and {k}",
                             help="causal masking is for self-attention")
        if not 0.0 <= a.dropout < 1.0:
            raise ShapeError("E0207", f"attention: dropout must be in [0, 1), got {a.dropout}")
        return d, dk

    def infer(self, a, ins):
        self._widths(a, ins)
        q, k, _ = ins
        return [TensorType(q.shape, q.dtype)]

    def flops(self, a, ins, outs):
        q, k, _ = ins
        return 4 * q.numel() * k.shape[1]

    def cache_bytes_per_token(self, a, ins):
        if not a.causal:
            return 0
        _, dk = self._widths(a, ins)
        return 2 * dk * BYTES.get(ins[1].dtype, 4)

    def lower(self, a, ins, outs):
        args = [str(a.heads)]
        if a.kv_heads is not None and a.kv_heads != a.heads:
            args.append(f"kv_heads={a.kv_heads}")
        if a.causal:
            args.append("causal=True")
        if a.dropout:
            args.append(f"dropout={a.dropout!r}, training=self.training")
        if a.scale is not None:
            args.append(f"scale={a.scale!r}")
        if a.causal:
            args.append("cache={cache}, key={key}")
        return Code(f"rt.attention({{0}}, {{1}}, {{2}}, {', '.join(args)})")


class MhaAttrs(Attrs):
    heads: int
    causal: bool = False
    dropout: float = 0.0
    bias: bool = True
    kv_heads: int | None = None
    layout: Literal["separate", "fused", "torch"] = "separate"
    out_name: str | None = None
    rope: float | None = None


_DEFAULT_OUT = {"separate": "o_proj", "fused": "out_proj", "torch": "out_proj"}


@register
class MultiHeadAttention(Op):
    name = "mha"
    Attrs = MhaAttrs
    tensor_attrs = ("kv",)
    doc = ("Multi-head attention with its projections, [B, T, D] -> [B, T, D]: self-attention, or "
           "cross-attention with keys and values from `kv=` [B, S, D]. `causal` masks future positions and "
           "uses the key/value cache when decoding; `kv_heads` < heads is grouped-query attention; `rope=BASE` "
           "rotates queries and keys (transformers' Llama convention). `layout` names the parameters: "
           "\"separate\" (default): q_proj, k_proj, v_proj, o_proj (`out_name=\"out_proj\"` for BART/CLIP); "
           "\"fused\": qkv [D + 2·Dkv, D] and out_proj; \"torch\": torch.nn.MultiheadAttention's in_proj_weight, "
           "in_proj_bias, out_proj (its state dict loads as is). FLOPs: projections (2 per multiply-add) "
           "+ 4·B·T·S·D.")

    def _check(self, a, ins):
        x = ins[0]
        _seq(x, "mha")
        d = static_int(x.shape[-1], "mha's input width")
        dk = _heads(d, a.heads, a.kv_heads, "mha")
        if len(ins) > 1:
            kv = ins[1]
            _seq(kv, "mha's `kv`")
            w = static_int(kv.shape[-1], "mha's `kv` width")
            if w != d:
                raise ShapeError("E0303", f"mha: cross-attention over `kv` of width {w}, but the queries have "
                                 f"width {d}", label=f"`kv` is {kv}",
                                 help=f"project `kv` to width {d} first (`linear({d})`)")
            if _known(x.shape[0], kv.shape[0]):
                raise ShapeError("E0301", f"mha: batch sizes differ, input {x} vs `kv` {kv}")
            if a.causal:
                raise ShapeError("E0207", "mha: causal cross-attention is not supported",
                                 help="causal masking is for self-attention; drop `causal=true` or `kv=`")
        if a.layout == "torch":
            if a.kv_heads not in (None, a.heads):
                raise ShapeError("E0207", "mha: layout=\"torch\" (torch.nn.MultiheadAttention) has no grouped "
                                 "keys and values", help="use layout=\"separate\" with kv_heads")
            if a.out_name not in (None, "out_proj"):
                raise ShapeError("E0207", "mha: layout=\"torch\" names its output projection `out_proj`")
        if a.out_name is not None and (not a.out_name.isidentifier() or keyword.iskeyword(a.out_name)
                                       or a.out_name in ("q_proj", "k_proj", "v_proj", "qkv", "in_proj_weight",
                                                         "in_proj_bias")):
            raise ShapeError("E0207", f"mha: out_name={a.out_name!r} is not a usable module name")
        if not 0.0 <= a.dropout < 1.0:
            raise ShapeError("E0207", f"mha: dropout must be in [0, 1), got {a.dropout}")
        if a.rope is not None:
            if a.rope <= 0:
                raise ShapeError("E0207", f"mha: rope base must be positive, got {a.rope}")
            if (d // a.heads) % 2:
                raise ShapeError("E0303", f"mha: rope needs an even head size, got {d // a.heads}")
        return d, dk

    def infer(self, a, ins):
        self._check(a, ins)
        return [ins[0]]

    def params(self, a, ins):
        d, dk = self._check(a, ins)
        out = a.out_name or _DEFAULT_OUT[a.layout]
        p: dict[str, tuple[int, ...]] = {}

        def lin(name, n_out, n_in):
            p[f"{name}.weight"] = (n_out, n_in)
            if a.bias:
                p[f"{name}.bias"] = (n_out,)

        if a.layout == "separate":
            lin("q_proj", d, d)
            lin("k_proj", dk, d)
            lin("v_proj", dk, d)
        elif a.layout == "fused":
            lin("qkv", d + 2 * dk, d)
        else:
            p["in_proj_weight"] = (3 * d, d)
            if a.bias:
                p["in_proj_bias"] = (3 * d,)
        lin(out, d, d)
        return p

    def flops(self, a, ins, outs):
        x = ins[0]
        src = ins[1] if len(ins) > 1 else x
        d, dk = self._check(a, ins)
        proj = 2 * x.numel() * d * 2 + 2 * src.numel() * dk * 2  # q and out; k and v
        return proj + 4 * x.numel() * src.shape[1]

    def cache_bytes_per_token(self, a, ins):
        if not a.causal or len(ins) > 1:
            return 0
        _, dk = self._check(a, ins)
        return 2 * dk * BYTES.get(ins[0].dtype, 4)

    def lower(self, a, ins, outs):
        d, _ = self._check(a, ins)
        kw = {}
        for k, default in (("kv_heads", None), ("causal", False), ("dropout", 0.0), ("bias", True),
                           ("layout", "separate"), ("out_name", None), ("rope", None)):
            v = getattr(a, k)
            if v != default and not (k == "kv_heads" and v == a.heads):
                kw[k] = v
        if len(ins) > 1:
            call = "{m}({0}, {1})"
        elif a.causal:
            call = "{m}({0}, cache={cache}, key={key})"
        else:
            call = "{m}({0})"
        return Module("rt.MultiHeadAttention", (d, a.heads), kw, call=call)
