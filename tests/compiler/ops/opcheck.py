"""Test helper: build an op from its attributes, run its lowering with real torch and
compare shapes, state_dict and parameter counts with what the op claims."""
from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from archc.compiler.dims import Sym, subs_shape
from archc.compiler.ir import TensorType
from archc.compiler.ops import REGISTRY, Code, Module, ShapeError

NS: dict[str, Any] = {"torch": torch, "nn": torch.nn, "F": torch.nn.functional}
B = Sym.symbol("B")


def make(name: str, *args, **kw):
    """The op and its Attrs, positional arguments in field order (as the language passes them)."""
    op = REGISTRY[name]
    return op, op.Attrs(**dict(zip(op.Attrs.model_fields, args)), **kw)


def target(t: Any) -> Any:
    if not isinstance(t, str):
        return t
    head, *rest = t.split(".")
    obj = NS[head]
    for part in rest:
        obj = getattr(obj, part)
    return obj


def resolve(low: Module | Code, n: int) -> tuple[Callable, torch.nn.Module | None]:
    """A callable running the lowered op on `n` tensors, and the module it built (if any)."""
    names = [f"x{i}" for i in range(n)]
    if isinstance(low, Module):
        mod, template, env = target(low.target)(*low.args, **low.kwargs), low.call, {}
    else:
        mod, template, env = None, low.template, low.env
    expr = template.replace("{*}", ", ".join(names)).format(*names, m="m")

    def fn(*xs):
        return eval(expr, {**NS, **env, "m": mod, **dict(zip(names, xs))})

    return fn, mod


def tensor(shape, dtype: str) -> torch.Tensor:
    if dtype.startswith("int"):
        return torch.randint(0, 10, tuple(shape), dtype=getattr(torch, dtype))
    return torch.randn(tuple(shape), dtype=getattr(torch, dtype))


def run(low, xs) -> list[torch.Tensor]:
    fn, _ = resolve(low, len(xs))
    y = fn(*xs)
    return list(y) if isinstance(y, (tuple, list)) else [y]


def run_op(name: str, xs: list[torch.Tensor], *args, **kw):
    """Lower op `name` for the tensors `xs` and run it: (its output, the module it built or None)."""
    op, a = make(name, *args, **kw)
    ins = [TensorType(tuple(x.shape), str(x.dtype).removeprefix("torch.")) for x in xs]
    fn, mod = resolve(op.lower(a, ins, op.infer(a, ins)), len(xs))
    return fn(*xs), mod


def check(name: str, shapes: list, *args, dtype: str = "float32", sym: bool = True,
          flops: bool = False, **kw) -> list[TensorType]:
    """Check infer, params/buffers and lowering of `name` on inputs of `shapes`.

    With `sym`, also infer with the batch axis (axis 0 of every input) replaced by the
    symbol B, and check that substituting B gives the same types, weights and FLOPs
    and that that lowering runs. With `flops`, compare FLOPs with torch's counter.
    """
    op, a = make(name, *args, **kw)
    ins = [TensorType(tuple(s), dtype) for s in shapes]
    outs = op.infer(a, ins)
    low = op.lower(a, ins, outs)
    fn, mod = resolve(low, len(ins))
    xs = [tensor(s, dtype) for s in shapes]
    with FlopCounterMode(display=False) as counter:
        y = fn(*xs)
    ys = list(y) if isinstance(y, (tuple, list)) else [y]
    assert [tuple(t.shape) for t in ys] == [t.shape for t in outs]
    assert [str(t.dtype) for t in ys] == [f"torch.{t.dtype}" for t in outs]

    claimed = list(op.params(a, ins).items()) + list(op.buffers(a, ins).items())
    real = [] if mod is None else [(k, tuple(v.shape)) for k, v in mod.state_dict().items()]
    assert claimed == real
    n_params = sum(torch.Size(s).numel() for s in op.params(a, ins).values())
    assert n_params == (0 if mod is None else sum(p.numel() for p in mod.parameters()))
    assert op.has_weights(a, ins) == bool(real)
    if flops:
        assert op.flops(a, ins, outs) == counter.get_total_flops()

    if sym:
        sins = [TensorType((B,) + t.shape[1:], dtype) for t in ins]
        souts = op.infer(a, sins)
        b = {"B": shapes[0][0]}
        assert [subs_shape(t.shape, b) for t in souts] == [t.shape for t in outs]
        assert op.params(a, sins) == op.params(a, ins)
        assert op.buffers(a, sins) == op.buffers(a, ins)
        f = op.flops(a, sins, souts)
        assert (f.subs(b) if isinstance(f, Sym) else f) == op.flops(a, ins, outs)
        slow = op.lower(a, sins, souts)
        if isinstance(slow, Module):
            assert slow == low
        else:
            assert [tuple(t.shape) for t in run(slow, xs)] == [t.shape for t in outs]
    return outs


def infer(name: str, shapes: list, *args, dtype: str = "float32", **kw) -> list[TensorType]:
    """Only the shape rule (shapes may hold symbols)."""
    op, a = make(name, *args, **kw)
    return op.infer(a, [TensorType(tuple(s), dtype) for s in shapes])


def fails(code: str, name: str, shapes: list, *args, dtype: str = "float32", **kw) -> ShapeError:
    """Assert that infer (or params) raises ShapeError `code`; returns it."""
    op, a = make(name, *args, **kw)
    ins = [TensorType(tuple(s), dtype) for s in shapes]
    with pytest.raises(ShapeError) as e:
        op.infer(a, ins)
        op.params(a, ins)
    assert e.value.code == code, e.value.message
    return e.value
