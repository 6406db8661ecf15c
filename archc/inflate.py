"""Inflation (Carreira and Zisserman, 2017): a 2-D network made 3-D, and its weights with it.

    import archc
    from archc.compiler.lower.torch import build_module

    g3d = archc.inflate(archc.load("resnet.arch"), "ResNet50", time_kernel=3, frames=8)
    net3d = build_module(g3d)                    # input [B, 3, 8, 224, 224]
    sd3d = archc.inflate_state_dict(resnet50.state_dict(), like=net3d.state_dict())
    net3d.load_state_dict(sd3d)

`inflate` rewrites the graph IR of a model: every input of rank 4 (an image
[B, C, H, W]) gains a time axis ([B, C, T, H, W]) and every op applied to an image
becomes its 3-D form, with the module paths unchanged:

- `conv` k x k -> t x k x k with t = `time_kernel` (1x1 kernels stay 1x1x1 unless
  `inflate_1x1`), temporal padding t // 2 (so T is kept at stride 1), stride
  (`time_stride`, s, s) where the 2-D stride is more than 1, else (1, s, s);
  dilation (1, d, d). `conv_transpose`: 1 x k x k.
- `max_pool` / `avg_pool` k x k -> `pool_time_kernel` x k x k, stride
  (`pool_time_stride`, s, s), temporal padding pool_time_kernel // 2.
- `adaptive_*_pool(s)` -> (1, s, s): heads that expect a fixed feature size still get it;
  `global_avg_pool`, `bn`, `groupnorm`, activations and element-wise ops follow the rank.
- `upsample(s)` -> (1, s, s), bilinear becomes trilinear; `concat`, `split` and `mean`
  axes after the channels move one place right (a `mean` over H and W averages T too);
  a `flatten` from axis 2 takes T in with H and W.

Other ops on images (`reshape`, `permute`, a strided `zero`...) cannot be inflated
without knowing what they mean: E0303 at the op's position in the spec.

`inflate_state_dict(sd2d, t)` repeats each 2-D kernel t times along time and divides
it by t (the "boring video" initialisation: on a clip of identical frames the 3-D
network computes what the 2-D one computes on each frame, away from the temporal
border); `like=` (a 3-D state dict or module) takes each kernel's length from it.

Imports torch only inside `inflate_state_dict`.
"""
from __future__ import annotations

import sys
import types
from typing import Any, Mapping

from .compiler.diagnostics import CompileError, Diagnostic
from .compiler.dims import NotStatic, Sym
from .compiler.ir import Graph, Node, TensorType, Value
from .compiler.ops import REGISTRY, ShapeError

# ops that follow their input's rank: re-inferred as they are
_RANK_FREE = {"bn", "groupnorm", "relu", "gelu", "silu", "sigmoid", "tanh", "leaky_relu", "dropout",
              "global_avg_pool", "add", "sub", "mul", "div", "neg", "scalar", "identity", "skip",
              "channel_shuffle", "output", "softmax", "mixed", "weighted_sum"}


def inflate(source: Any, model: str | None = None, *, time_kernel: int = 3, time_stride: int = 1,
            frames: int | str = "T", pool_time_kernel: int = 1, pool_time_stride: int | None = None,
            inflate_1x1: bool = False, **graph_kwargs) -> Graph:
    """The 3-D graph of a 2-D model (module docstring for the rules).

    `source` is an `archc.Program` (with `model` and any `Program.graph` arguments:
    `dims`, `args`, hyperparameters...) or a `Graph`. `frames` is the new time axis of
    every image input: a number, or a symbol name (default "T"). Returns a `Graph`: build
    it with `archc.compiler.lower.torch.build_module`, count it with
    `archc.compiler.passes.count_cost.count_cost`, draw it with
    `archc.compiler.lower.graphviz.render`."""
    for name, v in (("time_kernel", time_kernel), ("time_stride", time_stride),
                    ("pool_time_kernel", pool_time_kernel)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"inflate: {name} must be a positive int, got {v!r}")
    if isinstance(source, Graph):
        graph = source
    else:
        graph = source.graph(model, **graph_kwargs)
    t_axis = Sym.symbol(frames) if isinstance(frames, str) else frames
    if not isinstance(t_axis, (int, Sym)) or isinstance(t_axis, bool) or (isinstance(t_axis, int) and t_axis <= 0):
        raise ValueError(f"inflate: frames must be a positive int or a symbol name, got {frames!r}")
    rules = _Rules(time_kernel, time_stride, pool_time_kernel,
                   pool_time_kernel if pool_time_stride is None else pool_time_stride, inflate_1x1)

    out = Graph(graph.name + "_3d")
    out.containers = dict(graph.containers)
    out.decisions = dict(graph.decisions)
    out.plan = graph.plan
    new_id: dict[int, int] = {}
    images: set[tuple[int, int]] = set()  # (old node, port) whose tensor became a video
    for n in graph.nodes():
        old_in = graph.in_values(n.id)
        ins = [Value(new_id[v.node], v.port, out.node(new_id[v.node]).outputs[v.port]) for v in old_in]
        in_types = [v.type for v in ins]
        attrs = n.attrs
        if n.op == "input":
            t = n.outputs[0]
            outs = [TensorType(t.shape[:2] + (t_axis,) + t.shape[2:], t.dtype)] if t.rank == 4 else [t]
            if t.rank == 4:
                images.add((n.id, 0))
        else:
            video = any((v.node, v.port) in images for v in old_in)
            if video and n.op != "output":
                attrs = rules.attrs(n, graph.in_types(n.id), _err)
            try:
                outs = REGISTRY[n.op].infer(attrs, in_types) if n.op != "output" else []
                if not n.shared and n.op != "output":
                    REGISTRY[n.op].params(attrs, in_types)
            except ShapeError as ex:
                raise _err(n, ex.code, f"inflating `{n.op}` at `{n.path}`: {ex.message}", ex.label,
                           ex.help) from None
            except NotStatic as ex:
                raise _err(n, "E0213", f"inflating `{n.op}` at `{n.path}`: {ex}") from None
            if video:
                images.update((n.id, k) for k, t in enumerate(outs) if t.rank == 5)
        m = out.add(n.op, attrs, ins, outs, n.path, n.span, n.calls, n.shared)
        m.meta.update(n.meta)
        new_id[n.id] = m.id
    return out


def inflate_state_dict(sd2d: Mapping[str, Any], t: int = 3, *, like: Any = None) -> dict:
    """A 3-D state dict from a 2-D one: each 4-D kernel [O, I, kh, kw] repeated along a
    new time axis and divided by its length ([O, I, t, kh, kw]); everything else copied.

    The length is `t` for kernels larger than 1x1 and 1 for 1x1 kernels (inflate's
    default), or, with `like` (a 3-D state dict or module), the time axis of the same key
    there; every key must then be in `like` with the same shape but for time (ValueError
    otherwise). Keys of `like` left out (a new head) keep their initialisation: load the
    result with strict=False."""
    import torch

    if like is not None and hasattr(like, "state_dict"):
        like = like.state_dict()
    if like is not None:
        missing = [k for k in sd2d if k not in like]
        if missing:
            raise ValueError(f"inflate_state_dict: keys not in the 3-D model (`like`): {missing[:5]}")
    out = {}
    for k, v in sd2d.items():
        if isinstance(v, torch.Tensor) and v.dim() == 4:
            if like is not None:
                want = tuple(like[k].shape)
                if len(want) != 5 or want[:2] + want[3:] != tuple(v.shape[:2]) + tuple(v.shape[2:]):
                    raise ValueError(f"inflate_state_dict: `{k}` is {tuple(v.shape)} in 2-D and {want} in 3-D")
                n = want[2]
            else:
                n = 1 if tuple(v.shape[2:]) == (1, 1) else t
            out[k] = v.unsqueeze(2).repeat(1, 1, n, 1, 1) / n
        else:
            if like is not None and isinstance(v, torch.Tensor) and tuple(like[k].shape) != tuple(v.shape):
                raise ValueError(f"inflate_state_dict: `{k}` is {tuple(v.shape)} in 2-D and "
                                 f"{tuple(like[k].shape)} in 3-D")
            out[k] = v.clone() if isinstance(v, torch.Tensor) else v
    return out


# -- rules -------------------------------------------------------------------------------------

def _err(n: Node, code: str, message: str, label: str = "", help: str | None = None) -> CompileError:
    notes = [f"in block {c.block} at `{c.path}`" + (f", called from {c.span}" if c.span else "")
             for c in reversed(n.calls)]
    return CompileError(Diagnostic(code, message, n.span, label=label, notes=notes, help=help))


def _pair(v) -> tuple:
    return (v, v) if isinstance(v, int) or v is None else tuple(v)


class _Rules:
    def __init__(self, tk: int, ts: int, ptk: int, pts: int, inflate_1x1: bool):
        self.tk, self.ts, self.ptk, self.pts, self.one = tk, ts, ptk, pts, inflate_1x1

    def attrs(self, n: Node, ins: list[TensorType], err):
        """The 3-D attributes of node `n`, applied to an image in the 2-D graph."""
        a, op = n.attrs, n.op
        x = ins[0] if ins else None
        image = x is not None and x.rank == 4
        upd: dict[str, Any] = {}
        if op in _RANK_FREE or not image or op == "zero" and a.stride == 1:
            return a
        if op == "conv":
            ks = _pair(a.kernel)
            t = 1 if ks == (1, 1) and not self.one else self.tk
            ss = _pair(a.stride)
            upd["kernel"] = (t,) + ks
            upd["stride"] = ((self.ts if max(ss) > 1 else 1),) + ss
            if not isinstance(a.padding, str):
                upd["padding"] = (t // 2,) + _pair(a.padding)
            elif a.padding == "same" and upd["stride"][0] != 1:
                upd["stride"] = (1,) + ss
            upd["dilation"] = (1,) + _pair(a.dilation)
        elif op == "conv_transpose":
            upd.update(kernel=(1,) + _pair(a.kernel), stride=(1,) + _pair(a.stride), padding=(0,) + _pair(a.padding),
                       output_padding=(0,) + _pair(a.output_padding), dilation=(1,) + _pair(a.dilation))
        elif op in ("max_pool", "avg_pool"):
            ks = _pair(a.kernel)
            ss = ks if a.stride is None else _pair(a.stride)
            upd.update(kernel=(self.ptk,) + ks, stride=(self.pts,) + ss, padding=(self.ptk // 2,) + _pair(a.padding))
            if op == "max_pool":
                upd["dilation"] = (1,) + _pair(a.dilation)
        elif op in ("adaptive_avg_pool", "adaptive_max_pool"):
            upd["size"] = (1,) + _pair(a.size)
        elif op == "upsample":
            upd["scale"] = (1,) + _pair(a.scale)
            if a.mode == "bilinear":
                upd["mode"] = "trilinear"
            elif a.mode == "bicubic":
                raise err(n, "E0303", f"cannot inflate a bicubic `upsample` at `{n.path}`",
                          help="PyTorch has no 3-D bicubic interpolation; use bilinear or nearest")
        elif op in ("concat", "split"):
            if image and a.dim >= 2:
                upd["dim"] = a.dim + 1
        elif op == "mean":
            if image:
                ds = (a.dim,) if isinstance(a.dim, int) else tuple(a.dim)
                norm = {d % 4 for d in ds}
                if {2, 3} <= norm:  # over H and W: over T, H and W
                    new = tuple(sorted((norm - {2, 3}) | {2, 3, 4}))
                else:
                    new = tuple(d + 1 if d >= 2 else d for d in ds)
                upd["dim"] = new[0] if len(new) == 1 else new
        elif op == "flatten":  # T sits at axis 2: a flatten from axis 2 takes it in
            if a.end >= 2:
                upd["end"] = a.end + 1
        else:
            raise err(n, "E0303", f"cannot inflate `{op}` at `{n.path}`: it is applied to the image {x}",
                      label=f"this `{op}` sees {x}",
                      help="inflation knows convolutions, pooling, norms, element-wise ops and axis arguments; "
                      "write the 3-D model out for the rest")
        return a.model_copy(update=upd) if upd else a


class _CallableModule(types.ModuleType):
    """`archc.inflate` is a function; importing this module (`archc.inflate`) must not
    shadow it with a module that cannot be called."""

    def __call__(self, *args, **kwargs):
        return inflate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
