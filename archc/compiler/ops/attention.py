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
from .base import (Attrs, Code, Footprint, Module, Op, Saved, ShapeError, dtype_bytes, expect_rank, register,
                   static_int)

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

    def saved(self, a, ins, outs, ctx):
        q, k, _ = ins
        d, dk = self._widths(a, ins)
        refs = [Saved.input(0, "q"), Saved.input(1, "k"), Saved.input(2, "v")]
        return _sdpa(ctx, a, q.shape[0], q.shape[1], k.shape[1], d, dk, q.dtype, refs)[0] if ctx.any_grad else []

    def footprint(self, a, ins, outs, ctx):
        q, k, _ = ins
        d, dk = self._widths(a, ins)
        _, fwd, bwd, out_view = _sdpa(ctx, a, q.shape[0], q.shape[1], k.shape[1], d, dk, q.dtype, [])
        return Footprint(fwd_peak=fwd, bwd_peak=bwd)


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

    def _memory(self, a, ins, ctx):
        """(saved, fwd_peak, bwd_peak): the projections, the attention core, the output projection."""
        x = ins[0]
        src = ins[1] if len(ins) > 1 else x
        d, dk = self._check(a, ins)
        b, t, s = x.shape[0], x.shape[1], src.shape[1]
        dsz = dtype_bytes(x.dtype)
        out = a.out_name or _DEFAULT_OUT[a.layout]
        q_b, kv_b = b * t * d * dsz, b * s * dk * dsz
        grad = ctx.any_grad
        rg = list(ctx.requires_grad) + [True] * (len(ins) - len(ctx.requires_grad))
        rg_x, rg_s = rg[0], rg[-1]  # the queries' input, the keys' and values' input
        wg = ctx.weights_grad
        saved: list = []
        if grad:
            # as `linear`: each projection keeps its input if its weight needs a gradient (a
            # strided input, such as a recurrent layer's time-major outputs, is copied by each
            # linear reading it; autocast casts a wider input anew for each), and its weight
            # if its input needs one
            reads = ([1, 2 if a.layout == "separate" else 1] if len(ins) > 1
                     else [3 if a.layout == "separate" else 1])
            for i, n in enumerate(reads if wg else []):
                if not ctx.contiguous(i):
                    saved += [Saved.new(ctx.in_bytes(i), "contiguous copy of the projections' input")] * n
                else:
                    saved.append(Saved.input(i, "input of the projections"))
                    if i < len(ctx.casts) and ctx.casts[i]:
                        saved += [Saved.new(ctx.in_bytes(i), "autocast's copy of the projections' input")] * (n - 1)
            if a.layout == "separate":
                names = (["q_proj.weight"] if rg_x else []) + (["k_proj.weight", "v_proj.weight"] if rg_s else [])
            else:  # one weight; cross-attention slices it (under autocast each slice is cast anew)
                w = {"fused": "qkv.weight", "torch": "in_proj_weight"}[a.layout]
                names = [w] if rg_x and rg_s else []
                if len(ins) > 1 and rg_x != rg_s and ctx.weight_casts:
                    saved.append(Saved.new(ctx.param_bytes(w) * (d if rg_x else 2 * dk) // (d + 2 * dk),
                                           "autocast's copy of the in-projection's slice"))
                elif rg_x or rg_s:
                    names = [w]
            saved += [Saved.param(n) for n in names] + [Saved.param(f"{out}.weight")]
        fused_proj = a.layout != "separate" and len(ins) == 1
        if a.rope is not None:  # q and k rotated: new tensors; cos and sin kept
            hd = d // a.heads
            proj = [Saved.new(q_b, "rotated q"), Saved.new(kv_b, "rotated k"),
                    Saved.new(kv_b, "v (projection)"), Saved.new(2 * 2 * t * hd * dsz, "rope cos and sin")]
            rope_tmp = 2 * q_b
        elif fused_proj:
            proj = [Saved.new(q_b + 2 * kv_b, "q, k, v (one fused projection)")]
            rope_tmp = 0
        else:
            proj = [Saved.new(q_b, "q (projection)"), Saved.new(kv_b, "k (projection)"),
                    Saved.new(kv_b, "v (projection)")]
            rope_tmp = 0
        core, fwd, bwd, out_view = _sdpa(ctx, a, b, t, s, d, dk, x.dtype, [],
                                         need=(rg_x or wg, rg_s or wg, rg_s or wg))
        core = [Saved.new(q_b, "attention output (input of the output projection)") if c.kind == "output" else c
                for c in core]
        kernel = ctx.device.attention_kernel(a.dropout, ctx.training) if ctx.device is not None else "fused"
        if kernel == "fused" and dk != d:  # grouped: the core keeps q and repeated copies of k and v
            saved_core = proj[:1] + proj[3:] + core
            fwd += sum(p.bytes for p in proj[1:3])
        elif kernel == "fused":
            saved_core = proj[:3] + proj[3:] + core  # the core keeps q, k, v themselves
        else:
            saved_core = proj[3:] + core  # the math path keeps scaled copies instead
            fwd += sum(p.bytes for p in proj[:3])
        if out_view:
            att_out = []  # the core's output (kept by the core) is the output projection's input
        else:
            att_out = [Saved.new(q_b, "merged heads (input of the output projection)")]
        if grad and not wg:  # a frozen output projection keeps no input
            fwd += sum(p.bytes for p in att_out)
            att_out = []
        if not grad:
            fwd += sum(p.bytes for p in saved_core + att_out)
            return [], fwd + rope_tmp, 0, False
        if kernel == "fused":
            return saved + saved_core + att_out, fwd + rope_tmp, bwd + q_b + 2 * kv_b, False
        # the math path's backward runs node by node, freeing what each kept: its high point
        # is one of (a) the output projection's, (b) the core's first product (the incoming
        # gradient, float32 under the CPU's upcast, v's gradient and the probabilities'), (c)
        # the in-projections' (q, k, v's gradients, concatenated for a fused layout, the
        # input's, the weights'). The node's saved tensors are released before the input
        # gradients (frees_saved), so bwd_peak is that high point above the node's gradients.
        cast = ctx.weight_casts
        par = {n: ctx.param_bytes(n) for n in ctx.params}
        pw = lambda n: par.get(n, 0) * (2 if cast else 1)  # noqa: E731 (float32 .grad under autocast)
        held = saved + saved_core + att_out
        shared = [i for i in range(1, len(ins))]  # `kv` (an encoder's output) is kept by other layers too
        s_act = sum(x.bytes for x in held if x.kind == "new") + \
            sum(ctx.in_bytes(x.index) for x in held if x.kind == "input" and x.index not in shared) + \
            (sum(par.get(x.name, 0) for x in held if x.kind == "param") if cast else 0)
        s_proj = s_act - sum(x.bytes for x in saved_core + att_out)
        s_att = sum(x.bytes for x in att_out)
        p_g = sum(par.values()) if wg else 0
        o_names = [f"{out}.weight"] + ([f"{out}.bias"] if a.bias else [])
        w_o = sum(par.get(n, 0) for n in o_names) if wg else 0
        w_o_fin = sum(pw(n) for n in o_names) if wg else 0
        dx = (ctx.in_bytes(0) if rg_x else 0) + (ctx.in_bytes(1) if len(ins) > 1 and rg_s else 0)
        up = 4 if ctx.device is not None and ctx.device.attention_upcast and dsz < 4 else dsz
        probs = b * a.heads * t * s * up
        core1 = (b * t * d * up if up != dsz else 0) + b * s * d * up + probs
        qkv = q_b + 2 * kv_b
        high = max(s_act + w_o + q_b,
                   s_act - s_att - q_b + w_o_fin + q_b + core1,
                   s_proj + w_o_fin - q_b + (2 * qkv if fused_proj else qkv) + dx + (p_g - w_o))
        # forward: the projections (q, k, v) stay until the node ends; its high point is the
        # softmax (the scores, k transposed, the probabilities and safe_softmax's boolean
        # test, besides the kept copies) or the end (everything kept, the heads' output and
        # its merged copy, the output projection's result)
        kept_core = sum(x.bytes for x in saved_core)
        cp = (q_b + 2 * kv_b) * up // dsz if up != dsz else 0  # float32 copies of q, k, v
        causal = 3 * t * s if a.causal else 0
        m1 = cp + b * t * d * up + 2 * b * s * d * up + b * s * d * up + 2 * probs + probs // up + causal
        m2 = kept_core + 3 * q_b
        if up != dsz:  # upcast: the float32 copies and as much again, the float32 output twice, its cast
            m2 = max(m2, kept_core + 2 * cp + 2 * b * t * d * up + q_b)
        fwd = qkv + rope_tmp + max(m1, m2) - kept_core - sum(x.bytes for x in att_out) - q_b
        return held, max(0, fwd), max(0, high - p_g - dx), True

    def saved(self, a, ins, outs, ctx):
        return self._memory(a, ins, ctx)[0]

    def footprint(self, a, ins, outs, ctx):
        _, fwd, bwd, frees = self._memory(a, ins, ctx)
        return Footprint(fwd_peak=fwd, bwd_peak=bwd, frees_saved=frees)


def _sdpa(ctx, a, b, t, s, d, dk, dtype, refs, need=None):
    """Memory of scaled_dot_product_attention over q [b, t, d] and k, v [b, s, dk] split into
    heads: (saved, fwd_peak, bwd_peak, output_is_saved_view).

    A fused kernel (flash / memory-efficient; the CPU flash kernel) keeps q, k and v
    (`refs`, or repeated copies under grouped-query attention), its output and the
    log-sum-exp (float32, one per head and query). The composite (math) path, which
    SDPA takes on the CPU when dropout is active or when forced, keeps sqrt(scale)-scaled
    copies of q and k, the probabilities, the dropout mask and the dropped probabilities,
    and a contiguous copy of v; it computes half inputs in float32 on the CPU."""
    h = a.heads
    kernel = ctx.device.attention_kernel(a.dropout, ctx.training) if ctx.device is not None else "fused"
    dsz = dtype_bytes(dtype)
    grouped = dk != d
    if kernel == "fused":
        qkv = list(refs) if not grouped else refs[:1] + [
            Saved.new(b * s * d * dsz, "k repeated over the query heads"),
            Saved.new(b * s * d * dsz, "v repeated over the query heads")]
        saved = qkv + [Saved.output(0, "attention output"), Saved.new(b * h * t * 4, "log-sum-exp (float32)")]
        bwd = 2 * b * s * d * dsz if grouped else 0
        return saved, 0, bwd, True
    up = 4 if ctx.device is not None and ctx.device.attention_upcast and dsz < 4 else dsz
    probs = b * h * t * s * up
    # each product keeps the operand the other's gradient needs (the `attention` op knows which
    # of q, k, v need one; inside `mha` all do)
    gq, gk, gv = need if need is not None else ctx.requires_grad if len(ctx.requires_grad) == 3 else [True] * 3
    scores = gq or gk
    saved = ([Saved.new(b * t * d * up, "q scaled by sqrt(scale)")] if gk else []) + \
        ([Saved.new(b * s * d * up, "k scaled by sqrt(scale)")] if gq else [])
    dropout = a.dropout > 0 and ctx.training
    if scores or (gv and not dropout):
        saved.append(Saved.new(probs, "attention probabilities"))
    if dropout:
        mask = b * h * t * s * (ctx.device.dropout_mask_bytes if ctx.device and ctx.device.dropout_mask_bytes else up)
        saved += ([Saved.new(mask, "dropout mask over the probabilities")] if scores else []) + \
            ([Saved.new(probs, "dropped probabilities")] if gv else [])
    if scores:
        saved.append(Saved.new(b * s * d * up, "contiguous copy of v"))
    causal = 3 * t * s if a.causal else 0  # the boolean mask and its additive form
    fwd = max(probs + causal, b * t * d * up + (b * t * d * dsz if up != dsz else 0))
    if up != dsz:
        fwd += (b * t * d + 2 * b * s * dk) * up  # float32 copies of q, k, v
    if not ctx.any_grad:
        fwd += sum(x.bytes for x in saved)
        return [], fwd, 0, False
    # forward with gradients: the high point is the softmax (the scaled q and k, v's copy, k
    # transposed, the scores, the probabilities, safe_softmax's boolean test) or the end
    # (everything kept, the heads' output and its merged copy, the op's output); upcast: the
    # float32 copies of q, k, v and as much again, the float32 output twice and its cast
    kept = sum(x.bytes for x in saved)
    q_b = b * t * d * dsz
    cp = (b * t * d + 2 * b * s * dk) * up if up != dsz else 0
    m1 = cp + b * t * d * up + 3 * b * s * d * up + 2 * probs + probs // up + causal
    m2 = kept + 2 * q_b
    if up != dsz:
        m2 = max(m2, kept + 2 * cp + 2 * b * t * d * up + q_b)
    fwd = max(0, max(m1, m2) - kept - q_b)
    # backward, node by node: the first product's (attn @ v) gradients are the high point, on
    # top of everything kept and the incoming gradient (float32 when upcast): v's gradient and
    # the (dropped) probabilities'; later steps free more than they allocate. When upcast, q, k
    # and v's float32 gradients are cast back at the end. `bwd_peak` is above the inputs'
    # gradients, which the replay allocates first.
    first = (b * t * d * up if up != dsz else 0) + (b * s * d * up if gv else 0) + (probs if scores else 0)
    if up != dsz:
        kept = sum(x.bytes for x in saved)
        first = max(first, (b * t * d + 2 * b * s * d) * up - kept)
    dx = b * t * d * dsz * gq + b * s * dk * dsz * (gk + gv)
    bwd = max(0, first - dx)
    return saved, fwd, bwd, False
