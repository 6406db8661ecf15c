"""Stochastic and training-time ops, the EMA target network, and the inputs the data
pipeline supplies (`augment` hooks).

| op | computes |
|---|---|
| `reparameterize(mu, logvar)` | mu + exp(logvar / 2)·ε, ε ~ N(0, I) (a VAE's sample) |
| `random_mask(x, ratio=0.75)` | MAE's per-sample shuffle of [B, N, D]: (kept [B, K, D], mask [B, N], restore ids int64[B, N]), K = int(N·(1 - ratio)) |
| `restore(x, ids)` (alias `unshuffle`) | [B, K, D] back to [B, N, D] in the original order, the removed positions filled with a learned `mask_token` |
| `detach(x)` (alias `stop_gradient`) | x with no gradient |
| `ema(x, target, of=source, decay=0.996, detach=true)` | x (detached); declares the labelled module `target` an exponential moving average of the labelled module `source` |

The EMA declaration: `target` and `of` name labelled modules (block instances,
sequences or ops) of the same structure; the runtime
(`archc.runtime.ema.init(model)`, then `archc.runtime.ema.update(model)` after each
optimizer step: `archc train` does both) copies the source into the target, freezes
the target and moves it towards the source: target ← decay·target + (1 - decay)·source.
`check_graph` reports a target whose weights differ from its source's (E1103); it
needs the whole graph, so `archc check` and `archc train` run it after elaboration.

Inputs a `train` plan's data supplies are named by the protocol in `INPUTS` (see
docs/language.md, "Objectives and self-supervision"); `check_graph` reports a model
input that a train plan's data cannot supply (E1105).
"""
from __future__ import annotations

import re

from pydantic import Field

from ..diagnostics import Diagnostic
from ..ir import Graph, TensorType
from .base import REGISTRY, Attrs, Code, Footprint, Module, Op, Saved, ShapeError, alias, expect_rank, is_float, \
    register, static_int
from .objectives import runtime


class ReparamAttrs(Attrs):
    deterministic_eval: bool = False


@register
class Reparameterize(Op):
    name = "reparameterize"
    Attrs = ReparamAttrs
    arity = 2
    doc = ("reparameterize(mu, logvar): a sample mu + exp(logvar / 2)·ε with ε ~ N(0, I) of mu's shape, "
           "differentiable in mu and logvar (the VAE's reparameterization trick). It samples in eval mode too "
           "(an ELBO is an expectation), unless `deterministic_eval=true`, which returns mu there. "
           "Shapes that differ are E1102. FLOPs: 3 per element.")

    def infer(self, a, ins):
        mu, logvar = ins
        for t, n in ((mu, "mu"), (logvar, "logvar")):
            if not is_float(t.dtype):
                raise ShapeError("E1102", f"reparameterize: `{n}` must be floating point, got {t}")
        if mu.shape != logvar.shape:
            raise ShapeError("E1102", f"reparameterize: `mu` is {mu} but `logvar` is {logvar}",
                             label=f"`mu` {mu}, `logvar` {logvar}", help="predict both with the same width")
        return [mu]

    def flops(self, a, ins, outs):
        return 3 * ins[0].numel()

    def lower(self, a, ins, outs):
        sample = "({0} + torch.exp(0.5 * {1}) * torch.randn_like({0}))"
        if a.deterministic_eval:
            return Code(f"({sample} if self.training else {{0}})")
        return Code(sample)

    def saved(self, a, ins, outs, ctx):
        return [Saved.new(ctx.in_bytes(0), "noise"), Saved.new(ctx.in_bytes(1), "std")] if ctx.any_grad else []


class RandomMaskAttrs(Attrs):
    ratio: float = Field(0.75, ge=0.0, lt=1.0)


def kept(n: int, ratio: float) -> int:
    """Tokens random_mask keeps of n (MAE: int(n · (1 - ratio)))."""
    return int(n * (1 - ratio))


@register
class RandomMask(Op):
    name = "random_mask"
    Attrs = RandomMaskAttrs
    doc = ("random_mask(x, ratio=0.75): MAE's random masking of tokens [B, N, D]: each example's tokens are "
           "shuffled by its own random permutation and the first K = int(N·(1 - ratio)) kept. Three outputs: the "
           "kept tokens [B, K, D] (in shuffled order), the mask float32[B, N] (1 = removed, 0 = kept, in the "
           "original order) and the restore indices int64[B, N] that `restore` uses to put tokens back. "
           "It masks in eval mode too. FLOPs: 0 (a gather).")

    def infer(self, a, ins):
        (x,) = ins
        expect_rank(x, {3}, "random_mask")
        n = static_int(x.shape[1], "random_mask's token count (axis 1)")
        k = kept(n, a.ratio)
        if k < 1:
            raise ShapeError("E0207", f"random_mask: ratio={a.ratio} keeps no token of {n}",
                             help="lower the ratio")
        b = x.shape[0]
        return [TensorType((b, k, x.shape[2]), x.dtype), TensorType((b, n), "float32"),
                TensorType((b, n), "int64")]

    def lower(self, a, ins, outs):
        return Module(runtime("RandomMask"), (a.ratio,))

    def saved(self, a, ins, outs, ctx):
        # `x.gather(1, shuffle[:, :K])`: gather's backward keeps its input and its index (a view
        # of the shuffle, argsort's int64 [B, N]; the restore indices are another argsort)
        if not ctx.requires_grad[0]:
            return []
        return [Saved.input(0, "tokens (gather's input)"), Saved.new(ctx.out_bytes(2), "shuffle indices int64[B, N]")]

    def footprint(self, a, ins, outs, ctx):
        # the noise float32[B, N], argsort's sorted values (twice: the shuffle and its inverse)
        bn = ctx.out_bytes(1)
        return Footprint(fwd_peak=bn + bn + (0 if ctx.requires_grad[0] else ctx.out_bytes(2)))


class RestoreAttrs(Attrs):
    token: bool = True


@register
class Restore(Op):
    name = "restore"
    Attrs = RestoreAttrs
    arity = None
    tensor_attrs = ("ids",)
    doc = ("restore(x, ids) or `x -> restore(ids=ids)`: the inverse of random_mask for a decoder: tokens [B, K, D] (the kept ones, in "
           "shuffled order) are padded to N with a learned mask token `<path>.mask_token` [1, 1, D] (zeros with "
           "`token=false`) and put back in the original order with the restore indices int64[B, N]. "
           "-> [B, N, D]. FLOPs: 0.")

    def _check(self, x: TensorType, ids: TensorType) -> int:
        expect_rank(x, {3}, "restore")
        if ids.dtype not in ("int64", "int32") or ids.rank != 2:
            raise ShapeError("E0303", f"restore needs the restore indices int64[B, N] of random_mask, got {ids}",
                             label=f"this is {ids}")
        if x.shape[0] != ids.shape[0]:
            raise ShapeError("E0301", f"restore: tokens {x} and indices {ids} have different batches")
        k, n = x.shape[1], ids.shape[1]
        if isinstance(k, int) and isinstance(n, int) and k > n:
            raise ShapeError("E0303", f"restore: {k} tokens do not fit {n} positions", label=f"tokens {x}")
        return static_int(x.shape[2], "restore's token width")

    def _two(self, ins):
        if len(ins) != 2:
            raise ShapeError("E0306", f"restore takes the tokens and the restore indices, got {len(ins)} tensor(s)",
                             help="write `restore(x, ids)` or `x -> restore(ids=ids)`")
        return ins

    def infer(self, a, ins):
        x, ids = self._two(ins)
        self._check(x, ids)
        return [TensorType((x.shape[0], ids.shape[1], x.shape[2]), x.dtype)]

    def params(self, a, ins):
        d = self._check(*self._two(ins))
        return {"mask_token": (1, 1, d)} if a.token else {}

    def lower(self, a, ins, outs):
        d = self._check(*self._two(ins))
        return Module(runtime("Restore"), (d,), {} if a.token else {"token": False})

    def saved(self, a, ins, outs, ctx):
        # `cat([x, fill]).gather(1, ids)`: gather's backward keeps its input, the padded tokens
        # [B, N, D] (a new tensor), and the indices
        if not ctx.any_grad:
            return []
        return [Saved.new(ctx.out_bytes(0), "padded tokens (gather's input)"), Saved.input(1, "indices")]


alias("unshuffle", "restore")


@register
class Detach(Op):
    name = "detach"
    doc = "detach(x) (alias stop_gradient): x cut from the autograd graph; no gradient flows back. FLOPs: 0."

    def infer(self, a, ins):
        return [ins[0]]

    def lower(self, a, ins, outs):
        return Code("{0}.detach()")

    def saved(self, a, ins, outs, ctx):
        return []

    def footprint(self, a, ins, outs, ctx):
        return Footprint(views={0: 0}, differentiable=False,
                         strides={0: tuple(ctx.strides[0])} if ctx.strides else {})


alias("stop_gradient", "detach")


class EmaAttrs(Attrs):
    target: str
    of: str
    decay: float = Field(0.996, ge=0.0, le=1.0)
    detach: bool = True


@register
class Ema(Op):
    name = "ema"
    Attrs = EmaAttrs
    doc = ("ema(x, target, of=source, decay=0.996, detach=true): returns x (detached unless `detach=false`) and "
           "declares the labelled module `target` an exponential moving average of the labelled module `source` "
           "of the same structure: BYOL's and MoCo's target network, written after it: "
           "`t = v -> target: Net(...) -> ema(target, of=online)`. The runtime copies the source into the target "
           "and freezes it (archc.runtime.ema.init), then after each optimizer step sets "
           "target ← decay·target + (1 - decay)·source (archc.runtime.ema.update; buffers are copied). "
           "decay=0 with detach=false is a frozen copy refreshed every step (a GAN's discriminator as the "
           "generator's loss sees it). A target whose weights differ from its source's is E1103. FLOPs: 0.")

    def infer(self, a, ins):
        if a.target == a.of:
            raise ShapeError("E1103", f"ema: `{a.target}` cannot be a moving average of itself",
                             help="name the target network first and its source with `of=`")
        return [ins[0]]

    def lower(self, a, ins, outs):
        kw = {}
        if a.decay != 0.996:
            kw["decay"] = a.decay
        if not a.detach:
            kw["detach"] = False
        return Module(runtime("EMA", "archc.runtime.ema"), (a.target, a.of), kw)

    def saved(self, a, ins, outs, ctx):
        return []

    def footprint(self, a, ins, outs, ctx):
        return Footprint(views={0: 0}, differentiable=not a.detach, grad_views={} if a.detach else {0: 0},
                         strides={0: tuple(ctx.strides[0])} if ctx.strides else {})


# -- graph-level checks ---------------------------------------------------------------

def _notes(node) -> list[str]:
    notes = []
    for site in reversed(node.calls):
        where = f" at `{site.path}`" if site.path else ""
        frm = f", called from {site.span}" if site.span else ""
        notes.append(f"in block {site.block}{where}{frm}")
    return notes


def weights_under(graph: Graph, prefix: str) -> dict[str, tuple]:
    """Parameters and buffers of the module at `prefix`: key relative to it -> shape."""
    out: dict[str, tuple] = {}
    for n in graph.nodes():
        if n.shared or n.op in ("input", "output") or not (n.path == prefix or n.path.startswith(prefix + ".")):
            continue
        op = REGISTRY[n.op]
        ins = graph.in_types(n.id)
        rel = n.path[len(prefix) + 1:]
        for name, shape in list(op.params(n.attrs, ins).items()) + list(op.buffers(n.attrs, ins).items()):
            key = ".".join(p for p in (rel, name) if p)
            out[key] = tuple(shape)
    return out


def _fmt(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def ema_pairs(graph: Graph) -> list[tuple[str, str, float]]:
    """(target, source, decay) of every `ema` in the graph, once per target."""
    seen: dict[str, tuple[str, str, float]] = {}
    for n in graph.nodes():
        if n.op == "ema":
            seen.setdefault(n.attrs.target, (n.attrs.target, n.attrs.of, n.attrs.decay))
    return list(seen.values())


def check_ema(graph: Graph) -> list[Diagnostic]:
    """E1103: every `ema` target must exist and have exactly its source's weights."""
    diags: list[Diagnostic] = []
    declared: dict[str, tuple] = {}
    for n in graph.nodes():
        if n.op != "ema":
            continue
        a = n.attrs
        where = dict(span=n.span, notes=_notes(n))
        prev = declared.get(a.target)
        if prev is not None:
            if prev[:2] != (a.of, a.decay):
                diags.append(Diagnostic("E1103", f"`{a.target}` is declared the moving average of `{prev[0]}` "
                                        f"(decay {prev[1]}) and of `{a.of}` (decay {a.decay})",
                                        label="a second, different declaration",
                                        help="a target has one source and one decay", **where))
            continue
        declared[a.target] = (a.of, a.decay)
        inside = a.target.startswith(a.of + ".") or a.of.startswith(a.target + ".")
        if inside:
            diags.append(Diagnostic("E1103", f"ema: `{a.target}` and `{a.of}` contain one another",
                                    help="the target must be a separate copy of its source", **where))
            continue
        target, source = weights_under(graph, a.target), weights_under(graph, a.of)
        for name, w in ((a.target, target), (a.of, source)):
            if not w:
                diags.append(Diagnostic("E1103", f"ema: `{name}` is not a module with weights", label="here",
                                        help="name labelled modules: `ema(target, of=online)` after "
                                        "`... -> target: Net(...)` and `... -> online: Net(...)`", **where))
                break
        else:
            diff = _first_difference(target, source)
            if diff is not None:
                key, t, s = diff
                if t is None:
                    msg = f"EMA target `{a.target}` has no `{key}`, which its source `{a.of}` has ({_fmt(s)})"
                elif s is None:
                    msg = f"EMA target `{a.target}` has `{key}` ({_fmt(t)}), which its source `{a.of}` lacks"
                else:
                    msg = (f"EMA target `{a.target}` differs from its source `{a.of}`: `{a.target}.{key}` is "
                           f"{_fmt(t)} but `{a.of}.{key}` is {_fmt(s)}")
                diags.append(Diagnostic("E1103", msg, label=f"`{a.target}` must copy `{a.of}`",
                                        help="build the target from the same block with the same arguments as "
                                        "its source", **where))
    return diags


def _first_difference(target: dict, source: dict):
    for key in list(source) + [k for k in target if k not in source]:
        t, s = target.get(key), source.get(key)
        if t != s:
            return key, t, s
    return None


# -- the inputs a train plan's data supplies (augment hooks) ------------------------------

IMAGE_INPUTS = ("x", "image", "images", "inputs")
LABEL_INPUTS = ("labels", "label", "y", "targets")
NOISE_INPUTS = ("noise", "z")
TEXT_INPUTS = ("tokens", "text", "captions")
VIEW = re.compile(r"view\d*$")
PRETEXTS = ("none", "rotate", "jigsaw")

INPUTS = {
    "x, image, images, inputs": "the data's inputs (images), as they are",
    "labels, label, y, targets": "the data's targets (class labels)",
    "view, view1, view2, ...": "independent random augmentations of the inputs (`augment(...)`); with "
                               "`augment(pretext=...)`, `view` is the pretext task's transformed input",
    "pretext": "the pretext task's label: the rotation (0..3) or the tile permutation's index",
    "tiles": "jigsaw: the image cut into grid x grid tiles in a shuffled order [B, grid², C, h, w]",
    "noise, z": "standard normal noise of the declared shape (generators)",
    "tokens, text, captions": "int64 [B, T]: a caption of each label as token ids (CLIP)",
}


def input_role(name: str) -> str | None:
    """What the data pipeline feeds an input of this name: image, label, view, pretext, tiles, noise, text."""
    if name in IMAGE_INPUTS:
        return "image"
    if name in LABEL_INPUTS:
        return "label"
    if VIEW.match(name):
        return "view"
    if name == "pretext":
        return "pretext"
    if name == "tiles":
        return "tiles"
    if name in NOISE_INPUTS:
        return "noise"
    if name in TEXT_INPUTS:
        return "text"
    return None


DIGITS_SHAPE = (1, 8, 8)


def check_inputs(graph: Graph, plan) -> list[Diagnostic]:
    """E1105: inputs of a `train` plan's model that its data cannot supply."""
    if plan is None or plan.kind != "train":
        return []
    aug = plan.one("augment")
    pretext = aug.args.pretext if aug is not None else "none"
    data = plan.one("data")
    if data is None:  # a plan for `archc mem` and the like: nothing is fed
        return []
    digits = data.args.name == "digits"
    diags: list[Diagnostic] = []
    for nid in graph.inputs:
        node = graph.node(nid)
        name, t = node.path, node.outputs[0]
        role = input_role(name)

        def bad(msg, help=None, label=f"this is {t}"):
            diags.append(Diagnostic("E1105", msg, node.span, label=label, help=help))

        if role is None:
            bad(f"the data of plan `{plan.name}` cannot supply input `{name}`",
                help="inputs are named for what the data pipeline feeds them: " +
                ", ".join(k.split(",")[0] for k in INPUTS) + " (docs/language.md)", label="unknown input name")
            continue
        if role in ("pretext", "tiles") and pretext == "none":
            bad(f"input `{name}` needs a pretext task, and plan `{plan.name}` has none",
                help="add `augment(pretext=\"rotate\")` or `augment(pretext=\"jigsaw\")` to the plan")
            continue
        if role == "tiles" and pretext != "jigsaw":
            bad(f"input `tiles` comes from the jigsaw pretext task, but plan `{plan.name}` sets `{pretext}`",
                help="use `augment(pretext=\"jigsaw\")`")
            continue
        integer = role in ("label", "pretext", "text")
        if integer and t.dtype not in ("int64", "int32"):
            bad(f"input `{name}` receives integer ids, but it is declared {t}", help="declare it int64")
            continue
        if not integer and not is_float(t.dtype):
            bad(f"input `{name}` receives float data, but it is declared {t}", help="declare it float32")
            continue
        if role in ("label", "pretext") and t.rank != 1:
            bad(f"input `{name}` receives one id per example [B], but it is declared {t}")
            continue
        if role == "text" and t.rank != 2:
            bad(f"input `{name}` receives token ids [B, T], but it is declared {t}")
            continue
        if digits and role in ("image", "view") and tuple(t.shape[1:]) != DIGITS_SHAPE:
            bad(f"input `{name}` is declared {t}, but `digits` images are [B, 1, 8, 8]",
                help="declare it float32[B, 1, 8, 8] and upsample inside the model if it needs larger images")
            continue
        if role == "tiles":
            ok = t.rank == 5 and isinstance(t.shape[1], int) and round(t.shape[1] ** 0.5) ** 2 == t.shape[1]
            if ok and digits:
                g = round(t.shape[1] ** 0.5)
                ok = 8 % g == 0 and tuple(t.shape[2:]) == (1, 8 // g, 8 // g)
            if not ok:
                bad(f"input `tiles` must be [B, grid², C, H / grid, W / grid], got {t}",
                    help="for 8x8 digits cut in 2 x 2 tiles: float32[B, 4, 1, 4, 4]")
    return diags


def check_graph(graph: Graph) -> list[Diagnostic]:
    """Checks that need the whole graph (and its train plan, if any): E1103 and E1105."""
    return check_ema(graph) + check_inputs(graph, graph.plan)
