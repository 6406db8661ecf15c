"""Recurrent and temporal ops: rnn, lstm, gru, conv_lstm; temporal_sample, temporal_pool,
temporal_repeat; select and last_hidden for reading recurrent states.

Layouts (LANGUAGE.md section 2): sequences are batch first, `[B, T, F]`; videos are
`[B, C, T, H, W]`.

`rnn`, `lstm` and `gru` are torch.nn.RNN / LSTM / GRU with `batch_first=True`, under
the same parameter names and in the same order, so torch.nn's state dicts load as
they are. Each returns two tensors, `(outputs, state)`:

- outputs: `[B, T, D·hidden]` (D = 2 when bidirectional: forward and backward
  halves concatenated, as torch does);
- state: for `rnn` and `gru`, h_n `[layers·D, B, hidden]` (torch's layout: layer 0
  forward, layer 0 backward, layer 1 forward...); for `lstm`, h_n and c_n stacked
  into one tensor `[2, layers·D, B, hidden]` (`state[0]` is h_n, `state[1]` c_n), so
  that `out, state = x -> lstm(256)` unpacks as for the other two and the state can be
  handed to another lstm whole.

An initial state is the tensor attribute `state=` (same shape as the state returned;
zeros when not given). `select(dim, index)` picks a slice (`state -> select(0, 0)` is
an lstm's h_n) and `last_hidden(directions)` gives the last layer's hidden state
`[B, D·hidden]`, directions concatenated, for a classifier head.

`conv_lstm(hidden, kernel)` is the ConvLSTM of Shi et al. (2015) over videos
`[B, C, T, H, W]` -> `([B, hidden, T, H, W], state [2, B, hidden, H, W])`: its gates come
from one convolution over `[x_t, h_{t-1}]` (module `conv`, "same" padding), with
optional peephole weights `w_ci`, `w_cf`, `w_co` `[hidden, H, W]`. Its runtime module
is archc.runtime.recurrent.ConvLSTM.

Ops never import torch: runtime classes are named by `RuntimeClass`, which generated code
imports by module and name.
"""
from __future__ import annotations

from typing import Literal

from ..dims import Dim
from ..ir import TensorType
from .base import (Attrs, Code, Footprint, Module, Op, Phase, RuntimeClass, Saved, ShapeError, contiguous_strides,
                   dtype_bytes, expect_rank, register, static_int)

LSTM_MODULE = RuntimeClass("archc.runtime.recurrent", "LSTM")
CONV_LSTM_MODULE = RuntimeClass("archc.runtime.recurrent", "ConvLSTM")


def _known_ne(a: Dim, b: Dim) -> bool:
    return isinstance(a, int) and isinstance(b, int) and a != b


def _norm_dim(d: int, x: TensorType, what: str) -> int:
    if not -x.rank <= d < x.rank:
        raise ShapeError("E0304", f"{what}: dimension {d} is out of range for {x} (rank {x.rank})",
                         label=f"dim={d}", help=f"use an axis in [{-x.rank}, {x.rank - 1}]")
    return d % x.rank


# -- rnn, lstm, gru ----------------------------------------------------------------------

def onednn_lstm_workspace(t: Dim, b: Dim, width: int, hidden: int, s: int) -> Dim:
    """Bytes of the workspace oneDNN's LSTM (one layer and direction, training) hands PyTorch
    to keep for backward: T steps, batch B, input width F, data type of `s` bytes. Its regions
    (rnn_utils::set_workspace_sizes, set_offsets), each from a page boundary: gates [T, B, 4H]
    and h [T, B, H] in the data type; states [2, T+1, B, max(F, H)] in the data type and c
    states [2, T+1, B, H] in c_0's; two diff states [2, T+1, B, max(F, H)] and the diff c
    states [2, T+1, B, H] in float32."""
    from ..devices import ONEDNN_PAGE, ONEDNN_ROW_ALIGN

    def ld(n: int, size: int) -> int:  # get_good_ld: rows to 64 bytes, not a multiple of 256
        step = ONEDNN_ROW_ALIGN // size
        n = -(-n // step) * step
        return n + step if n % 256 == 0 else n

    def page(n: Dim) -> Dim:
        return -(-n // ONEDNN_PAGE) * ONEDNN_PAGE if isinstance(n, int) else n

    wide, states = max(width, hidden), 2 * (t + 1) * b
    return (page(t * b * ld(4 * hidden, s) * s) + page(t * b * ld(hidden, s) * s)
            + page(states * ld(wide, s) * s) + page(states * hidden * s)
            + 2 * page(states * ld(wide, 4) * 4) + page(states * hidden * 4))


def _good_ld(n: int, size: int) -> int:
    """oneDNN's rnn_utils::get_good_ld: rows to 64 bytes, one step more at a multiple of 256."""
    from ..devices import ONEDNN_ROW_ALIGN

    step = ONEDNN_ROW_ALIGN // size
    n = -(-n // step) * step
    return n + step if n % 256 == 0 else n


# The scratchpad entries of oneDNN's RNN primitive besides its gates (scratch_ht, diff_ht, the
# pointer arrays, their alignment): measured, 12.6-16.6 KB (PyTorch 2.14, AVX-512).
ONEDNN_RNN_SCRATCH_REST = 16952


def onednn_lstm_scratchpad(t: Dim, b: Dim, width: int, hidden: int, gates: int, s: int) -> Dim:
    """What one mkldnn_rnn_layer_backward (a layer and direction) holds at its high point
    beyond its outputs: the weights reordered for oneDNN (16-bit ones, below float32), the
    float32 weight gradients in its ldigo layout (rows of get_good_ld(gates·hidden) floats),
    the bias gradient, and the scratchpad: float32 gates of every step (scratch_gates,
    T·B·gates·hidden: the layer's GEMM is merged over time) and the rest."""
    g = gates * hidden
    reorder = (width + hidden) * g * s if s != 4 else 0
    return reorder + (width + hidden) * _good_ld(g, 4) * 4 + g * 4 + t * b * g * 4 + ONEDNN_RNN_SCRATCH_REST



class RecurrentAttrs(Attrs):
    hidden: int
    layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    bias: bool = True


class RNNAttrs(RecurrentAttrs):
    nonlinearity: Literal["tanh", "relu"] = "tanh"


_SEQ_HELP = ("a recurrent layer reads sequences [B, T, F] (batch first); for a video [B, C, T, H, W], "
             "pool the spatial axes and put time second: `mean(dim=[3, 4]) -> transpose(1, 2)`")


class Recurrent(Op):
    """Shared rule of rnn, lstm and gru: `gates` weight blocks per layer and direction."""

    Attrs = RecurrentAttrs
    tensor_attrs = ("state",)
    gates = 1
    torch_class = ""
    stacked = False  # lstm: h_n and c_n stacked into one state tensor

    def _check(self, a: RecurrentAttrs, ins: list[TensorType]) -> tuple[int, int]:
        """(input width, directions); checks the attributes and the initial state."""
        x = ins[0]
        if x.rank != 3:
            raise ShapeError("E0302", f"{self.name} expects a sequence [B, T, F] (rank 3), got {x}",
                             label=f"this is {x} (rank {x.rank})", help=_SEQ_HELP)
        f = static_int(x.shape[2], f"{self.name}'s input width (last axis)")
        if a.hidden <= 0 or a.layers <= 0:
            raise ShapeError("E0305", f"{self.name} needs a positive hidden size and layer count, got "
                             f"hidden={a.hidden}, layers={a.layers}")
        if not 0.0 <= a.dropout < 1.0:
            raise ShapeError("E0207", f"{self.name}: dropout must be in [0, 1), got {a.dropout}")
        d = 2 if a.bidirectional else 1
        if len(ins) > 1:
            self._check_state(a, x, ins[1], d)
        return f, d

    def _state_shape(self, a, x: TensorType, d: int) -> tuple:
        s = (a.layers * d, x.shape[0], a.hidden)
        return (2,) + s if self.stacked else s

    def _check_state(self, a, x: TensorType, s: TensorType, d: int) -> None:
        want = self._state_shape(a, x, d)
        layout = ("[2, layers·directions, B, hidden] (h_n and c_n stacked)" if self.stacked
                  else "[layers·directions, B, hidden]")
        if s.rank != len(want):
            raise ShapeError("E0302", f"{self.name}: the initial `state` must be {layout}, i.e. "
                             f"{TensorType(want, x.dtype)}, got {s}", label=f"`state` is {s}",
                             help="an lstm's state has h_n and c_n stacked; an rnn's or gru's is h_n alone"
                             if abs(s.rank - len(want)) == 1 else None)
        if self.stacked and _known_ne(s.shape[0], 2):
            raise ShapeError("E0303", f"{self.name}: the initial `state` must stack h_n and c_n on its first "
                             f"axis (size 2), got {s}", label=f"`state` is {s}")
        k = 1 if self.stacked else 0
        slices, batch, width = s.shape[k], s.shape[k + 1], s.shape[k + 2]
        if _known_ne(slices, a.layers * d):
            kind = "bidirectional" if d == 2 else "unidirectional"
            got_d = "bidirectional" if isinstance(slices, int) and slices == 2 * a.layers else None
            help_ = None
            if got_d and d == 1:
                help_ = ("a bidirectional layer's state has two slices per layer (forward, backward): make this "
                         "layer bidirectional too, or merge the directions first (a `linear` bridge, or "
                         "`select` one direction)")
            elif d == 2 and isinstance(slices, int) and 2 * slices == a.layers * d:
                help_ = "this state comes from a unidirectional layer: give the bidirectional layer one per direction"
            raise ShapeError("E0303", f"{self.name}: the initial `state` has {slices} (layer x direction) slices, "
                             f"but a {a.layers}-layer {kind} {self.name} needs {a.layers * d}",
                             label=f"`state` is {s}", help=help_)
        if _known_ne(width, a.hidden):
            raise ShapeError("E0303", f"{self.name}: the initial `state` has width {width}, but hidden={a.hidden}",
                             label=f"`state` is {s}", help="the state's last axis is the hidden size")
        if _known_ne(batch, x.shape[0]):
            raise ShapeError("E0301", f"{self.name}: the initial `state` has batch {batch}, the input {x} has "
                             f"{x.shape[0]}", label=f"`state` is {s}")
        if s.dtype != x.dtype:
            raise ShapeError("E0303", f"{self.name}: the initial `state` is {s.dtype}, the input {x.dtype}",
                             label=f"`state` is {s}")

    def infer(self, a, ins):
        _, d = self._check(a, ins)
        x = ins[0]
        out = TensorType((x.shape[0], x.shape[1], d * a.hidden), x.dtype)
        return [out, TensorType(self._state_shape(a, x, d), x.dtype)]

    def _inputs(self, a, f: int, d: int) -> list[int]:
        return [f if k == 0 else d * a.hidden for k in range(a.layers)]

    def params(self, a, ins):
        f, d = self._check(a, ins)
        g = self.gates * a.hidden
        p: dict[str, tuple[int, ...]] = {}
        for k, width in enumerate(self._inputs(a, f, d)):
            for sfx in ("", "_reverse")[:d]:
                p[f"weight_ih_l{k}{sfx}"] = (g, width)
                p[f"weight_hh_l{k}{sfx}"] = (g, a.hidden)
                if a.bias:
                    p[f"bias_ih_l{k}{sfx}"] = (g,)
                    p[f"bias_hh_l{k}{sfx}"] = (g,)
        return p

    def flops(self, a, ins, outs):
        f, d = self._check(a, ins)
        x = ins[0]
        bt = x.shape[0] * x.shape[1]
        total: Dim = 0
        for width in self._inputs(a, f, d):
            total = total + 2 * bt * self.gates * a.hidden * (width + a.hidden) * d
        return total

    def _kwargs(self, a) -> dict:
        kw = {}
        if a.layers != 1:
            kw["num_layers"] = a.layers
        if not a.bias:
            kw["bias"] = False
        kw["batch_first"] = True
        if a.dropout:
            kw["dropout"] = a.dropout
        if a.bidirectional:
            kw["bidirectional"] = True
        return kw

    def _target(self):
        return self.torch_class

    def lower(self, a, ins, outs):
        f, _ = self._check(a, ins)
        call = "{m}({0}, {1})" if len(ins) > 1 else "{m}({0})"
        return Module(self._target(), (f, a.hidden), self._kwargs(a), call=call)

    # -- memory (docs/memory.md, "Recurrent layers"); `ctx.device.rnn` picks the rule ------------
    steps_saved = 1  # ATen's cells: activations kept per time step, in units of B·hidden
    copy_per_direction = True  # each direction copies the first layer's input (oneDNN's LSTM: one copy)

    def _dtypes(self, ins, ctx) -> tuple[int, int]:
        """(bytes of the activations, bytes of what the cells' linears compute in). They differ
        under CPU autocast for the GRU only: its weights (and each linear's input) are cast to 16
        bits, its state and outputs stay float32."""
        s = dtype_bytes(ins[0].dtype)
        w = ctx.params.get("weight_hh_l0")
        return s, (dtype_bytes(w[1]) if w else s)

    def saved(self, a, ins, outs, ctx):
        if not ctx.any_grad:
            return []
        if ctx.device is not None and ctx.device.rnn == "cudnn":
            return self._saved_cudnn(a, ins, outs)
        return [x for x, _ in self._saved_tagged(a, ins, outs, ctx)]

    def _saved_tagged(self, a, ins, outs, ctx) -> list[tuple[Saved, tuple]]:
        """What the CPU layers keep, each entry with who keeps it: ("param", k, j), ("state",),
        ("between", k, "mask" | "out") (layer k's outputs as layer k + 1 reads them) or
        ("layer", k, j): layer k, direction j (a phased backward frees them by these)."""
        f, d = self._check(a, ins)
        x = ins[0]
        b, t, h = x.shape[0], x.shape[1], a.hidden
        s, sl = self._dtypes(ins, ctx)
        mixed = sl != s  # GRU under autocast: every layer's linear keeps its own cast of its input
        # autocast casts the input anew at each layer call (mkldnn_rnn_layer per direction)
        cast = bool(ctx.casts and ctx.casts[0])
        # the weights the backward reads (under autocast, their cached casts): oneDNN's LSTM
        # keeps the biases too, ATen's cells (addmm) only the weights
        out = [(Saved.param(name), ("param", int(name.split("_l")[1].split("_")[0]), int(name.endswith("_reverse"))))
               for name in self.params(a, ins) if self.stacked or name.startswith("weight")]
        # h_0 (and c_0): zeros [layers·D, B, hidden] unless given; autocast keeps each layer's cast
        if len(ins) > 1 and not mixed:
            out.append((Saved.input(1), ("state",)))
        else:
            out.append((Saved.new((2 if self.stacked else 1) * a.layers * d * b * h * (sl if mixed else s),
                                  "initial state (zeros, or their casts)"), ("state",)))
        for k, width in enumerate(self._inputs(a, f, d)):
            if k < a.layers - 1:  # the next layer's input
                if a.dropout:
                    out.append((Saved.new(t * b * d * h * s, "dropout mask"), ("between", k, "mask")))
                    if not mixed:
                        out.append((Saved.new(t * b * d * h * s, "dropped outputs"), ("between", k, "out")))
                elif mixed:
                    pass
                elif d == 2:
                    out.append((Saved.new(t * b * d * h * s, "both directions' outputs, concatenated"),
                                ("between", k, "out")))
                elif not self.stacked:
                    out.append((Saved.new(t * b * h * s, "the layer's outputs, stacked"), ("between", k, "out")))
            for j in range(d):
                first = mixed or k == 0 and (j == 0 or self.copy_per_direction or cast)
                out += [(e, ("layer", k, j)) for e in
                        self._saved_layer(a, b, t, width, s, first, last=k == a.layers - 1 and d == 1, sl=sl)]
        return out

    def footprint(self, a, ins, outs, ctx):
        # torch runs time-major: the outputs [B, T, D·hidden] are a transposed view of [T, B, D·hidden]
        b, t, w = outs[0].shape
        if not (ctx.any_grad and ctx.device is not None and ctx.device.rnn == "aten" and not self.stacked):
            return Footprint(strides={0: (w, b * w, 1)})
        # ATen's cells (CPU rnn, gru) run step by step and their backward frees each step's tensors
        # as it goes: at its high point the top layer's steps are still held, with every gradient
        f, d = self._check(a, ins)
        top = d * (self.steps_saved * t - (self.steps_saved > 1)) * b * a.hidden * dtype_bytes(ins[0].dtype)
        return Footprint(strides={0: (w, b * w, 1)}, frees_saved=True, bwd_peak=top)

    def _saved_layer(self, a, b, t, width, s, first: bool, last: bool, sl: int = 0) -> list[Saved]:
        """What one layer and direction keeps on the CPU. ATen's cells (rnn): the input as a
        time-major [T·B, F] copy (first layer; later layers keep the layer below's outputs) and
        each step's tanh (or relu) output, the next step's hidden state."""
        h = a.hidden
        out = [Saved.new(t * b * width * s, "the input, time-major (a copy)")] if first else []
        return out + [Saved.new(t * b * h * s, "hidden states over time")]

    def _saved_cudnn(self, a, ins, outs) -> list[Saved]:
        """cuDNN keeps the input, the output, h_0 (c_0) and its reserve space: each layer's gate
        activations and states over time (an estimate, not measured)."""
        f, d = self._check(a, ins)
        x = ins[0]
        bt = x.shape[0] * x.shape[1]
        per = dtype_bytes(x.dtype)
        cells = 2 if self.stacked else 1
        gates = a.layers * d * bt * (self.gates + cells) * a.hidden * per
        between = (a.layers - 1) * bt * d * a.hidden * per
        out = [Saved.input(0), Saved.output(0), Saved.new(gates, "reserve space: gate activations and states")]
        if between:
            out.append(Saved.new(between, "reserve space: outputs of the lower layers"))
        return out


@register
class RNN(Recurrent):
    name = "rnn"
    Attrs = RNNAttrs
    torch_class = "nn.RNN"
    gates = 1
    doc = ("Elman RNN over [B, T, F] (nn.RNN, batch_first): `rnn(hidden, layers=1, bidirectional=false, "
           "dropout=0.0, bias=true, nonlinearity=\"tanh\", state=none)` -> (outputs [B, T, D·hidden], "
           "h_n [layers·D, B, hidden]); `state=` is h_0 (zeros when not given). Parameters are torch.nn.RNN's. "
           "FLOPs: 2·B·T·hidden·(in + hidden) per layer and direction (the gate matmuls; bias and "
           "activations not counted, as torch's counter).")

    def _kwargs(self, a):
        kw = super()._kwargs(a)
        if a.nonlinearity != "tanh":
            kw["nonlinearity"] = a.nonlinearity
        return kw


@register
class LSTM(Recurrent):
    name = "lstm"
    gates = 4
    stacked = True
    doc = ("LSTM over [B, T, F] (nn.LSTM, batch_first): `lstm(hidden, layers=1, bidirectional=false, "
           "dropout=0.0, bias=true, state=none)` -> (outputs [B, T, D·hidden], state [2, layers·D, B, hidden]) "
           "where state[0] is h_n and state[1] is c_n; `state=` takes the same stacked (h_0, c_0). Parameters "
           "are torch.nn.LSTM's (weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, ..._reverse). "
           "FLOPs: 2·B·T·4·hidden·(in + hidden) per layer and direction.")

    def _target(self):
        return LSTM_MODULE

    copy_per_direction = False

    def footprint(self, a, ins, outs, ctx):
        """On the CPU the backward runs as torch runs it: one mkldnn_rnn_layer_backward per layer
        and direction, from the top layer down (the reverse direction first), then, between
        layers, dropout's backward. Each step (RNN.cpp's onednn_rnn_layer_backward) holds
        the contiguous copy of its output gradient (zeros when none; none needed for a lower
        layer of a unidirectional LSTM), the bias sum, float32 diff h_0 and c_0 (and, below
        float32, float32 copies of the incoming gradients), its input's gradient (float32,
        handed on in the input's dtype) and its weights' float32 gradients, and, at its high
        point, oneDNN's scratch: the weights reordered (16-bit ones, below float32) and their
        gradients in oneDNN's ldigo layout (rows of `get_good_ld(G·hidden)` floats), the
        bias gradient, and the primitive's scratchpad (`onednn_lstm_scratchpad`). When it
        ends it frees what its layer and direction saved; dropout's backward frees the mask."""
        fp = super().footprint(a, ins, outs, ctx)
        if not (ctx.any_grad and ctx.device is not None and ctx.device.rnn == "aten"):
            return fp
        tagged = self._saved_tagged(a, ins, outs, ctx)
        f, d = self._check(a, ins)
        b, t = ins[0].shape[0], ins[0].shape[1]
        h, g, s = a.hidden, self.gates * a.hidden, dtype_bytes(ins[0].dtype)
        names = list(self.params(a, ins))
        widths = self._inputs(a, f, d)
        order = [(k, j) for k in reversed(range(a.layers)) for j in reversed(range(d))]
        # the index of each step: layer steps, and a dropout step after each layer above the first
        idx, n = {}, 0
        for k in reversed(range(a.layers)):
            for j in reversed(range(d)):
                idx[(k, j)] = n
                n += 1
            if k and a.dropout:
                idx[("drop", k)] = n
                n += 1
        phases: list[Phase] = [Phase() for _ in range(n)]
        last = len(phases) - 1
        for k, j in order:
            width = widths[k]
            first = j == d - 1  # the first of the layer's directions to run
            temp = g * s + 2 * b * h * 4  # the bias sum, diff h_0 and c_0
            if k == a.layers - 1 or d == 2:
                temp += t * b * h * s  # the output gradient, a contiguous copy (or zeros)
            ws = onednn_lstm_scratchpad(t, b, width, h, self.gates, s)
            if s != 4:  # float32 copies of the incoming gradients; float32 input and weight gradients
                temp += t * b * h * 4 + 2 * b * h * 4 + t * b * width * (4 - s)
                ws += (width + h + 1) * g * (4 - s)
            ws -= g * 4 if a.bias else 0  # the second bias gradient is a clone made after the scratch goes
            keep, inputs = (), False
            if k == 0 and first and ctx.requires_grad and ctx.requires_grad[0]:
                inputs = True  # the op's input gradient
            elif not first:
                keep = ((t * b * width * s, idx[(k, j)]),)  # summed into the other direction's, then freed
            elif k == 0:
                keep = ((t * b * width * s, idx[(k, j)]),)  # not needed: freed
            else:
                keep = ((t * b * width * s, idx[("drop", k)] if a.dropout else idx[(k - 1, 0)]),)
            frees = [i for i, (_, tag) in enumerate(tagged)
                     if tag in (("layer", k, j), ("param", k, j))
                     or j == 0 and k > 0 and tag == ("between", k - 1, "out")]
            if idx[(k, j)] == last:
                frees += [i for i, (_, tag) in enumerate(tagged) if tag == ("state",)]
            sfx = "_reverse" if j else ""
            phases[idx[(k, j)]] = Phase(grads=tuple(nm for nm in names if nm.endswith(f"_l{k}{sfx}")),
                                        temp=max(temp, 0), keep=keep, inputs=inputs, workspace=max(ws, 0),
                                        frees=tuple(frees))
        for k in range(1, a.layers):
            if a.dropout:  # dropout's backward: the gradient of the layer below's outputs; the mask goes
                phases[idx[("drop", k)]] = Phase(
                    keep=((t * b * d * h * s, idx[(k - 1, 0)]),),
                    frees=tuple(i for i, (_, tag) in enumerate(tagged) if tag == ("between", k - 1, "mask")))
        fp.phases = phases
        return fp

    def _saved_layer(self, a, b, t, width, s, first: bool, last: bool, sl: int = 0) -> list[Saved]:
        """oneDNN's LSTM layer (mkldnn_rnn_layer) keeps its input (the first layer's as a
        time-major copy; later layers' is the layer below's output), its output (the op's
        own output for the last layer of a unidirectional LSTM), h_n and c_n, and a uint8
        workspace."""
        h = a.hidden
        out = [Saved.new(t * b * width * s, "the input, time-major (a copy)")] if first else []
        out.append(Saved.output(0) if last else Saved.new(t * b * h * s, "the layer's outputs"))
        out.append(Saved.new(2 * b * h * s, "h_n and c_n"))
        out.append(Saved.new(onednn_lstm_workspace(t, b, width, h, s), "oneDNN workspace"))
        return out


@register
class GRU(Recurrent):
    name = "gru"
    gates = 3
    torch_class = "nn.GRU"
    steps_saved = 7
    doc = ("GRU over [B, T, F] (nn.GRU, batch_first): `gru(hidden, layers=1, bidirectional=false, "
           "dropout=0.0, bias=true, state=none)` -> (outputs [B, T, D·hidden], h_n [layers·D, B, hidden]). "
           "Parameters are torch.nn.GRU's. FLOPs: 2·B·T·3·hidden·(in + hidden) per layer and direction.")

    def _saved_layer(self, a, b, t, width, s, first: bool, last: bool, sl: int = 0) -> list[Saved]:
        """ATen's gru_cell, step by step (sl: the bytes its linears compute in, s: the state's):
        the hidden projection with the sigmoid gates written into it in place (3·sl), tanh's
        output (sl), the clone of the third gate chunk `mul_` keeps (sl), the clone of `h - n`
        (its dtype: the state's, s) and the hidden state the next step's linear reads (its cast
        under autocast): all but the last step's (the first one's is the initial state)."""
        h, sl = a.hidden, sl or s
        out = [Saved.new(t * b * width * sl, "the input, time-major (a copy, or its cast)")] if first else []
        if not isinstance(t, int):  # a symbolic length: the steps as one entry
            return out + [Saved.new(t * b * h * (5 * sl + s) + (t - 1) * b * h * sl, "gates and states over time")]
        # one entry per step (in the order they run), freed as the backward reaches it
        return out + [Saved.new(b * h * (5 * sl + s) + (b * h * sl if i else 0), f"step {i}: gates and state")
                      for i in range(t)]

    def footprint(self, a, ins, outs, ctx):
        """On the CPU the backward runs ATen's GRU as torch's engine meets it (`Footprint.phases`):
        layer by layer from the top, the reverse direction first, each direction's steps from the
        last it ran to the first. Each step frees its gates and state, hands the gradient of its
        hidden state to the next and keeps the gradient of its slice of the input projection
        (until they are stacked); the hidden weights' gradient of each step is summed into the
        earlier ones out of place (the sum of two transposed gradients: old, new and their sum
        alive together; the first step's becomes the sum, the last is added in place). When a
        direction's steps are done, the input projection's gradient is stacked, then its
        backward makes the input weights' gradients and the gradient of the direction's input
        (handed to the layer below, summed with the other direction's), and the direction's
        input copy and weights go; dropout's backward runs between layers."""
        fp = super().footprint(a, ins, outs, ctx)
        t = ins[0].shape[1]
        if not (ctx.any_grad and ctx.device is not None and ctx.device.rnn == "aten") or not isinstance(t, int):
            return fp
        tagged = self._saved_tagged(a, ins, outs, ctx)
        f, d = self._check(a, ins)
        b, h = ins[0].shape[0], a.hidden
        s, sl = self._dtypes(ins, ctx)
        g = self.gates * h
        names = list(self.params(a, ins))
        widths = self._inputs(a, f, d)
        order = [(k, j) for k in reversed(range(a.layers)) for j in reversed(range(d))]
        idx, n = {}, 0
        for k in reversed(range(a.layers)):
            for j in reversed(range(d)):
                idx[(k, j)] = n  # its first step; then its stack and its input projection's backward
                n += t + 2
            if k and a.dropout:
                idx[("drop", k)] = n
                n += 1
        phases: list[Phase] = [Phase() for _ in range(n)]
        last = n - 1
        entries: dict = {}  # (k, j) -> [indices of its tagged entries]
        for i, (_, tag) in enumerate(tagged):
            if tag[0] == "layer":
                entries.setdefault((tag[1], tag[2]), []).append(i)
        for k, j in order:
            width, first = widths[k], j == d - 1
            sfx = "_reverse" if j else ""
            w_hh = f"weight_hh_l{k}{sfx}"
            whh = ctx.param_bytes(w_hh) if ctx.weights_grad and w_hh in ctx.params else 0
            mine = entries.get((k, j), [])
            steps, copy = mine[-t:], mine[:-t]
            i0 = idx[(k, j)]
            mixed = sl != s  # autocast: 16-bit gradients of the weights' casts, summed, copied at the end
            for r in range(t):
                grads = tuple(nm for nm in (w_hh, f"bias_hh_l{k}{sfx}") if nm in names) if r == 0 else (w_hh,)
                keep = ((b * g * s, i0 + t),)  # the step's input projection gradient, until stacked
                keep += ((b * h * s, i0 + r + 1 if r < t - 1 else -1),)  # its hidden state's, to the next step
                temp = 0
                if mixed:
                    if r == 0 and whh:  # held until the casts' backward copies them, after the layers
                        keep += ((whh + (ctx.param_bytes(f"bias_hh_l{k}{sfx}") if a.bias else 0), last),)
                    else:
                        temp = whh
                    grads = ()
                phases[i0 + r] = Phase(grads=grads if ctx.weights_grad else (), keep=keep, temp=temp,
                                       workspace=whh if 0 < r < t - 1 else 0,
                                       frees=(steps[t - 1 - r],) if len(steps) == t else ())
            phases[i0 + t] = Phase(keep=((t * b * g * s, i0 + t + 1),))  # the stacked projection gradient
            keep, inputs = (), False
            if k == 0 and first and ctx.requires_grad and ctx.requires_grad[0]:
                inputs = True
            elif not first or k == 0:
                keep = ((t * b * width * s, i0 + t + 1),)  # summed into the other direction's, or not needed
            else:
                keep = ((t * b * width * s, idx[("drop", k)] if a.dropout else idx[(k - 1, 0)] + t + 1),)
            frees = list(copy) + [i for i, (_, tag) in enumerate(tagged) if tag == ("param", k, j)
                                  or j == 0 and k > 0 and tag == ("between", k - 1, "out")]
            if i0 + t + 1 == last:
                frees += [i for i, (_, tag) in enumerate(tagged) if tag == ("state",)]
            ih = tuple(nm for nm in (f"weight_ih_l{k}{sfx}", f"bias_ih_l{k}{sfx}") if nm in names)
            if mixed and ctx.weights_grad:
                keep = keep + ((sum(ctx.param_bytes(nm) for nm in ih), last),)
            phases[i0 + t + 1] = Phase(grads=ih if ctx.weights_grad and not mixed else (),
                                       keep=keep, inputs=inputs, frees=tuple(frees))
        for k in range(1, a.layers):
            if a.dropout:  # dropout's backward: the gradient of the layer below's outputs; the mask goes
                phases[idx[("drop", k)]] = Phase(
                    keep=((t * b * d * h * s, idx[(k - 1, 0)] + t + 1),),
                    frees=tuple(i for i, (_, tag) in enumerate(tagged) if tag == ("between", k - 1, "mask")))
        if sl != s and ctx.weights_grad:  # the weights' casts' backward: float32 copies, after every layer
            phases.append(Phase(grads=tuple(names)))
        fp.phases = phases
        fp.frees_saved, fp.bwd_peak = False, 0
        return fp


# -- conv_lstm -----------------------------------------------------------------------------

class ConvLSTMAttrs(Attrs):
    hidden: int
    kernel: int | tuple[int, ...]
    peephole: bool = False
    bias: bool = True


@register
class ConvLSTM(Op):
    name = "conv_lstm"
    Attrs = ConvLSTMAttrs
    tensor_attrs = ("state",)
    doc = ("ConvLSTM (Shi et al., 2015) over a video [B, C, T, H, W] -> (outputs [B, hidden, T, H, W], "
           "state [2, B, hidden, H, W]: h and c after the last frame). Gates i, f, g, o (torch's order) come from "
           "one convolution `conv` over [x_t, h_{t-1}] with 4·hidden outputs and \"same\" padding (odd kernels); "
           "c_t = f∘c_{t-1} + i∘tanh(g), h_t = o∘tanh(c_t); with `peephole=true`, w_ci∘c_{t-1} and w_cf∘c_{t-1} "
           "are added to i and f and w_co∘c_t to o (parameters [hidden, H, W]). `state=` is the initial (h, c) "
           "stacked (zeros when not given). FLOPs: the convolution, 2·B·T·H·W·4·hidden·(C + hidden)·kh·kw.")

    def _check(self, a, ins):
        x = ins[0]
        if x.rank != 5:
            raise ShapeError("E0302", f"conv_lstm expects a video [B, C, T, H, W] (rank 5), got {x}",
                             label=f"this is {x} (rank {x.rank})",
                             help="a single image [B, C, H, W] has no time axis; conv_lstm reads frames "
                             "[B, C, T, H, W] (for [B, T, C, H, W] write `transpose(1, 2)` first)" if x.rank == 4
                             else "conv_lstm reads a sequence of frames [B, C, T, H, W]")
        c = static_int(x.shape[1], "conv_lstm's input channels")
        ks = (a.kernel, a.kernel) if isinstance(a.kernel, int) else tuple(a.kernel)
        if len(ks) != 2:
            raise ShapeError("E0302", f"conv_lstm's kernel has {len(ks)} entries, but it convolves the 2 axes "
                             f"H and W of each frame", label=f"kernel={list(ks)}")
        if a.hidden <= 0 or min(ks) <= 0:
            raise ShapeError("E0305", f"conv_lstm needs a positive hidden size and kernel, got "
                             f"hidden={a.hidden}, kernel={a.kernel}")
        if any(k % 2 == 0 for k in ks):
            raise ShapeError("E0303", f"conv_lstm needs odd kernel sizes (its \"same\" padding keeps H and W), "
                             f"got {a.kernel}", label=f"kernel={a.kernel}")
        if a.peephole:
            for d, n in zip(x.shape[3:], "HW"):
                static_int(d, f"conv_lstm's {n} (peephole weights are [hidden, H, W])")
        if len(ins) > 1:
            s = ins[1]
            want = (2, x.shape[0], a.hidden) + x.shape[3:]
            if s.rank != 5 or any(_known_ne(p, q) for p, q in zip(s.shape, want)):
                raise ShapeError("E0303", f"conv_lstm: the initial `state` must be (h, c) stacked, "
                                 f"{TensorType(want, x.dtype)}, got {s}", label=f"`state` is {s}")
        return c, ks

    def infer(self, a, ins):
        self._check(a, ins)
        x = ins[0]
        b, _, t, h, w = x.shape
        return [TensorType((b, a.hidden, t, h, w), x.dtype), TensorType((2, b, a.hidden, h, w), x.dtype)]

    def params(self, a, ins):
        c, ks = self._check(a, ins)
        p = {}  # a module's own parameters come before its children's in a state_dict
        if a.peephole:
            hw = tuple(ins[0].shape[3:])
            for n in ("w_ci", "w_cf", "w_co"):
                p[n] = (a.hidden,) + hw
        p["conv.weight"] = (4 * a.hidden, c + a.hidden) + ks
        if a.bias:
            p["conv.bias"] = (4 * a.hidden,)
        return p

    def flops(self, a, ins, outs):
        c, ks = self._check(a, ins)
        return 2 * outs[0].numel() * 4 * (c + a.hidden) * ks[0] * ks[1]

    def lower(self, a, ins, outs):
        c, ks = self._check(a, ins)
        kw = {}
        if not a.bias:
            kw["bias"] = False
        if a.peephole:
            kw["peephole"] = True
            kw["size"] = tuple(ins[0].shape[3:])
        call = "{m}({0}, {1})" if len(ins) > 1 else "{m}({0})"
        return Module(CONV_LSTM_MODULE, (c, a.hidden, a.kernel), kw, call=call)

    def _dtypes(self, ins, ctx) -> tuple[int, int]:
        """(bytes of the state's dtype, the input's: h_0 and c_0 are x.new_zeros; bytes of the gate
        convolution's dtype: 16 bits under autocast)."""
        s = dtype_bytes(ins[0].dtype)
        w = ctx.params.get("conv.weight")
        return s, (dtype_bytes(w[1]) if w else s)

    def saved(self, a, ins, outs, ctx):
        if not ctx.any_grad:
            return []
        return [x for x, _ in self._saved_tagged(a, ins, outs, ctx)]

    def _saved_tagged(self, a, ins, outs, ctx) -> list[tuple[Saved, tuple]]:
        """What the runtime's `ConvLSTM.step` keeps, frame by frame, each entry with who keeps it:
        ("param",), ("cat", t) (the gate convolution's input [x_t, h_{t-1}], its 16-bit cast under
        autocast), ("gates", t) (sigmoid(i, f, o) and tanh(g) in the convolution's dtype, tanh(c_t)
        in the state's), ("c", t) (c_{t-1}, kept by f·c: the initial state at t = 0), ("last",)
        (peephole: w_co·c_T keeps the last cell state)."""
        x = ins[0]
        s, sl = self._dtypes(ins, ctx)
        b, _, t, hh, ww = x.shape
        u = b * hh * ww  # one channel of one frame
        c, _ = self._check(a, ins)
        hid = a.hidden
        out = [(Saved.param("conv.weight"), ("param",))]
        if not isinstance(t, int):  # a symbolic frame count: the frames as one entry
            out.append((Saved.new(t * u * ((c + hid) * sl + 4 * hid * sl + 2 * hid * s), "frames"), ("frames",)))
            if len(ins) > 1:  # the given state was counted as c_0 above: keep it as it is
                out[-1] = (Saved.new(t * u * ((c + hid) * sl + 4 * hid * sl + 2 * hid * s) - u * hid * s, "frames"),
                           ("frames",))
                out.append((Saved.input(1), ("c", 0)))
            return out
        for k in range(t):
            out.append((Saved.new(u * (c + hid) * sl, f"frame {k}: [x_t, h_(t-1)]"), ("cat", k)))
            out.append((Saved.new(u * (4 * hid * sl + hid * s), f"frame {k}: the gates and tanh(c_t)"), ("gates", k)))
            if k == 0:
                out.append((Saved.input(1) if len(ins) > 1 else Saved.new(u * hid * s, "zero initial state"),
                            ("c", 0)))
            else:
                out.append((Saved.new(u * hid * s, f"frame {k}: c_(t-1)"), ("c", k)))
        if a.peephole:  # w_co·c_t keeps the last cell state too
            out.append((Saved.new(u * hid * s, "the last cell state"), ("last",)))
        return out

    def footprint(self, a, ins, outs, ctx):
        """The backward runs the per-frame graph from the last frame to the first (`Footprint.phases`),
        two steps per frame: the elementwise part (h = o·tanh(c), c = f·c + i·g, the gate
        activations' backward: the frame's gate activations, tanh(c_t) and c_(t-1) go, the gradient
        of c_(t-1) is handed to the frame before), then the gate convolution's backward: the
        gates' gradient (4·hidden channels, `chunk`'s backward joins them), the gradient of
        [x_t, h_(t-1)] (kept while the frames' x_t gradients wait to be stacked into the input's
        gradient, or until the frame before reads its h slice), the weight and bias gradients
        (accumulated in place over the frames) and the `conv` rule's backward workspace on one
        frame; the frame's [x_t, h_(t-1)] goes. Under autocast the 16-bit [x_t, h] gradient is
        copied to float32 (a third step) and the 16-bit weight gradients are summed over the
        frames before their float32 copy. Last, the input's gradient (the frames' stacked)."""
        if not ctx.any_grad:
            return Footprint()
        from .base import REGISTRY, MemoryContext

        x = ins[0]
        c, ks = self._check(a, ins)
        b, _, t, hh, ww = x.shape
        if not isinstance(t, int):
            return Footprint()
        s, sl = self._dtypes(ins, ctx)
        mixed = sl != s
        hid, u = a.hidden, b * hh * ww
        w = ctx.params.get("conv.weight")
        low = w[1] if w else x.dtype
        frame_in = TensorType((b, c + hid, hh, ww), low)
        gates = TensorType((b, 4 * hid, hh, ww), low)
        conv = REGISTRY["conv"]
        attrs = conv.Attrs(out=4 * hid, kernel=list(ks), padding=[k // 2 for k in ks], bias=a.bias)
        params = {"weight": ((4 * hid, c + hid) + tuple(ks), low)}
        if a.bias:
            params["bias"] = ((4 * hid,), low)

        def conv_ws(rg: bool):
            sub = MemoryContext(ctx.device, [frame_in], [gates], [rg], ctx.weights_grad, ctx.training, [], False,
                                params)
            return conv.footprint(attrs, [frame_in], [gates], sub).bwd_peak

        in_grad = bool(ctx.requires_grad and ctx.requires_grad[0])
        # the first frame's [x_0, zeros] needs no gradient when x does not and no state is given
        first_rg = in_grad or len(ins) > 1 and len(ctx.requires_grad) > 1 and ctx.requires_grad[1]
        tagged = self._saved_tagged(a, ins, outs, ctx)
        conv_names = tuple(n for n in ("conv.weight", "conv.bias") if n in ctx.params)
        peep = tuple(n for n in ("w_ci", "w_cf", "w_co") if n in ctx.params)
        wbytes = sum(ctx.param_bytes(n) for n in conv_names) if mixed and ctx.weights_grad else 0
        per = 3 if mixed else 2
        ia = {k: per * (t - 1 - k) for k in range(t)}  # frame k's first step
        end = per * t  # the last step: the input's gradient
        phases: list[Phase] = []
        for k in reversed(range(t)):
            rg = k > 0 or first_rg
            frees = tuple(i for i, (_, tag) in enumerate(tagged)
                          if tag in (("gates", k), ("c", k)) or tag == ("last",) and k == t - 1)
            # the gradient of c_(t-1), read by the frame before
            phases.append(Phase(grads=peep, keep=((u * hid * s, ia[k - 1] if k else -1),), frees=frees))
            after = end if in_grad else (ia[k - 1] if k else -1)  # [x_t, h]'s gradient, or its float32 copy
            cat_grad = ()
            if rg:
                cat_grad = ((u * (c + hid) * sl, ia[k] + 2 if mixed else after),)
            temp = u * 4 * hid * sl
            keep = cat_grad
            if mixed and ctx.weights_grad:  # 16-bit weight gradients summed over the frames
                if k == t - 1:
                    keep = keep + ((wbytes, ia[0] + 1),)
                else:
                    temp += wbytes
            phases.append(Phase(grads=() if mixed else conv_names, temp=temp, keep=keep, workspace=conv_ws(rg),
                                frees=tuple(i for i, (_, tag) in enumerate(tagged) if tag == ("cat", k))))
            if mixed:  # ToCopyBackward: [x_t, h]'s gradient in float32
                phases.append(Phase(keep=((u * (c + hid) * s, after),) if rg else ()))
        phases.append(Phase(grads=conv_names if mixed else (), inputs=True,
                            frees=tuple(i for i, (_, tag) in enumerate(tagged) if tag == ("param",))))
        return Footprint(phases=phases)


# -- temporal ops --------------------------------------------------------------------------

class TemporalSampleAttrs(Attrs):
    stride: int
    dim: int = 2
    offset: int = 0


@register
class TemporalSample(Op):
    name = "temporal_sample"
    Attrs = TemporalSampleAttrs
    doc = ("Frame sampling: every `stride`-th frame along `dim` (2, time, for videos [B, C, T, H, W]; write "
           "dim=1 for sequences [B, T, F]), starting at `offset`: ceil((T - offset) / stride) frames, a strided "
           "view (`x[:, :, offset::stride]`). SlowFast's slow pathway reads `temporal_sample(alpha)`. FLOPs 0.")

    def infer(self, a, ins):
        (x,) = ins
        d = _norm_dim(a.dim, x, "temporal_sample")
        if a.stride <= 0 or a.offset < 0:
            raise ShapeError("E0305", f"temporal_sample needs a positive stride and a non-negative offset, got "
                             f"stride={a.stride}, offset={a.offset}")
        n = x.shape[d]
        if isinstance(n, int) and a.offset >= n:
            raise ShapeError("E0305", f"temporal_sample: offset {a.offset} leaves no frames of the {n} along "
                             f"axis {a.dim} of {x}", label=f"offset={a.offset}")
        out = (n - a.offset + a.stride - 1) // a.stride if a.stride != 1 else n - a.offset
        return [TensorType(x.shape[:d] + (out,) + x.shape[d + 1:], x.dtype)]

    def lower(self, a, ins, outs):
        d = _norm_dim(a.dim, ins[0], "temporal_sample")
        step = f"{a.offset or ''}::{a.stride}" if a.stride != 1 else f"{a.offset}:"
        return Code("{0}[" + ", ".join([":"] * d + [step]) + "]")

    def saved(self, a, ins, outs, ctx):
        return []

    def footprint(self, a, ins, outs, ctx):
        x = ins[0]
        d = _norm_dim(a.dim, x, "temporal_sample")
        st = list(ctx.strides[0] if ctx.strides else contiguous_strides(x.shape))
        st[d] = st[d] * a.stride
        return Footprint(views={0: 0}, strides={0: tuple(st)})


class TemporalPoolAttrs(Attrs):
    kernel: int | None = None
    stride: int | None = None
    mode: Literal["avg", "max"] = "avg"
    dim: int = 2


@register
class TemporalPool(Op):
    name = "temporal_pool"
    Attrs = TemporalPoolAttrs
    doc = ("Pooling along one axis only (`dim`: 2 for videos [B, C, T, H, W], 1 for sequences [B, T, F]). "
           "Without a kernel, the mean (mode=\"avg\") or max over the whole axis, which is removed; with "
           "`kernel` (and `stride`, default the kernel), windows along the axis, which is kept: "
           "(T - kernel) // stride + 1 frames. FLOPs: one per input element (whole axis) or per window "
           "element (windows).")

    def _geom(self, a, x):
        d = _norm_dim(a.dim, x, "temporal_pool")
        if a.kernel is not None and a.kernel <= 0 or a.stride is not None and a.stride <= 0:
            raise ShapeError("E0305", f"temporal_pool needs a positive kernel and stride, got kernel={a.kernel}, "
                             f"stride={a.stride}")
        if a.kernel is None and a.stride is not None:
            raise ShapeError("E0207", "temporal_pool: `stride` needs a `kernel`",
                             help="without a kernel the whole axis is pooled")
        return d

    def infer(self, a, ins):
        (x,) = ins
        d = self._geom(a, x)
        if a.kernel is None:
            return [TensorType(x.shape[:d] + x.shape[d + 1:], x.dtype)]
        s = a.stride or a.kernel
        n = (x.shape[d] - a.kernel) // s + 1
        if isinstance(n, int) and n <= 0:
            raise ShapeError("E0305", f"temporal_pool: a kernel of {a.kernel} is longer than axis {a.dim} of {x}",
                             label=f"this is {x}")
        return [TensorType(x.shape[:d] + (n,) + x.shape[d + 1:], x.dtype)]

    def flops(self, a, ins, outs):
        return ins[0].numel() if a.kernel is None else outs[0].numel() * a.kernel

    def lower(self, a, ins, outs):
        d = self._geom(a, ins[0])
        red = "mean" if a.mode == "avg" else "amax"
        if a.kernel is None:
            return Code(f"{{0}}.{red}(dim={d})")
        return Code(f"{{0}}.unfold({d}, {a.kernel}, {a.stride or a.kernel}).{red}(dim=-1)")

    def saved(self, a, ins, outs, ctx):
        if not ctx.any_grad or a.mode == "avg":
            return []
        return [Saved.input(0), Saved.output(0)]  # amax's backward compares input and result


class TemporalRepeatAttrs(Attrs):
    times: int
    dim: int = 2


@register
class TemporalRepeat(Op):
    name = "temporal_repeat"
    Attrs = TemporalRepeatAttrs
    doc = ("Tile the input `times` times along `dim` (torch's Tensor.repeat on that axis): a one-frame clip "
           "[B, C, 1, H, W] becomes `times` frames. FLOPs 0.")

    def infer(self, a, ins):
        (x,) = ins
        d = _norm_dim(a.dim, x, "temporal_repeat")
        if a.times <= 0:
            raise ShapeError("E0305", f"temporal_repeat needs a positive count, got {a.times}")
        return [TensorType(x.shape[:d] + (x.shape[d] * a.times,) + x.shape[d + 1:], x.dtype)]

    def lower(self, a, ins, outs):
        d = _norm_dim(a.dim, ins[0], "temporal_repeat")
        reps = ", ".join(str(a.times if i == d else 1) for i in range(ins[0].rank))
        return Code(f"{{0}}.repeat({reps})")

    def saved(self, a, ins, outs, ctx):
        return []


class SelectAttrs(Attrs):
    dim: int
    index: int


@register
class Select(Op):
    name = "select"
    Attrs = SelectAttrs
    doc = ("The slice at `index` along `dim`, which is removed (torch.select): `state -> select(0, 0)` is an "
           "lstm's h_n, `out -> select(1, -1)` the last time step of a sequence [B, T, F]. A view; FLOPs 0.")

    def infer(self, a, ins):
        (x,) = ins
        d = _norm_dim(a.dim, x, "select")
        n = x.shape[d]
        if isinstance(n, int) and not -n <= a.index < n:
            raise ShapeError("E0304", f"select: index {a.index} is out of range for axis {a.dim} of {x} "
                             f"(size {n})", label=f"index={a.index}")
        return [TensorType(x.shape[:d] + x.shape[d + 1:], x.dtype)]

    def lower(self, a, ins, outs):
        return Code(f"{{0}}.select({a.dim}, {a.index})")

    def saved(self, a, ins, outs, ctx):
        return []

    def footprint(self, a, ins, outs, ctx):
        x = ins[0]
        d = _norm_dim(a.dim, x, "select")
        st = list(ctx.strides[0] if ctx.strides else contiguous_strides(x.shape))
        return Footprint(views={0: 0}, strides={0: tuple(st[:d] + st[d + 1:])})


class LastHiddenAttrs(Attrs):
    directions: int = 1


@register
class LastHidden(Op):
    name = "last_hidden"
    Attrs = LastHiddenAttrs
    doc = ("The last layer's final hidden state from a recurrent state, directions concatenated: "
           "[layers·D, B, H] (rnn, gru) or [2, layers·D, B, H] (lstm, its h_n) -> [B, D·H], with D = "
           "`directions` (2 for a bidirectional layer: forward then backward, as in the outputs). FLOPs 0.")

    def _split(self, a, x):
        expect_rank(x, {3, 4}, "last_hidden")
        if a.directions not in (1, 2):
            raise ShapeError("E0207", f"last_hidden: directions must be 1 or 2, got {a.directions}")
        if x.rank == 4 and _known_ne(x.shape[0], 2):
            raise ShapeError("E0303", f"last_hidden: a rank-4 state must be an lstm's (h_n, c_n) stacked "
                             f"[2, layers·D, B, H], got {x}", label=f"this is {x}")
        s = x.shape[-3]
        if isinstance(s, int) and s % a.directions:
            raise ShapeError("E0303", f"last_hidden: {s} state slices do not split into {a.directions} directions",
                             label=f"this is {x}",
                             help="a unidirectional layer's state has one slice per layer: directions=1")
        return x.shape[-2], x.shape[-1]

    def infer(self, a, ins):
        (x,) = ins
        b, h = self._split(a, x)
        return [TensorType((b, a.directions * h), x.dtype)]

    def lower(self, a, ins, outs):
        x = ins[0]
        self._split(a, x)
        h = "{0}[0]" if x.rank == 4 else "{0}"
        if a.directions == 1:
            return Code(f"{h}[-1]")
        return Code(f"torch.cat([{h}[-2], {h}[-1]], dim=-1)")

    def saved(self, a, ins, outs, ctx):
        return []
