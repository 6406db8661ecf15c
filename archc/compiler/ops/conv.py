"""Convolutions, rank-polymorphic: input rank 3/4/5 -> 1-D/2-D/3-D."""
from __future__ import annotations

from typing import Literal

from ..dims import Dim, numel
from ..ir import TensorType
from .base import (Attrs, Footprint, Module, Op, Saved, ShapeError, dtype_bytes, expect_rank, register,
                   static_int)

IntOrList = int | tuple[int, ...]


def spatial(x: TensorType, what: str) -> int:
    """Number of spatial axes of a batched [B, C, *spatial] input (1..3)."""
    expect_rank(x, {3, 4, 5}, what)
    return x.rank - 2


def per_axis(v: IntOrList, n: int, field: str, what: str) -> tuple[int, ...]:
    """Expand an int to one value per spatial axis; check a list's length."""
    if isinstance(v, int):
        return (v,) * n
    if len(v) != n:
        raise ShapeError("E0302", f"{what}'s {field} has {len(v)} entries but the input has {n} "
                         f"spatial axes", label=f"{field}={list(v)}",
                         help="give one value per spatial axis, or a single int")
    return tuple(v)


def check_out(what: str, x: TensorType, out: tuple[Dim, ...]) -> None:
    """Raise E0305 when a static output size is empty (kernel larger than the input)."""
    for d in out:
        if isinstance(d, int) and d <= 0:
            raise ShapeError("E0305", f"{what} would produce an empty output {list(out)} from {x}",
                             label=f"this is {x}",
                             help="the (dilated) kernel is larger than the padded input")


def _check_common(what: str, cin: int, out: int, groups: int, ks, ss, ds) -> None:
    if out <= 0 or groups <= 0 or min(ks + ss + ds) <= 0:
        raise ShapeError("E0305", f"{what} needs positive out, kernel, stride, dilation and groups")
    if cin % groups or out % groups:
        raise ShapeError("E0303", f"{what}: groups={groups} must divide both the input channels "
                         f"({cin}) and the output channels ({out})",
                         label=f"groups={groups}")


class ConvAttrs(Attrs):
    out: int
    kernel: IntOrList
    stride: IntOrList = 1
    padding: IntOrList | Literal["same", "valid"] = 0
    dilation: IntOrList = 1
    groups: int = 1
    bias: bool = True


@register
class Conv(Op):
    name = "conv"
    Attrs = ConvAttrs
    doc = ("Convolution over the spatial axes of [B, C, *S] (nn.Conv1d/2d/3d by rank). "
           "FLOPs: 2 * out elements * C_in/groups * kernel volume (bias not counted).")

    def _geom(self, a: ConvAttrs, x: TensorType):
        n = spatial(x, "conv")
        ks, ss, ds = (per_axis(v, n, f, "conv") for v, f in
                      ((a.kernel, "kernel"), (a.stride, "stride"), (a.dilation, "dilation")))
        cin = static_int(x.shape[1], "conv's input channels")
        _check_common("conv", cin, a.out, a.groups, ks, ss, ds)
        return n, cin, ks, ss, ds

    def infer(self, a, ins):
        (x,) = ins
        n, cin, ks, ss, ds = self._geom(a, x)
        if a.padding == "same":
            if any(s != 1 for s in ss):
                raise ShapeError("E0303", "conv: padding=\"same\" needs stride 1",
                                 label=f"stride={a.stride}", help="give explicit padding instead")
            sp = x.shape[2:]
        else:
            ps = per_axis(0 if a.padding == "valid" else a.padding, n, "padding", "conv")
            if min(ps) < 0:
                raise ShapeError("E0305", f"conv: padding must not be negative, got {a.padding}")
            sp = tuple((h + 2 * p - d * (k - 1) - 1) // s + 1
                       for h, k, s, p, d in zip(x.shape[2:], ks, ss, ps, ds))
        check_out("conv", x, sp)
        return [TensorType(x.shape[:1] + (a.out,) + sp, x.dtype)]

    def params(self, a, ins):
        _, cin, ks, _, _ = self._geom(a, ins[0])
        p = {"weight": (a.out, cin // a.groups) + ks}
        if a.bias:
            p["bias"] = (a.out,)
        return p

    def flops(self, a, ins, outs):
        _, cin, ks, _, _ = self._geom(a, ins[0])
        return 2 * outs[0].numel() * (cin // a.groups) * numel(ks)

    def lower(self, a, ins, outs):
        n, cin, _, _, _ = self._geom(a, ins[0])
        kw = {k: getattr(a, k) for k, d in (("stride", 1), ("padding", 0), ("dilation", 1),
                                              ("groups", 1), ("bias", True)) if getattr(a, k) != d}
        return Module(f"nn.Conv{n}d", (cin, a.out, a.kernel), kw)

    def saved(self, a, ins, outs, ctx):
        # convolution_backward is one formula for all gradients: input and weight are
        # kept whenever any of them is needed.
        return [Saved.input(0), Saved.param("weight")] if ctx.any_grad else []

    def footprint(self, a, ins, outs, ctx):
        if ctx.device is None or ctx.device.conv != "onednn":
            return Footprint()  # cuDNN: its workspace is not modelled (docs/memory.md)
        n, cin, ks, ss, ds = self._geom(a, ins[0])
        x, y = ins[0], outs[0]
        pads = _front_pads(a, n, ks, ds)
        fp = _onednn(ctx, cin, a.out, a.groups, numel(ks), (x, y, ks, ss, pads, ds))
        if n == 3 and ctx.weights_grad and a.groups == 1 and ctx.ins[0].dtype == "float32":
            if pads[0] > 0 and ks[0] >= static_int(x.shape[2], "conv's input depth") + pads[0]:
                fp = _gemm_weight_grad(ctx, fp, cin, ks, y)
        return fp


class ConvTransposeAttrs(Attrs):
    out: int
    kernel: IntOrList
    stride: IntOrList = 1
    padding: IntOrList = 0
    output_padding: IntOrList = 0
    groups: int = 1
    bias: bool = True
    dilation: IntOrList = 1


@register
class ConvTranspose(Op):
    name = "conv_transpose"
    Attrs = ConvTransposeAttrs
    doc = ("Transposed convolution (nn.ConvTranspose1d/2d/3d by rank). "
           "FLOPs: 2 * input elements * out/groups * kernel volume (bias not counted).")

    def _geom(self, a: ConvTransposeAttrs, x: TensorType):
        n = spatial(x, "conv_transpose")
        ks, ss, ps, ops, ds = (per_axis(v, n, f, "conv_transpose") for v, f in (
            (a.kernel, "kernel"), (a.stride, "stride"), (a.padding, "padding"),
            (a.output_padding, "output_padding"), (a.dilation, "dilation")))
        cin = static_int(x.shape[1], "conv_transpose's input channels")
        _check_common("conv_transpose", cin, a.out, a.groups, ks, ss, ds)
        if min(ps) < 0:
            raise ShapeError("E0305", f"conv_transpose: padding must not be negative, got {a.padding}")
        for op_, s, d in zip(ops, ss, ds):
            if not 0 <= op_ < max(s, d):
                raise ShapeError("E0303", f"conv_transpose: output_padding={op_} must be smaller "
                                 f"than stride or dilation", label=f"output_padding={a.output_padding}")
        return n, cin, ks, ss, ps, ops, ds

    def infer(self, a, ins):
        (x,) = ins
        n, cin, ks, ss, ps, ops, ds = self._geom(a, x)
        sp = tuple((h - 1) * s - 2 * p + d * (k - 1) + o + 1
                   for h, k, s, p, o, d in zip(x.shape[2:], ks, ss, ps, ops, ds))
        check_out("conv_transpose", x, sp)
        return [TensorType(x.shape[:1] + (a.out,) + sp, x.dtype)]

    def params(self, a, ins):
        _, cin, ks, *_ = self._geom(a, ins[0])
        p = {"weight": (cin, a.out // a.groups) + ks}
        if a.bias:
            p["bias"] = (a.out,)
        return p

    def flops(self, a, ins, outs):
        _, _, ks, *_ = self._geom(a, ins[0])
        return 2 * ins[0].numel() * (a.out // a.groups) * numel(ks)

    def lower(self, a, ins, outs):
        n, cin, *_ = self._geom(a, ins[0])
        kw = {k: getattr(a, k) for k, d in (("stride", 1), ("padding", 0), ("output_padding", 0),
                                              ("groups", 1), ("bias", True), ("dilation", 1))
              if getattr(a, k) != d}
        return Module(f"nn.ConvTranspose{n}d", (cin, a.out, a.kernel), kw)

    def saved(self, a, ins, outs, ctx):
        return [Saved.input(0), Saved.param("weight")] if ctx.any_grad else []

    def footprint(self, a, ins, outs, ctx):
        if ctx.device is None or ctx.device.conv != "onednn":
            return Footprint()
        if ctx.ins[0].dtype in ("bfloat16", "float16") and a.groups == 1:
            # half precision (AMX): oneDNN's deconvolution runs its backward as convolutions of
            # the swapped problem (ONEDNN_VERBOSE: brg_conv_fwd for the input gradient,
            # brgconv_bwd_w reading the output gradient as its input): the `conv` rules with
            # the channel counts and the input and output exchanged
            _, cin, ks, ss, ps, _, ds = self._geom(a, ins[0])
            return _onednn(ctx, a.out, cin, 1, numel(ks), (outs[0], ins[0], ks, ss, ps, ds))
        # oneDNN's deconvolution: a column buffer the size of the output plus reorders.
        i, o, w = ctx.in_bytes(0), ctx.out_bytes(0), ctx.param_bytes("weight")
        return Footprint(fwd_peak=i + o + w, bwd_peak=i + o)


def _front_pads(a: ConvAttrs, n: int, ks, ds) -> tuple[int, ...]:
    """The padding before each spatial axis (PyTorch's "same" pads total // 2 in front)."""
    if a.padding == "same":
        return tuple(d * (k - 1) // 2 for k, d in zip(ks, ds))
    return per_axis(0 if a.padding == "valid" else a.padding, n, "padding", "conv")


def brgconv_bwd_w_scratch(threads: int, x: TensorType, y: TensorType, ks, ss, pads, ds,
                          bias: bool = True) -> int:
    """The scratchpad oneDNN's AMX weight-gradient convolution (`brgconv_bwd_w`, the bf16/fp16
    kernel) books, following its `init_conf_bwd_w`, `balance_bwd_w` and `init_scratchpad_bwd_w`
    (brgemm_convolution_utils, oneDNN 3.x):

    - threads split the reduction (batch x output rows, or x output frames in 3-D) `nthr_mb`
      ways and the channel blocks `nthr_oc_b` x `nthr_ic_b` ways, where its memory-cost model is
      lowest (reproduced here);
    - a transposed copy of the input per `nthr_mb` thread and 16-channel block, rows padded to
      `tr_iw` (the padded width rounded up to 32: one AMX tile row), plus guard elements;
    - a transposed copy of the output gradient likewise (`tr_ow`: the output width rounded up to
      an even number, or up to a better multiple of the tile when wider than 32), plus one row;
    - the float32 reduction buffer: the weight with both channel counts padded to 16, once per
      `nthr_mb` thread (bf16 weight gradients always accumulate in float32), and the bias's;
    - per thread a page-aligned brgemm batch (32-byte entries, one per output row x frame) and
      AMX tile buffers, and a fixed remainder (barriers, tile configuration, alignment: fitted).
    A 1x1 convolution without padding or stride over at most 28 columns is run as 1-D (rows
    folded into the width)."""
    from ..devices import ONEDNN_AMX_TILE_ROW as tile, ONEDNN_BRGCONV_BWD_W_FIXED as fixed
    from ..devices import ONEDNN_BRGCONV_BWD_W_FIXED_CHANNELS as fixed_ch, ONEDNN_CHANNEL_BLOCK as blk
    from ..devices import ONEDNN_PAGE as page

    def div_up(a_, b_):
        return -(-a_ // b_)

    def rnd_up(a_, b_):
        return div_up(a_, b_) * b_

    nd = len(ks)
    pad3 = (1,) * (3 - nd)
    mb, ic, oc = (static_int(v, "conv's shape") for v in (x.shape[0], x.shape[1], y.shape[1]))
    id_, ih, iw = pad3 + tuple(static_int(v, "conv's input") for v in x.shape[2:])
    od, oh, ow = pad3 + tuple(static_int(v, "conv's output") for v in y.shape[2:])
    kd, kh, kw = pad3 + tuple(ks)
    sd, sh, sw = pad3 + tuple(ss)
    ph, pw = ((0, 0) + tuple(pads))[-2:]
    ext_kw = (kw - 1) * (pad3 + tuple(ds))[2] + 1
    lpad = pw
    rpad = (ow - 1) * sw + ext_kw - iw - lpad
    bpad = (oh - 1) * sh + kh - ih - ph
    if kh == kw == sh == sw == 1 and ph == pw == 0 and rpad <= 0 and bpad <= 0 and iw <= 28:
        iw, ih, ow, oh = iw * ih, 1, ow * oh, 1
    nb_ic, nb_oc = div_up(ic, blk), div_up(oc, blk)
    ic_blocking, oc_blocking = (2 if nb_ic > 1 else 1), (2 if nb_oc > 1 else 1)
    tr_iw = rnd_up(div_up(iw + lpad + rpad, sw), tile) * sw
    guard = rnd_up(max(lpad, rpad + 1), tile)
    tr_ow = rnd_up(ow, 2)
    if tr_ow > tile:  # a wider row when it makes fewer brgemm row blocks
        best_bdb, best = tr_ow // 2, tr_ow
        for t in range(tr_ow, rnd_up(tr_ow, tile) + 1, 2):
            i = next(i for i in range(tile, 0, -2) if t % i == 0)
            if t // i < best_bdb:
                best_bdb, best = t // i, t
        tr_ow = best
    work = mb * (od if nd == 3 else oh)
    oc_chunks, ic_chunks = div_up(nb_oc, oc_blocking), div_up(nb_ic, ic_blocking)
    wks = kd * kh * kw
    src_sp, dst_sp = mb * id_ * ih * tr_iw, mb * od * oh * tr_ow
    wcs = 0.5 * (dst_sp * oc * 2 + src_sp * ic * 2) / (oc * ic * wks * 4)
    ratio = oc_chunks / ic_chunks
    src_coef = max(1 / ratio, 1.0) * (4.0 if wcs < 1 else 1.0)
    dst_coef, wei_coef = max(ratio, 1.0), max(wcs, 1.0)

    def cost(n_mb, n_oc, n_ic):
        thr_mb = div_up(work, n_mb)
        ica = div_up(ic_chunks, n_ic) * blk * ic_blocking
        oca = div_up(oc_chunks, blk * oc_blocking * n_oc) * blk * oc_blocking
        return (2 * src_coef * ica * (thr_mb * (src_sp // work) // sd // sh // sw)
                + 2 * dst_coef * oca * thr_mb * (dst_sp // work) + 4 * wei_coef * oca * ica * wks)

    best, (n_mb, n_oc, n_ic) = cost(1, 1, 1), (1, 1, 1)
    for m in range(1, min(threads, work) + 1):
        par = threads // m
        for o in range(1, min(par, oc_chunks) + 1):
            i = min(par // o, nb_ic // ic_blocking)
            c = cost(m, o, i)
            if c <= best:
                best, (n_mb, n_oc, n_ic) = c, (m, o, i)
    if threads // 2 < n_mb < threads:
        n_mb = min(work, threads)
    nthr = n_mb * n_oc * n_ic
    tr_src = (n_mb * nb_ic * tr_iw * blk * ih * id_ + guard) * 2
    tr_diff_dst = (n_mb * nb_oc * tr_ow * blk * oh * od + tr_iw * blk) * 2
    reduction = (nb_oc * blk * nb_ic * blk * wks + (nb_oc * blk if bias else 0)) * n_mb * 4
    batch = nthr * rnd_up(od * oh * 32, page)
    tiles = nthr * 2 * page
    return (tr_src + tr_diff_dst + reduction + batch + tiles + fixed
            + (fixed_ch if n_mb < threads else 0))


def _gemm_weight_grad(ctx, fp: Footprint, cin: int, ks: tuple[int, ...], y: TensorType) -> Footprint:
    """A 3-D convolution whose kernel is at least as deep as its padded-at-the-front input
    (kd >= id + front padding: 3x3x3 over 2 frames) is refused by oneDNN's direct (jit)
    weight-gradient kernel and falls back to its GEMM one (x64:gemm:jit), on the plain
    layouts (no input or output reorder) but with a scratchpad: a float32 reduction buffer
    booked per thread as `weight bytes` floats (ONEDNN_GEMM_WEI_REDUCTION times the weight's
    bytes) and a per-thread im2col column of C_in x kernel volume x (H_out x W_out), one
    pad per entry. Threads split the batch only when the output plane is small (outer
    threading: H_out x W_out / threads < 256 and B > 1), else one thread does all. (Half
    precision takes oneDNN's brgemm kernels instead: this is float32 only.)"""
    from ..devices import ONEDNN_GEMM_OUTER_BELOW as outer_below, ONEDNN_GEMM_WEI_REDUCTION as red
    from ..devices import ONEDNN_SCRATCH_ALIGN as align

    B, os_ = static_int(y.shape[0], "conv's batch"), numel(y.shape[3:])
    threads = getattr(ctx.device, "threads", 1) or 1
    nthr = threads if B != 1 and os_ // threads < outer_below else 1
    w = ctx.param_bytes("weight")
    col = nthr * cin * numel(ks) * os_ * dtype_bytes(ctx.ins[0].dtype)
    scratch = nthr * red * w + col + 2 * align
    # the weight gradient (oneDNN's, plain) lives with the scratchpad, then the copy into .grad
    held = ctx.in_bytes(0) if ctx.requires_grad[0] else 0
    p2 = held + w + max(scratch, w)
    leaves = held + w
    return Footprint(views=fp.views, fwd_peak=fp.fwd_peak, bwd_peak=max(fp.bwd_peak, p2 - leaves))


def _onednn(ctx, cin: int, cout: int, groups: int, kvol: int = 1, geom=None) -> Footprint:
    """PyTorch's CPU convolution (oneDNN), as measured: it reorders the plain NCHW input
    and weight into channel-blocked layouts (input channels padded to the block unless
    there are fewer than 8), computes a blocked output (output channels padded) and
    copies it into the plain result; backward does the same for the input gradient
    (weight and input padded) and then for the weight gradient."""
    from ..devices import ONEDNN_CHANNEL_BLOCK as blk, ONEDNN_PLAIN_INPUT_BELOW as plain_below

    def up(c):
        return -(-c // blk) * blk

    from ..devices import ONEDNN_BRGCONV_SCRATCH_1X1 as scratch_1x1, ONEDNN_BRGCONV_SCRATCH as scratch_k

    i, o, w = ctx.in_bytes(0), ctx.out_bytes(0), ctx.param_bytes("weight")
    plain = cin < plain_below or groups > 1
    need_i, need_w = ctx.requires_grad[0], ctx.weights_grad
    if ctx.ins[0].dtype in ("bfloat16", "float16"):
        # half precision: no output padding, channels-last copies and oneDNN's scratchpads
        # (AMX brgemm kernels; docs/memory.md says which parts are derived and which fitted)
        wp = w * up(cout) // cout * (1 if plain else up(cin)) // (1 if plain else cin)
        threads = getattr(ctx.device, "threads", 1) or 1
        per = scratch_1x1 if kvol == 1 else scratch_k
        if cin < plain_below and groups == 1:
            fwd = max(3 * wp + i, 2 * o)  # few input channels: another kernel (fitted on LeNet-5)
        elif groups > 1:
            # grouped/depthwise (jit_dw): input and output copied into channel blocks (padded),
            # the padded weight, then the blocked output copied into the plain one
            fwd = i * up(cin) // cin + o * up(cout) // cout + wp - o
        else:
            # brgemm (AMX): the input reordered to channels-last, the
            # weight reordered once, a per-thread scratchpad (accumulators, tile buffers), the
            # channels-last output copied into the plain one (measured on PyTorch 2.14)
            fwd = max(wp + i + threads * per, 2 * o)
        brg = geom is not None and groups == 1
        # the input gradient: the output gradient and the input in channels-last, the weight
        # reordered; AMX runs it as the forward kernel on the swapped problem (its scratchpad)
        bwd_d = threads * per if brg and cin >= plain_below else max(2 * wp, i)
        p1 = o + wp + i + bwd_d if need_i else 0
        held = i if need_i else 0
        whole = cout % blk == 0
        # the weight gradient: a blocked copy (float32, padded, unless the channels fill whole
        # blocks) next to the channels-last output gradient and input, and the scratchpad
        wf = w * 2 * up(cout) // cout * up(cin) // cin
        gw = wp if whole and not plain else wf
        if brg:
            # AMX: a 16-bit blocked gradient, output channels padded to a block and input
            # channels to a pair of blocks (transformed to VNNI two input-channel blocks at a time)
            gw = w * up(cout) // cout * (-(-cin // (2 * blk)) * 2 * blk) // cin
            scratch = brgconv_bwd_w_scratch(threads, *geom, bias="bias" in ctx.params) if need_w else 0
        else:  # grouped (jit_dw): per-thread float32 accumulators, or an output-sized buffer
            scratch = max(threads * wf + (0 if whole and not plain else wf // 4), min(o, 1 << 20))
        p2 = held + o + i + gw + scratch if need_w else 0
        leaves = (i if need_i else 0) + (w if need_w else 0)
        return Footprint(fwd_peak=fwd, bwd_peak=max(max(p1, p2) - leaves, 0))
    ob = o * up(cout) // cout
    ir = 0 if plain else i * up(cin) // cin
    wb = w * up(cout) // cout * (1 if plain else up(cin)) // (1 if plain else cin)
    fwd = max(ir + wb + ob, ob + o) - o
    ib = i * up(cin) // cin
    wbd = w * up(cout) // cout * up(cin) // cin
    p1 = ob + wbd + ib if need_i else 0
    held = i if need_i else 0
    p2 = held + max(ob + ir + wb, wb + w) if need_w else 0
    leaves = (i if need_i else 0) + (w if need_w else 0)
    return Footprint(fwd_peak=fwd, bwd_peak=max(max(p1, p2) - leaves, 0))
