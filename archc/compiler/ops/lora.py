"""`lora`: one LoRA adapter on a linear, embedding or conv layer (inserted by a plan's
`lora(...)` directive, passes/insert_lora.py; never written in a spec).

The adapted layer's own node stays as it was (its parameters, frozen by the pass, keep
their op, path and state_dict keys); each adapter is one `lora` node at the same path,
right after it, taking the layer's output and its input: `lora(y, x)`. Its parameters
are the adapter's, under PEFT's names:

    linear (also transposed, GPT-2's fused c_attn), conv:
        lora_A.<name>.weight [r, in(, kernel)]   lora_B.<name>.weight [out, r(, 1...)]
    embedding:
        lora_embedding_A.<name> [r, num]         lora_embedding_B.<name> [dim, r]
    DoRA (linear): lora_magnitude_vector.<name>.weight [out]

so the summary counts them (trainable unless frozen), the memory pass sees what they
keep for backward, and the renderer draws them. Lowering turns the layer's module into
an `archc.runtime.lora` layer (`adapt(self.<path>, name, r, ...)`), which then computes
y + B(A(dropout(x))) · scaling itself: the node's own call passes its first input on.

FLOPs: the adapter's two products, 2·rows·r·(in + out) for linear layers (conv: A is a
convolution with the layer's kernel into r channels, B a 1x1 convolution); 0 when the
adapter is inactive or merged into the base weight.
"""
from __future__ import annotations

from typing import Literal

from ..dims import numel
from ..ir import TensorType
from .base import Attrs, Footprint, Module, Op, RuntimeClass, Saved, register, static_int


class LoraAttrs(Attrs):
    r: int
    alpha: float = 8
    adapter: str = "default"
    dropout: float = 0.0
    init: bool | Literal["gaussian"] = True
    rslora: bool = False
    dora: bool = False
    active: bool = True  # runs (and trains); inactive adapters are kept, frozen
    merged: bool = False  # folded into the base weight when built
    tied: bool = False  # the base weight is another module's too: never merged
    base: Literal["linear", "transposed", "embedding", "conv"] = "linear"
    num: int = 0  # embedding: rows of the table
    kernel: tuple[int, ...] = ()  # conv: the base's kernel
    site: str = ""  # the adapted module in generated code (`self.h[0].attn.c_attn`)


class _Source(str):
    """A piece of generated source passed as a lowering argument: its repr is itself."""

    def __repr__(self) -> str:
        return str(self)


ADAPT = RuntimeClass("archc.runtime.lora", "adapt")


def dims(a: LoraAttrs, ins: list[TensorType]) -> tuple[int, int]:
    """(in, out) of the adapted layer: features, channels, or table rows and width."""
    y, x = ins
    if a.base == "embedding":
        return a.num, static_int(y.shape[-1], "the embedding's width")
    if a.base == "conv":
        return static_int(x.shape[1], "the conv's input channels"), static_int(y.shape[1], "the conv's channels")
    return static_int(x.shape[-1], "the linear layer's input width"), static_int(y.shape[-1], "its output width")


def adapter_params(a: LoraAttrs, n_in: int, n_out: int) -> dict[str, tuple[int, ...]]:
    n, r = a.adapter, a.r
    if a.base == "embedding":
        return {f"lora_embedding_A.{n}": (r, n_in), f"lora_embedding_B.{n}": (n_out, r)}
    if a.base == "conv":
        p = {f"lora_A.{n}.weight": (r, n_in) + tuple(a.kernel), f"lora_B.{n}.weight": (n_out, r) + (1,) * len(a.kernel)}
    else:
        p = {f"lora_A.{n}.weight": (r, n_in), f"lora_B.{n}.weight": (n_out, r)}
    if a.dora:
        p[f"lora_magnitude_vector.{n}.weight"] = (n_out,)
    return p


@register
class Lora(Op):
    name = "lora"
    Attrs = LoraAttrs
    arity = 2
    doc = ("A LoRA adapter on the layer at the same path (inserted by the `lora` plan directive): "
           "`lora(y, x)` with y the layer's output and x its input gives y + B(A(dropout(x)))·alpha/r. "
           "Parameters lora_A.<name>.weight [r, in] and lora_B.<name>.weight [out, r] (embeddings: "
           "lora_embedding_A/B.<name>); FLOPs 2·rows·r·(in + out), 0 when inactive or merged.")

    def infer(self, a, ins):
        return [ins[0]]

    def params(self, a, ins):
        return adapter_params(a, *dims(a, ins))

    def _runs(self, a) -> bool:
        return a.active and not a.merged

    def flops(self, a, ins, outs):
        if not self._runs(a):
            return 0
        n_in, n_out = dims(a, ins)
        rows = ins[0].numel() // n_out  # output positions (conv) or rows
        if a.base == "conv":
            return 2 * rows * a.r * (n_in * numel(tuple(a.kernel)) + n_out)
        if a.base == "embedding":
            return 2 * rows * a.r * n_out
        return 2 * rows * a.r * (n_in + n_out)

    def lower(self, a, ins, outs):
        kw = {"alpha": a.alpha}
        for f, default in (("dropout", 0.0), ("init", True), ("rslora", False), ("dora", False), ("active", True),
                           ("merged", False), ("tied", False)):
            if getattr(a, f) != default:
                kw[f] = getattr(a, f)
        return Module(ADAPT, (_Source(a.site), a.adapter, a.r), kw, call="{0}")

    # -- memory ---------------------------------------------------------------------------
    def _rows_bytes(self, a, ins, ctx, width: int):
        y = ctx.ins[0] if ctx.ins else ins[0]
        n_out = dims(a, ins)[1]
        return ctx.nbytes(y) // n_out * width

    def saved(self, a, ins, outs, ctx):
        if not self._runs(a) or not ctx.any_grad:
            return []
        out = []
        names = list(adapter_params(a, *dims(a, ins)))
        if ctx.weights_grad:  # A's gradient needs x (or its dropout), B's the r-wide product
            if a.dropout > 0 and a.base != "embedding" and ctx.training:
                out.append(Saved.new(ctx.in_bytes(1), "dropout of the input"))
                out.append(Saved.new(ctx.mask_bytes(ctx.ins[1]), "dropout mask"))
            else:
                out.append(Saved.input(1, "the layer's input"))
            out.append(Saved.new(self._rows_bytes(a, ins, ctx, a.r), "A·x"))
        if len(ctx.requires_grad) > 1 and ctx.requires_grad[1] and a.base != "embedding":
            out += [Saved.param(n) for n in names[:2]]
        return out

    def footprint(self, a, ins, outs, ctx):
        if not self._runs(a):
            return Footprint(views={0: 0}, grad_views={0: 0})
        return Footprint(fwd_peak=self._rows_bytes(a, ins, ctx, a.r), grad_views={0: 0})
