"""Objectives as ops: a model's outputs can include its own loss; and `ensemble`.

Losses take tensors and return a scalar `float32[]` (`reduction="mean"`, "sum" or
"batchmean": summed over every axis but the first, averaged over the first, the
convention of a VAE's ELBO). Class scores are on the last axis, as in the rest of
the language (`[B, C]`, `[B, T, C]`), with integer labels of the leading shape.

| op | computes |
|---|---|
| `cross_entropy(logits, labels, label_smoothing=0.0)` | F.cross_entropy over the last axis; labels int (or float class probabilities shaped like the logits) |
| `mse(pred, target, mask=none)` | mean squared error; with `mask` [leading axes] (1 = counts) only the masked positions count (MAE) |
| `bce_with_logits(logits, target)` | binary cross-entropy on logits, target in [0, 1] |
| `gan_loss(logits, kind="vanilla", target="real")` | a GAN's loss on discriminator logits: vanilla (BCE), lsgan (MSE), hinge; `target` real, fake or generator |
| `nt_xent(z1, z2, temperature=0.5)` | SimCLR's normalized-temperature cross-entropy over the 2B views |
| `byol_loss(p, z)` | 2 - 2·cos(p, z), averaged over the batch (BYOL) |
| `kl_normal(mu, logvar)` | KL(N(mu, exp(logvar)) ‖ N(0, 1)), summed over latents, averaged over the batch |
| `clip_loss(img, txt, logit_scale=2.6593, learn=true)` | CLIP's symmetric cross-entropy over the B x B similarities, with a learned temperature |
| `ensemble(a, b, ..., mode="mean", meta="linear")` | combine members' class scores: mean of probabilities, (weighted) vote, or stacking |

Wrong ranks are E1101 (logits that are not class scores for the labels), inputs
that do not agree E1102, members of an ensemble with different outputs E1104.
Runtime code lives in archc.runtime.objectives and archc.runtime.ensemble (named
here without importing them: ops never import torch).
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from ..dims import Dim
from ..ir import TensorType
from .base import (Attrs, Code, Footprint, Module, Op, RuntimeClass, Saved, ShapeError, is_float, register,
                   static_int)


def runtime(qualname: str, module: str = "archc.runtime.objectives") -> RuntimeClass:
    return RuntimeClass(module, qualname)


SCALAR = TensorType((), "float32")
Reduction = Literal["mean", "sum", "batchmean"]


def _float(t: TensorType, what: str, role: str) -> None:
    if not is_float(t.dtype):
        raise ShapeError("E1102", f"{what}: {role} must be floating point, got {t}", label=f"this is {t}",
                         help="losses compare scores, features or pixels (float); labels go where the op takes them")


def _same(x: TensorType, y: TensorType, what: str, a: str, b: str) -> None:
    """E1102 unless two inputs have the same shape."""
    if x.shape != y.shape:
        raise ShapeError("E1102", f"{what}: `{a}` is {x} but `{b}` is {y}", label=f"`{a}` {x}, `{b}` {y}",
                         help=f"{what} compares its inputs element by element: give them the same shape")


def _rank(x: TensorType, ranks, what: str, role: str, help: str | None = None) -> None:
    if x.rank not in ranks:
        want = " or ".join(str(r) for r in sorted(ranks))
        raise ShapeError("E1101", f"{what} expects {role} of rank {want}, got {x} (rank {x.rank})",
                         label=f"this is {x}", help=help)


def _reduction_note(reduction: str) -> str:
    return {"mean": "", "sum": ", reduction='sum'", "batchmean": ", reduction='batchmean'"}[reduction]


# -- supervised ----------------------------------------------------------------

class CrossEntropyAttrs(Attrs):
    label_smoothing: float = Field(0.0, ge=0.0, le=1.0)
    reduction: Reduction = "mean"


@register
class CrossEntropy(Op):
    name = "cross_entropy"
    Attrs = CrossEntropyAttrs
    arity = 2
    doc = ("cross_entropy(logits, labels): F.cross_entropy with the classes on the last axis of `logits` "
           "[..., C] and integer `labels` of the leading shape [...] (or float class probabilities shaped like "
           "the logits); -> float32[]. `label_smoothing` as PyTorch's; `reduction` mean (over labels), sum or "
           "batchmean. Logits whose rank is not one more than the labels' are E1101; other disagreements E1102. "
           "FLOPs: 4 per logit (log-softmax and the pick).")

    def infer(self, a, ins):
        logits, labels = ins
        _float(logits, "cross_entropy", "the logits")
        if is_float(labels.dtype):  # class probabilities
            if labels.rank != logits.rank:
                raise ShapeError("E1101", f"cross_entropy: float labels are class probabilities shaped like the "
                                 f"logits, but the logits are {logits} and the labels {labels}",
                                 label=f"labels {labels}", help="pass integer labels (int64) of the leading shape")
            _same(logits, labels, "cross_entropy", "logits", "labels")
            return [SCALAR]
        if logits.rank != labels.rank + 1:
            raise ShapeError("E1101", f"cross_entropy expects logits with one more axis than the labels (the "
                             f"classes, last), got logits {logits} for labels {labels}",
                             label=f"logits {logits} (rank {logits.rank}), labels {labels} (rank {labels.rank})",
                             help=f"for labels {labels} the logits are [{', '.join(map(str, labels.shape))}"
                             f"{', ' if labels.rank else ''}C]" + (": pool or flatten the extra axes"
                                                                  if logits.rank > labels.rank + 1 else ""))
        if logits.shape[:-1] != labels.shape:
            raise ShapeError("E1102", f"cross_entropy: logits {logits} do not match labels {labels}",
                             label=f"logits {logits}, labels {labels}",
                             help="the logits' leading axes must be the labels' axes")
        static_int(logits.shape[-1], "cross_entropy's class count (last axis)")
        return [SCALAR]

    def flops(self, a, ins, outs):
        return 4 * ins[0].numel()

    def lower(self, a, ins, outs):
        logits, labels = ins
        c = logits.shape[-1]
        flat = "{0}" if logits.rank == 2 else f"{{0}}.reshape(-1, {c})"
        target = ("{1}" if labels.rank == 1 else "{1}.reshape(-1)") if not is_float(labels.dtype) \
            else ("{1}" if labels.rank == 2 else f"{{1}}.reshape(-1, {c})")
        kw = f", label_smoothing={a.label_smoothing!r}" if a.label_smoothing else ""
        if a.reduction == "batchmean":
            return Code(f"(F.cross_entropy({flat}, {target}{kw}, reduction='sum') / {{0}}.shape[0])")
        return Code(f"F.cross_entropy({flat}, {target}{kw}{_reduction_note(a.reduction)})")

    def saved(self, a, ins, outs, ctx):
        if not ctx.any_grad:
            return []
        # log_softmax keeps its output; nll_loss keeps the labels and a 4-byte total weight
        # (with class probabilities, the product with them keeps both)
        out = [Saved.new(ctx.in_bytes(0), "log_softmax output"), Saved.input(1, "labels")]
        return out if is_float(ins[1].dtype) else out + [Saved.new(4, "total weight")]

    def footprint(self, a, ins, outs, ctx):
        return Footprint(bwd_peak=ctx.in_bytes(0))  # nll_loss's gradient, then log_softmax's


class PairAttrs(Attrs):
    reduction: Reduction = "mean"


@register
class MSE(Op):
    name = "mse"
    Attrs = PairAttrs
    arity = 2
    tensor_attrs = ("mask",)
    doc = ("mse(pred, target, mask=none): mean squared error of two tensors of the same shape -> float32[]. "
           "With `mask` (a tensor of the leading axes of `pred`, e.g. [B, N] for patches [B, N, P]; 1 marks the "
           "positions that count) the mean is over the masked positions only: MAE's loss on the removed patches. "
           "`reduction` mean, sum or batchmean (sum over all but the batch axis, mean over the batch). "
           "FLOPs: 3 per element.")

    def infer(self, a, ins):
        pred, target = ins[:2]
        _float(pred, "mse", "the prediction")
        _float(target, "mse", "the target")
        _same(pred, target, "mse", "pred", "target")
        if len(ins) > 2:
            m = ins[2]
            if m.rank > pred.rank or pred.shape[:m.rank] != m.shape:
                raise ShapeError("E1102", f"mse: the mask {m} must be the leading axes of the prediction {pred}",
                                 label=f"mask {m}", help="a mask [B, N] selects whole rows of a prediction [B, N, P]")
        return [SCALAR]

    def flops(self, a, ins, outs):
        return 3 * ins[0].numel()

    def lower(self, a, ins, outs):
        if len(ins) > 2:
            extra = ins[0].rank - ins[2].rank
            return Module(runtime("MaskedMSE"), (extra,), {} if a.reduction == "mean" else {"reduction": a.reduction})
        if a.reduction == "batchmean":
            return Code("(F.mse_loss({0}, {1}, reduction='sum') / {0}.shape[0])")
        return Code("F.mse_loss({0}, {1}" + _reduction_note(a.reduction) + ")")

    def saved(self, a, ins, outs, ctx):
        return [Saved.input(i) for i in range(len(ins))] if ctx.any_grad else []  # both sides of the difference


@register
class BCEWithLogits(Op):
    name = "bce_with_logits"
    Attrs = PairAttrs
    arity = 2
    doc = ("bce_with_logits(logits, target): binary cross-entropy of logits against targets in [0, 1] of the same "
           "shape (F.binary_cross_entropy_with_logits) -> float32[]; `reduction` mean, sum or batchmean (a "
           "Bernoulli decoder's negative log-likelihood per example). FLOPs: 5 per element.")

    def infer(self, a, ins):
        logits, target = ins
        _float(logits, "bce_with_logits", "the logits")
        _float(target, "bce_with_logits", "the target")
        _same(logits, target, "bce_with_logits", "logits", "target")
        return [SCALAR]

    def flops(self, a, ins, outs):
        return 5 * ins[0].numel()

    def lower(self, a, ins, outs):
        if a.reduction == "batchmean":
            return Code("(F.binary_cross_entropy_with_logits({0}, {1}, reduction='sum') / {0}.shape[0])")
        return Code("F.binary_cross_entropy_with_logits({0}, {1}" + _reduction_note(a.reduction) + ")")

    def saved(self, a, ins, outs, ctx):
        return [Saved.input(0), Saved.input(1)] if ctx.any_grad else []


class GanLossAttrs(Attrs):
    kind: Literal["vanilla", "lsgan", "hinge"] = "vanilla"
    target: Literal["real", "fake", "generator"] = "real"


@register
class GanLoss(Op):
    name = "gan_loss"
    Attrs = GanLossAttrs
    doc = ("gan_loss(logits, kind=\"vanilla\", target=\"real\"): a GAN's loss on discriminator logits -> float32[]. "
           "vanilla: BCE with logits against 1 (real, generator) or 0 (fake); lsgan: squared error against the "
           "same; hinge: mean(relu(1 - d)) for real, mean(relu(1 + d)) for fake, -mean(d) for the generator. "
           "FLOPs: 5 per element.")

    def infer(self, a, ins):
        (d,) = ins
        _float(d, "gan_loss", "the discriminator's logits")
        if d.rank < 1:
            raise ShapeError("E1101", f"gan_loss expects a batch of logits, got {d}", label=f"this is {d}")
        return [SCALAR]

    def flops(self, a, ins, outs):
        return 5 * ins[0].numel()

    def lower(self, a, ins, outs):
        return Module(runtime("GANLoss"), (a.kind, a.target))

    def saved(self, a, ins, outs, ctx):
        if not ctx.any_grad:
            return []
        n4 = ins[0].numel() * 4  # `d.float()`: the logits themselves, or a float32 copy
        logits = Saved.input(0, "logits") if ins[0].dtype == "float32" else Saved.new(n4, "logits as float32")
        if a.kind in ("vanilla", "lsgan"):  # BCE / MSE keep the logits and the float32 target (full_like)
            return [logits, Saved.new(n4, "target (full_like)")]
        if a.target == "generator":  # -mean(d)
            return []
        return [Saved.new(n4, "relu(1 ∓ d)")]  # relu keeps its output


# -- self-supervised ------------------------------------------------------------

class NTXentAttrs(Attrs):
    temperature: float = Field(0.5, gt=0.0)


@register
class NTXent(Op):
    name = "nt_xent"
    Attrs = NTXentAttrs
    arity = 2
    doc = ("nt_xent(z1, z2, temperature=0.5): SimCLR's NT-Xent over two views [B, D] -> float32[]: the 2B "
           "embeddings are L2-normalized, each one's positive is the other view of its example and its "
           "negatives the other 2B - 2; cross-entropy of the cosine similarities / temperature, averaged over "
           "the 2B anchors. Rank other than 2 is E1101, views of different shapes E1102. "
           "FLOPs: 2·(2B)²·D for the similarities + 6·B·D.")

    def infer(self, a, ins):
        z1, z2 = ins
        for z, n in ((z1, "z1"), (z2, "z2")):
            _rank(z, {2}, "nt_xent", f"embeddings `{n}` [B, D]",
                  help="flatten or pool the features to [B, D] first")
            _float(z, "nt_xent", f"`{n}`")
        _same(z1, z2, "nt_xent", "z1", "z2")
        return [SCALAR]

    def flops(self, a, ins, outs):
        b, d = ins[0].shape
        return 2 * (2 * b) * (2 * b) * d + 6 * b * d

    def lower(self, a, ins, outs):
        return Module(runtime("NTXent"), (a.temperature,))

    def saved(self, a, ins, outs, ctx):
        if not ctx.any_grad:
            return []
        b, d = ins[0].shape
        n = 2 * b
        # F.normalize(cat([z1, z2]).float()): its float32 input (the concatenation or its copy),
        # the norms and their clamp [2B, 1]; z @ z.t(): the normalized z (under autocast two
        # 16-bit copies, z's and z.t()'s: the same bytes); masked_fill: the boolean eye;
        # cross_entropy: log_softmax's float32 output, the int64 targets, the total weight
        return [Saved.new(n * d * 4, "float32 concatenation of the views"), Saved.new(2 * n * 4, "norms, clamped"),
                Saved.new(n * d * 4, "normalized embeddings"), Saved.new(n * n, "diagonal mask (bool)"),
                Saved.new(n * n * 4, "log_softmax output"), Saved.new(n * 8 + 4, "targets, total weight")]


@register
class ByolLoss(Op):
    name = "byol_loss"
    doc = ("byol_loss(p, z): BYOL's regression loss 2 - 2·cos(p, z) over the last axis, averaged over the batch "
           "-> float32[]. `z` is the target network's projection: pass it through `ema(...)` (or `detach`) so no "
           "gradient reaches the target. FLOPs: 6 per element.")
    arity = 2

    def infer(self, a, ins):
        p, z = ins
        for t, n in ((p, "p"), (z, "z")):
            _rank(t, {2, 3}, "byol_loss", f"`{n}` [B, D]")
            _float(t, "byol_loss", f"`{n}`")
        _same(p, z, "byol_loss", "p", "z")
        return [SCALAR]

    def flops(self, a, ins, outs):
        return 6 * ins[0].numel()

    def lower(self, a, ins, outs):
        return Code("(2 - 2 * F.cosine_similarity({0}, {1}, dim=-1)).mean()")

    def saved(self, a, ins, outs, ctx):
        # cosine_similarity: each side that needs a gradient keeps its input, its norm and the
        # clamped norm (one per row) for its normalization, and the other side's normalized
        # tensor for the product (in the inputs' dtype)
        rg = list(ctx.requires_grad) + [True] * (2 - len(ctx.requires_grad))
        out = []
        for i in (0, 1):
            if rg[i]:
                rows = ctx.in_bytes(i) // ins[i].shape[-1]
                out += [Saved.input(i, "input"), Saved.new(2 * rows, "norm and its clamp"),
                        Saved.new(ctx.in_bytes(1 - i), "the other side, normalized")]
        return out


class KLAttrs(Attrs):
    reduction: Reduction = "batchmean"


@register
class KLNormal(Op):
    name = "kl_normal"
    Attrs = KLAttrs
    arity = 2
    doc = ("kl_normal(mu, logvar): KL(N(mu, exp(logvar)) ‖ N(0, I)) = -½·Σ(1 + logvar - mu² - exp(logvar)) "
           "-> float32[]; reduction \"batchmean\" (default: summed over the latent axes, averaged over the batch, "
           "a VAE's per-example KL), \"mean\" or \"sum\". FLOPs: 5 per element.")

    def infer(self, a, ins):
        mu, logvar = ins
        _float(mu, "kl_normal", "`mu`")
        _float(logvar, "kl_normal", "`logvar`")
        if mu.rank < 1:
            raise ShapeError("E1101", f"kl_normal expects a batch of means, got {mu}", label=f"this is {mu}")
        _same(mu, logvar, "kl_normal", "mu", "logvar")
        return [SCALAR]

    def flops(self, a, ins, outs):
        return 5 * ins[0].numel()

    def saved(self, a, ins, outs, ctx):
        rg = list(ctx.requires_grad) + [True] * (2 - len(ctx.requires_grad))
        # mu.pow(2) keeps mu; logvar.exp() keeps its output
        return (([Saved.input(0, "mu")] if rg[0] else []) +
                ([Saved.new(ctx.in_bytes(1), "exp(logvar)")] if rg[1] else []))

    def lower(self, a, ins, outs):
        kl = "(-0.5 * (1 + {1} - {0}.pow(2) - {1}.exp()))"
        if a.reduction == "batchmean":
            return Code(f"({kl}.sum() / {{0}}.shape[0])")
        return Code(f"{kl}.{a.reduction}()")


class ClipAttrs(Attrs):
    logit_scale: float = math.log(1 / 0.07)
    learn: bool = True
    max_scale: float = 100.0


@register
class ClipLoss(Op):
    name = "clip_loss"
    Attrs = ClipAttrs
    arity = 2
    doc = ("clip_loss(img, txt, logit_scale=ln(1/0.07), learn=true): CLIP's symmetric contrastive loss over a "
           "batch of image and text embeddings [B, D] -> float32[]: both L2-normalized, logits = exp(s)·img·txtᵀ, "
           "(CE(logits, arange(B)) + CE(logitsᵀ, arange(B))) / 2. With `learn` the log-scale s is a parameter "
           "`<path>.logit_scale` (initialized to `logit_scale`; its exp is clamped to `max_scale`), else fixed. "
           "FLOPs: 2·B²·D + 8·B².")

    def infer(self, a, ins):
        img, txt = ins
        for t, n in ((img, "img"), (txt, "txt")):
            _rank(t, {2}, "clip_loss", f"embeddings `{n}` [B, D]", help="pool each tower to [B, D] first")
            _float(t, "clip_loss", f"`{n}`")
        _same(img, txt, "clip_loss", "img", "txt")
        if a.max_scale <= 0:
            raise ShapeError("E0207", f"clip_loss: max_scale must be positive, got {a.max_scale}")
        return [SCALAR]

    def params(self, a, ins):
        return {"logit_scale": ()} if a.learn else {}

    def flops(self, a, ins, outs):
        b, d = ins[0].shape
        return 2 * b * b * d + 8 * b * b

    def lower(self, a, ins, outs):
        kw = {} if a.learn else {"learn": False}
        if a.max_scale != 100.0:
            kw["max_scale"] = a.max_scale
        return Module(runtime("CLIPLoss"), (a.logit_scale,), kw)

    def saved(self, a, ins, outs, ctx):
        if not ctx.any_grad:
            return []
        b, d = ins[0].shape
        bd4 = b * d * 4
        # img.float(), txt.float(): the inputs, or float32 copies, kept by F.normalize with the
        # norms and their clamps [B, 1]; the scale's exp and clamp (scalars); s * img keeps the
        # normalized img; the product keeps s·img and txtᵀ (16-bit copies under autocast: a 16-bit
        # input whose op has float32 parameters); two log_softmax outputs, labels, total weights
        low = ins[0].dtype in ("bfloat16", "float16")
        autocast = low and (not a.learn or ctx.params.get("logit_scale", ((), "float32"))[1] == "float32")
        f32 = [Saved.input(i, "embeddings") if ins[i].dtype == "float32" else
               Saved.new(bd4, "embeddings as float32") for i in (0, 1)]
        mm = bd4 // 2 if autocast else bd4
        return f32 + [Saved.new(4 * b * 4, "norms, clamped"), Saved.new(8, "exp(scale), clamped"),
                      Saved.new(bd4, "normalized img"), Saved.new(2 * mm, "scaled img and txtᵀ (the product)"),
                      Saved.new(2 * b * b * 4, "log_softmax outputs"), Saved.new(b * 8 + 8, "labels, total weights")]


# -- ensembles -------------------------------------------------------------------

class EnsembleAttrs(Attrs):
    mode: Literal["mean", "vote", "stack"] = "mean"
    meta: Literal["linear", "none"] = "linear"


@register
class Ensemble(Op):
    name = "ensemble"
    Attrs = EnsembleAttrs
    arity = None
    doc = ("ensemble(a, b, ..., mode=\"mean\", meta=\"linear\"): combine the class scores [..., C] of two or "
           "more members (models used as blocks) into one [..., C]: mode \"mean\" is the log of the (weighted) "
           "mean of their softmax probabilities, \"vote\" the log of the (weighted) share of members voting for "
           "each class (ties go to the higher mean probability), \"stack\" a meta-learner over the concatenated "
           "probabilities: a linear layer `<path>.weight` [C, K·C], `<path>.bias` (meta=\"linear\"), or the "
           "concatenation [..., K·C] itself (meta=\"none\"). The buffer `<path>.member_weights` [K] (ones) weighs "
           "the members (boosting sets it). Members whose outputs differ are E1104. Outputs are log-probabilities, "
           "so argmax and cross-entropy read them as logits. FLOPs: 4 per input element (+ the meta-learner).")

    def _check(self, a, ins) -> tuple[int, int]:
        if len(ins) < 2:
            raise ShapeError("E1104", f"an ensemble needs at least two members, got {len(ins)}",
                             help="pass every member's output: `ensemble(a, b, c)`")
        first = ins[0]
        if first.rank < 2:
            raise ShapeError("E1104", f"ensemble members give class scores [B, C], but the first gives {first}",
                             label=f"this is {first}")
        for k, t in enumerate(ins[1:], start=2):
            if t.shape != first.shape or t.dtype != first.dtype:
                raise ShapeError("E1104", f"ensemble members must give the same output, but member 1 gives {first} "
                                 f"and member {k} gives {t}", label=f"member 1 {first}, member {k} {t}",
                                 help="give every member the same classes (and input batch)")
        if not is_float(first.dtype):
            raise ShapeError("E1104", f"ensemble members give class scores (float), got {first}")
        if a.meta == "none" and a.mode != "stack":
            raise ShapeError("E0207", f"ensemble: meta=\"none\" applies to mode=\"stack\", not \"{a.mode}\"")
        return len(ins), static_int(first.shape[-1], "the members' class count (last axis)")

    def infer(self, a, ins):
        k, c = self._check(a, ins)
        first = ins[0]
        if a.mode == "stack" and a.meta == "none":
            return [TensorType(first.shape[:-1] + (k * c,), first.dtype)]
        return [first]

    def params(self, a, ins):
        k, c = self._check(a, ins)
        if a.mode == "stack" and a.meta == "linear":
            return {"weight": (c, k * c), "bias": (c,)}
        return {}

    def buffers(self, a, ins):
        k, _ = self._check(a, ins)
        return {"member_weights": (k,)}

    def flops(self, a, ins, outs):
        k, c = self._check(a, ins)
        total: Dim = 4 * k * ins[0].numel()
        if a.mode == "stack" and a.meta == "linear":
            total = total + 2 * outs[0].numel() * k * c
        return total

    def lower(self, a, ins, outs):
        k, c = self._check(a, ins)
        kw = {}
        if a.mode != "mean":
            kw["mode"] = a.mode
        if a.meta != "linear" and a.mode == "stack":
            kw["meta"] = a.meta
        return Module(runtime("Ensemble", "archc.runtime.ensemble"), (k, c), kw)

    def saved(self, a, ins, outs, ctx):
        return [Saved.input(i) for i in range(len(ins))] if ctx.any_grad else []

    def footprint(self, a, ins, outs, ctx):
        return Footprint(fwd_peak=sum(ctx.in_bytes(i) for i in range(len(ins))))
