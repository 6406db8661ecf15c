"""Elaboration: a model and its arguments -> the graph IR.

An interpreter over the AST. Hyperparameters are ordinary values; tensors are
`Value`s (an output port of a node in the graph being built); ops and blocks
not yet applied are `OpRef`s. Applying an op adds one node, with its shape
inferred at once, because later decisions (`x.shape[1]`, `if`) depend on it.
Module paths follow LANGUAGE.md section 5.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ..grammar import ast as A
from .diagnostics import CompileError, Diagnostic, Span, deep_recursion, did_you_mean
from .dims import NotStatic, Sym
from .ir import CallSite, Graph, TensorType, Value
from .ops import REGISTRY, ShapeError
from .ops.base import Op
from .resolve import BUILTINS, Program

DTYPES = {"float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"}
MAX_CALL_DEPTH = 64
MAX_NODES = 100_000  # op instances in one graph; a 175B GPT-3 has about 2,000


# -- values ------------------------------------------------------------------

@dataclass(frozen=True)
class OpRef:
    """An op or block with some hyperparameters bound, not yet applied."""

    callee: Any  # an Op, or an A.BlockDecl
    args: tuple = ()
    kwargs: tuple = ()  # ((name, value, span), ...)
    span: Span | None = None

    @property
    def name(self) -> str:
        return self.callee.name


@dataclass(frozen=True)
class Repeat:
    stage: Any
    count: int
    span: Span | None = None


@dataclass(frozen=True)
class Labelled:
    label: str
    stage: Any
    span: Span | None = None


@dataclass(frozen=True)
class Annotated:
    annotation: str
    stage: Any
    span: Span | None = None


@dataclass(frozen=True)
class ModuleRef:
    """A labelled module, reused with shared weights."""

    path: str
    node: int  # the node that created it (-1 for a block instance or sequence)
    stage: Any = None  # for a block instance or sequence: the stage to apply again


@dataclass(frozen=True)
class ChoiceStage:
    """The chosen candidate of an op choice; applying it records its output types."""

    label: str
    index: int
    stage: Any


STAGE_TYPES = (OpRef, Repeat, Labelled, Annotated, ModuleRef, ChoiceStage)


@dataclass
class Decision:
    """A labelled choice met during elaboration: its candidates as written."""

    label: str
    candidates: list[str]
    span: Span | None
    chosen: int = 0
    outs: dict[int, str] = field(default_factory=dict)  # candidate -> output types, for op choices
    leaf: bool = False  # no candidate can open further decisions (a cell edge's op)
    parent: str | None = None  # the decision this one exists under (a cell edge under its node's inputs)


class Decider:
    """Which candidate each choice takes: fixed decisions, a seeded sampler, or
    the first candidate (`default=True`, used to explore and check a space)."""

    def __init__(self, fixed: dict[str, Any] | None = None, seed: int | None = None, default: bool = False,
                 by_index: bool = False):
        import random

        self.fixed = dict(fixed or {})
        self.by_index = by_index  # fixed values are candidate indices, not candidates as written
        self.rng = random.Random(seed) if seed is not None else None
        self.default = default


def kind_of(v) -> str:
    if isinstance(v, Value):
        return f"a tensor {v.type}"
    if isinstance(v, bool):
        return "a bool"
    if isinstance(v, int):
        return "an int"
    if isinstance(v, Sym):
        return f"a symbolic size `{v}`"
    if isinstance(v, float):
        return "a float"
    if isinstance(v, str):
        return "a string"
    if v is None:
        return "none"
    if isinstance(v, (list, tuple)):
        return "a list" if isinstance(v, list) else "a tuple"
    if isinstance(v, STAGE_TYPES):
        return "an op"
    return type(v).__name__


class _Return(Exception):
    def __init__(self, value):
        self.value = value


# -- scopes --------------------------------------------------------------------

@dataclass
class Scope:
    """One block instance (or model): its variables and where its modules go."""

    prefix: str  # module path of the instance ("" for the top model)
    block: str
    calls: tuple[CallSite, ...]
    vars: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    labels: dict[str, ModuleRef] = field(default_factory=dict)
    outputs: list[tuple[str, Any]] = field(default_factory=list)
    inputs: list | None = None  # tensors bound to `input` statements when used as a block
    declared_inputs: set = field(default_factory=set)
    is_top: bool = False

    def path(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fresh(self, base: str) -> str:
        k = self.counters.get(base, 0)
        self.counters[base] = k + 1
        return f"{base}_{k}"


def _rank_note(scope: Scope) -> list[str]:
    """The chain of block calls, innermost first; a long chain keeps its ends."""
    notes = []
    for site in reversed(scope.calls):
        where = f" at `{_short_path(site.path)}`" if site.path else ""
        frm = f", called from {site.span}" if site.span else ""
        notes.append(f"in block {site.block}{where}{frm}")
    if len(notes) > 6:
        hidden = len(notes) - 4
        notes = notes[:2] + [f"... {hidden} more block calls"] + notes[-2:]
    return notes


def _short_path(path: str) -> str:
    return path if len(path) <= 80 else path[:36] + " ... " + path[-36:]


# -- the elaborator --------------------------------------------------------------

class Elaborator:
    def __init__(self, prog: Program, dims: dict[str, int] | None = None):
        self.prog = prog
        self.dims = dict(dims or {})
        self.graph: Graph | None = None
        self._lets: dict[str, Any] = {}
        self._lets_busy: set[str] = set()
        self.used_paths: dict[str, int] = {}
        self._modules: dict = {}  # module path -> the node that created it
        self._sharing = False  # re-applying a labelled block or sequence: its modules are reused
        self._at: Span | None = None  # the expression being evaluated
        self.symbols: set[str] = set()  # names declared as dimensions in input types
        self.decider: Decider | None = None
        self.relax: str | None = None  # "darts" | "gdas" | "pcdarts": build a supernet
        self._alphas: dict[str, Value] = {}  # relaxed decision group -> its α table
        self._cell_groups: dict[str, tuple] = {}  # cell group -> (its shape, the first cell's span)
        self.trace: dict[str, Decision] = {}  # choices met, in order
        self.encounters: list[tuple[A.Call, str, int]] = []  # (choice node, instance path, chosen)
        self.instances: dict[str, tuple[str, Span | None]] = {}  # block instance path -> (block, call span)

    # entry point
    def elaborate(self, model: str, args: dict[str, Any] | None = None, span: Span | None = None) -> Graph:
        decl = self.prog.blocks.get(model)
        if decl is None or decl.kind != "model":
            models = self.prog.models(own_only=False)
            raise CompileError(Diagnostic("E0104", f"no model named `{model}`", span,
                                          help=did_you_mean(model, models) or
                                          ("models here: " + ", ".join(models) if models else None)))
        self.graph = Graph(model)
        scope = Scope(prefix="", block=model, calls=(), is_top=True)
        with deep_recursion(lambda: self._at, "this expression"):
            self._bind_params(decl, scope, [], list((args or {}).items()), kw_spans={}, call_span=span,
                              from_cli=True)
            self._run_body(decl, scope)
        if not self.graph.outputs:
            raise CompileError(Diagnostic("E0212", f"model `{model}` has no `output`", decl.name_span,
                                          help="name its results: `output logits = ...`"))
        return self.graph

    # -- errors --------------------------------------------------------------
    def err(self, code: str, message: str, span: Span | None, scope: Scope | None = None, **kw) -> CompileError:
        notes = kw.pop("notes", []) + (_rank_note(scope) if scope else [])
        return CompileError(Diagnostic(code, message, span, notes=notes, **kw))

    # -- parameters ------------------------------------------------------------
    def _bind_params(self, decl: A.BlockDecl, scope: Scope, tensors: list, kwargs: list,
                     kw_spans: dict, call_span: Span | None, from_cli: bool = False,
                     positional: list | None = None) -> None:
        tensor_params = [p for p in decl.params if p.type in (None, "tensor")]
        hyper = [p for p in decl.params if p.type not in (None, "tensor")]
        if decl.kind == "model":
            tensor_params = []  # a model's tensors are its `input` statements
            hyper = list(decl.params)
            scope.inputs = list(tensors)
        else:
            if len(tensors) != len(tensor_params):
                raise self.err("E0306", f"block `{decl.name}` takes {len(tensor_params)} tensor input(s), "
                               f"got {len(tensors)}", call_span, scope,
                               help="feed it a tuple to pass several tensors: `(a, b) -> " + decl.name + "`"
                               if len(tensor_params) > 1 else None)
            for p, t in zip(tensor_params, tensors):
                scope.vars[p.name] = t
        positional = list(positional or [])
        if len(positional) > len(hyper):
            raise self.err("E0205", f"`{decl.name}` takes {len(hyper)} hyperparameter(s), got {len(positional)}",
                           call_span, scope)
        given: dict[str, tuple[Any, Span | None]] = {}
        for p, v in zip(hyper, positional):
            given[p.name] = (v, call_span)
        names = {p.name for p in hyper}
        for name, value in kwargs:
            if name not in names:
                raise self.err("E0203", f"`{decl.name}` has no parameter `{name}`", kw_spans.get(name, call_span),
                               scope, help=did_you_mean(name, names) or
                               ("its parameters: " + ", ".join(sorted(names)) if names else None))
            if name in given:
                raise self.err("E0205", f"parameter `{name}` given twice", kw_spans.get(name, call_span), scope)
            given[name] = (value, kw_spans.get(name, call_span))
        for p in hyper:
            if p.name in given:
                value, vspan = given[p.name]
                scope.vars[p.name] = self._check_param_type(decl, p, value, vspan, scope)
            elif p.default is not None:
                scope.vars[p.name] = self._check_param_type(decl, p, self.eval(p.default, scope), p.default.span,
                                                            scope)
            else:
                raise self.err("E0204", f"`{decl.name}` needs a value for `{p.name}`", call_span or decl.name_span,
                               scope, help=f"pass `{p.name}=...`" + (" with --set" if from_cli else ""))

    def _check_param_type(self, decl, p: A.Param, value, span, scope):
        t = p.type
        ok = {
            "int": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or isinstance(v, Sym),
            "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "bool": lambda v: isinstance(v, bool),
            "str": lambda v: isinstance(v, str),
            "list": lambda v: isinstance(v, (list, tuple)),
            "op": lambda v: isinstance(v, STAGE_TYPES) or isinstance(v, list),
            "any": lambda v: True,
        }.get(t)
        if ok is None:
            raise self.err("E0206", f"unknown parameter type `{t}`", p.span, scope,
                           help="types are int, float, bool, str, list, op and tensor")
        if not ok(value):
            raise self.err("E0206", f"`{p.name}` of `{decl.name}` is {t}, got {kind_of(value)}", span, scope)
        if t == "float" and isinstance(value, int):
            value = float(value)
        return value

    # -- statements ------------------------------------------------------------
    def _run_body(self, decl: A.BlockDecl, scope: Scope):
        try:
            self._run(decl.body, scope)
        except _Return as r:
            return r.value
        if scope.outputs:
            vals = [v for _, v in scope.outputs]
            return vals[0] if len(vals) == 1 else tuple(vals)
        if not scope.is_top:
            raise self.err("E0212", f"block `{decl.name}` returns nothing", decl.name_span, scope,
                           help="end it with `return ...`")
        return None

    def _run(self, stmts, scope: Scope) -> None:
        for s in stmts:
            self._stmt(s, scope)

    def _stmt(self, s, scope: Scope) -> None:
        if isinstance(s, A.Assign):
            scope.vars[s.name] = self.eval(s.value, scope)
        elif isinstance(s, A.Unpack):
            v = self.eval(s.value, scope)
            if not isinstance(v, (list, tuple)) or len(v) != len(s.names):
                n = len(v) if isinstance(v, (list, tuple)) else 1
                raise self.err("E0209", f"cannot unpack {n} value(s) into {len(s.names)} names", s.span, scope,
                               label=f"this is {kind_of(v)}")
            for name, x in zip(s.names, v):
                scope.vars[name] = x
        elif isinstance(s, A.Return):
            vals = [self.eval(v, scope) for v in s.values]
            raise _Return(vals[0] if len(vals) == 1 else tuple(vals))
        elif isinstance(s, A.Input):
            self._input(s, scope)
        elif isinstance(s, A.Output):
            v = self.eval(s.value, scope)
            if not isinstance(v, Value):
                raise self.err("E0212", f"output `{s.name}` must be a tensor, got {kind_of(v)}", s.value.span, scope)
            if any(n == s.name for n, _ in scope.outputs):
                raise self.err("E0212", f"output `{s.name}` is declared twice", s.span, scope,
                               help="give each output its own name")
            scope.vars[s.name] = v
            scope.outputs.append((s.name, v))
            if scope.is_top:
                self.graph.add("output", _io_attrs(s.name), [v], [], s.name, s.span)
        elif isinstance(s, A.If):
            c = self._truth(self.eval(s.cond, scope), s.cond.span, scope)
            if c:
                self._run(s.then, scope)
            elif s.orelse:
                self._run(s.orelse, scope)
        elif isinstance(s, A.For):
            it = self.eval(s.iter, scope)
            if not isinstance(it, (list, tuple, range)):
                raise self.err("E0206", f"`for` needs a list or `range(...)`, got {kind_of(it)}", s.iter.span, scope)
            for i, x in enumerate(it):
                before = self.graph._next
                scope.vars[s.var] = x
                self._run(s.body, scope)
                if i == 0:
                    self._check_growth(self.graph._next - before, len(it) - 1, s.iter.span, scope)
        elif isinstance(s, A.Assert):
            if not self._truth(self.eval(s.cond, scope), s.cond.span, scope):
                raise self.err("E0208", s.message or "assertion failed", s.cond.span, scope,
                               label="this is false")
        else:  # pragma: no cover - the grammar has no other statements
            raise AssertionError(s)

    def _truth(self, v, span, scope) -> bool:
        try:
            return bool(v)
        except NotStatic as e:
            raise self.err("E0213", f"cannot decide this at compile time: {e}", span, scope,
                           help="bind the symbol with `--dim`, or make the decision on hyperparameters")

    def _input(self, s: A.Input, scope: Scope) -> None:
        if s.name in scope.declared_inputs:
            raise self.err("E0212", f"input `{s.name}` is declared twice", s.span, scope,
                           help="give each input its own name")
        scope.declared_inputs.add(s.name)
        t = self._tensor_type(s.type, scope)
        if scope.is_top:
            node = self.graph.add("input", _io_attrs(s.name), [], [t], s.name, s.span)
            scope.vars[s.name] = Value(node.id, 0, t)
            return
        # A model used as a block: bind the next given tensor, checking its shape.
        if not scope.inputs:
            raise self.err("E0306", f"model `{scope.block}` used as a block needs a tensor for input `{s.name}`",
                           s.span, scope)
        v = scope.inputs.pop(0)
        if not isinstance(v, Value):
            raise self.err("E0206", f"input `{s.name}` needs a tensor, got {kind_of(v)}", s.span, scope)
        if v.type.rank != t.rank or any(isinstance(a, int) and isinstance(b, int) and a != b
                                        for a, b in zip(v.type.shape, t.shape)):
            raise self.err("E0301", f"input `{s.name}` of `{scope.block}` expects {t}, got {v.type}", s.span,
                           scope)
        scope.vars[s.name] = v

    def _tensor_type(self, te: A.TensorTypeExpr, scope: Scope) -> TensorType:
        dtype = te.dtype or "float32"
        if dtype not in DTYPES:
            raise self.err("E0206", f"unknown dtype `{dtype}`", te.span, scope,
                           help=did_you_mean(dtype, DTYPES) or "dtypes: " + ", ".join(sorted(DTYPES)))
        dims = []
        for d in te.dims:
            v = self.eval(d, scope, symbols=True)
            if isinstance(v, bool) or not isinstance(v, (int, Sym)):
                raise self.err("E0206", f"a dimension must be an integer or a symbol, got {kind_of(v)}", d.span,
                               scope)
            if isinstance(v, int) and v <= 0:
                raise self.err("E0305", f"dimension {v} is not positive", d.span, scope)
            if isinstance(v, int) and v > 2**40:
                raise self.err("E0401", f"dimension {v} is too large", d.span, scope)
            dims.append(v)
        return TensorType(tuple(dims), dtype)

    # -- expressions ------------------------------------------------------------
    def eval(self, e, scope: Scope, symbols: bool = False):
        self._at = e.span or self._at  # where a too-deep recursion is reported
        method = getattr(self, "_e_" + type(e).__name__)
        return method(e, scope, symbols) if method.__code__.co_argcount == 4 else method(e, scope)

    def _e_Num(self, e, scope):
        return e.value

    def _e_Str(self, e, scope):
        return e.value

    def _e_Const(self, e, scope):
        return e.value

    def _e_ListExpr(self, e, scope):
        return [self.eval(x, scope) for x in e.items]

    def _e_TupleExpr(self, e, scope):
        return tuple(self.eval(x, scope) for x in e.items)

    def _e_Name(self, e, scope, symbols=False):
        n = e.id
        if n in scope.vars:
            return scope.vars[n]
        if n in scope.labels:
            return scope.labels[n]
        if n in self.prog.lets:
            return self._let(n, e.span)
        if n in self.prog.blocks:
            return OpRef(self.prog.blocks[n], span=e.span)
        if n in REGISTRY:
            return OpRef(REGISTRY[n], span=e.span)
        if n in BUILTINS:
            return _Builtin(n)
        if symbols or n in self.symbols:
            if symbols:
                self.symbols.add(n)
            return self.dims.get(n, Sym.symbol(n))
        visible = set(scope.vars) | set(scope.labels) | set(self.prog.lets) | set(self.prog.blocks) | set(REGISTRY)
        raise self.err("E0201", f"unknown name `{n}`", e.span, scope, label="not defined",
                       help=did_you_mean(n, visible))

    def _let(self, name: str, span):
        if name in self._lets:
            return self._lets[name]
        if name in self._lets_busy:
            raise self.err("E0201", f"`{name}` is defined in terms of itself", span)
        self._lets_busy.add(name)
        decl = self.prog.lets[name]
        value = self.eval(decl.value, Scope(prefix="", block="let", calls=()))
        self._lets_busy.discard(name)
        self._lets[name] = value
        return value

    def _e_Attr(self, e, scope):
        obj = self.eval(e.obj, scope)
        if isinstance(obj, Value):
            if e.name == "shape":
                return tuple(obj.type.shape)
            if e.name == "dtype":
                return obj.type.dtype
            if e.name == "rank":
                return obj.type.rank
        raise self.err("E0201", f"{kind_of(obj)} has no attribute `{e.name}`", e.span, scope,
                       help="tensors have `.shape`, `.dtype` and `.rank`" if isinstance(obj, Value) else None)

    def _e_Index(self, e, scope):
        obj = self.eval(e.obj, scope)
        idx = self.eval(e.index, scope)
        if not isinstance(obj, (list, tuple, str)):
            raise self.err("E0206", f"cannot index {kind_of(obj)}", e.obj.span, scope)
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise self.err("E0206", f"an index must be an int, got {kind_of(idx)}", e.index.span, scope)
        if not -len(obj) <= idx < len(obj):
            raise self.err("E0304", f"index {idx} is out of range for length {len(obj)}", e.index.span, scope)
        return obj[idx]

    def _e_Cond(self, e, scope):
        return self.eval(e.then, scope) if self._truth(self.eval(e.cond, scope), e.cond.span, scope) \
            else self.eval(e.orelse, scope)

    def _e_UnaryOp(self, e, scope, symbols=False):
        v = self.eval(e.operand, scope, symbols)
        if e.op == "not":
            return not self._truth(v, e.operand.span, scope)
        if isinstance(v, Value):
            return self._apply_op(REGISTRY["neg"], {}, [v], e.span, scope)
        if isinstance(v, (int, float, Sym)) and not isinstance(v, bool):
            return -v
        raise self.err("E0206", f"cannot negate {kind_of(v)}", e.span, scope)

    def _e_BinOp(self, e, scope, symbols=False):
        op = e.op
        if op in ("and", "or"):
            left = self.eval(e.left, scope)
            lt = self._truth(left, e.left.span, scope)
            if (op == "and" and not lt) or (op == "or" and lt):
                return left
            return self.eval(e.right, scope)
        a = self.eval(e.left, scope, symbols)
        b = self.eval(e.right, scope, symbols)
        if isinstance(a, Value) or isinstance(b, Value):
            return self._tensor_binop(op, a, b, e, scope)
        stage_list = isinstance(a, list) and a and all(isinstance(x, STAGE_TYPES) for x in a)
        if isinstance(a, STAGE_TYPES) or isinstance(b, STAGE_TYPES) or (stage_list and op == "*" and _is_int(b)):
            if op == "*" and isinstance(a, STAGE_TYPES + (list,)) and _is_int(b):
                if b < 0 or b > MAX_NODES:
                    raise self.err("E0401" if b > 0 else "E0207", f"cannot repeat a stage {b} times", e.right.span,
                                   scope)
                return Repeat(a, b, e.span)
            raise self.err("E0206", f"`{op}` cannot take {kind_of(a)} and {kind_of(b)}", e.span, scope,
                           help="`STAGE * N` repeats a stage; other operators work on values and tensors")
        try:
            return _arith(op, a, b)
        except ZeroDivisionError:
            raise self.err("E0210", "division by zero", e.span, scope)
        except OverflowError:
            raise self.err("E0210", f"`{op}` overflows: the result is too large", e.span, scope)
        except NotStatic as ex:
            raise self.err("E0213", f"cannot decide this at compile time: {ex}", e.span, scope)
        except (TypeError, ValueError):
            raise self.err("E0206", f"`{op}` cannot take {kind_of(a)} and {kind_of(b)}", e.span, scope)

    def _tensor_binop(self, op, a, b, e, scope):
        if isinstance(a, STAGE_TYPES) or isinstance(b, STAGE_TYPES):
            stage, other = (e.left, e.right) if isinstance(a, STAGE_TYPES) else (e.right, e.left)
            raise self.err("E0004", f"`{op}` between an op and a tensor", e.span, scope,
                           label="this is part of a pipeline stage",
                           help=f"`->` binds loosest: write `(... -> {_source_of(stage)}) {op} {_source_of(other)}`")
        names = {"+": "add", "-": "sub", "*": "mul", "/": "div", "@": "matmul"}
        if isinstance(a, Value) and isinstance(b, Value):
            if op not in names:
                raise self.err("E0206", f"`{op}` does not apply to tensors", e.span, scope)
            try:
                REGISTRY[names[op]].infer(REGISTRY[names[op]].Attrs(), [a.type, b.type])
            except ShapeError as ex:
                if ex.code == "E0301" and op in "+-":
                    raise self.err("E0301", f"shape mismatch in `{op}`: {a.type} vs {b.type}", e.span, scope,
                                   label=f"left is {a.type}, right is {b.type}",
                                   help="project the skip path, or write `@residual` to have one inserted")
            return self._apply_op(REGISTRY[names[op]], {}, [a, b], e.span, scope)
        t, other, tensor_left = (a, b, True) if isinstance(a, Value) else (b, a, False)
        if not (isinstance(other, (int, float)) and not isinstance(other, bool)):
            raise self.err("E0206", f"`{op}` cannot take {kind_of(a)} and {kind_of(b)}", e.span, scope)
        scalar_op = {"+": "add", "*": "mul", "-": "sub" if tensor_left else "rsub",
                     "/": "div" if tensor_left else "rdiv", "**": "pow" if tensor_left else None}.get(op)
        if scalar_op is None:
            raise self.err("E0206", f"`{op}` cannot take {kind_of(a)} and {kind_of(b)}", e.span, scope)
        return self._apply_op(REGISTRY["scalar"], {"op": scalar_op, "value": other}, [t], e.span, scope)

    def _e_Call(self, e, scope):
        if isinstance(e.func, A.Name) and e.func.id == "choice" and "choice" not in scope.vars:
            return self._choice(e, scope)
        if isinstance(e.func, A.Name) and e.func.id == "cell" and "cell" not in scope.vars:
            return self._cell(e, scope)
        f = self.eval(e.func, scope)
        if isinstance(f, ModuleRef) and isinstance(e.func, A.Name):
            # A label named like an op or block (`conv: conv(...)`) does not hide it from calls.
            callee = self.prog.blocks.get(e.func.id) or REGISTRY.get(e.func.id)
            if callee is not None:
                f = OpRef(callee, span=e.func.span)
        args = [self.eval(a, scope) for a in e.args]
        kwargs = [(k.name, self.eval(k.value, scope), k.span) for k in e.kwargs]
        if isinstance(f, _Builtin):
            if kwargs:
                raise self.err("E0203", f"`{f.name}` takes no keyword arguments", kwargs[0][2], scope)
            return self._builtin(f.name, args, e, scope)
        if isinstance(f, OpRef):
            tensors = []
            while args and _is_tensors(args[0]):
                a = args.pop(0)
                tensors.extend(a if isinstance(a, (list, tuple)) else [a])
            ref = OpRef(f.callee, f.args + tuple(args), f.kwargs + tuple(kwargs), e.span)
            if tensors:
                return self.apply(ref, tensors, scope, e.span)
            return ref
        raise self.err("E0202", f"{kind_of(f)} is not callable", e.func.span, scope)

    def _choice(self, e, scope):
        """`choice(a, b, ..., label=...)`: evaluate only the decided candidate."""
        label = None
        for k in e.kwargs:
            if k.name != "label":
                raise self.err("E0203", f"`choice` has no argument `{k.name}`", k.span, scope,
                               help="candidates are positional; the only keyword is `label`")
            label = self.eval(k.value, scope)
            if not isinstance(label, str) or not label:
                raise self.err("E0206", f"a choice label must be a string, got {kind_of(label)}", k.value.span, scope)
        if len(e.args) < 1:
            raise self.err("E0204", "`choice` needs at least one candidate", e.span, scope)
        if label is None:  # an unlabelled choice is named by where it is written in its block
            idx = self._choice_numbers().get(id(e), 0)
            seen = scope.fresh(f"choice#{idx}")  # the same choice met again in a loop: _1, _2...
            nth = int(seen.rsplit("_", 1)[1])
            label = scope.path(f"choice_{idx}" + (f"_{nth}" if nth else ""))
        cands = [_source_of(a) for a in e.args]
        if self.relax is not None:
            values = [self.eval(a, scope) for a in e.args]
            if all(isinstance(v, STAGE_TYPES) for v in values):  # an op choice becomes a mixed op
                self.trace.setdefault(label, Decision(label, cands, e.span))
                return RelaxedChoice(label, tuple(values), e.span)
        d = self.trace.get(label)
        if d is None:
            d = self.trace[label] = Decision(label, cands, e.span)
            d.chosen = self._decide(d, scope)
        elif len(d.candidates) != len(cands):
            raise self.err("E0602", f"choices labelled `{label}` have different candidates", e.span, scope,
                           notes=[f"first labelled at {d.span}"] if d.span else [],
                           help="choices that share a label are one decision: give them the same candidates")
        self.encounters.append((e, scope.prefix, d.chosen))
        v = self.eval(e.args[d.chosen], scope)
        if isinstance(v, STAGE_TYPES) or (isinstance(v, list) and v and all(isinstance(x, STAGE_TYPES) for x in v)):
            return ChoiceStage(label, d.chosen, v)
        return v

    # -- cells (DARTS) ----------------------------------------------------------
    def _cell(self, e, scope):
        """`cell(inputs..., nodes=N, ops=[...], keep=K|"all", stride=S, combine=..., group=...)`."""
        import itertools

        inputs: list[Value] = []
        for a in e.args:
            v = self.eval(a, scope)
            if not _is_tensors(v):
                raise self.err("E0206", f"`cell` takes tensors first, got {kind_of(v)}", a.span, scope,
                               help="its settings are keyword arguments: nodes=, ops=, keep=, stride=, ...")
            inputs.extend(v if isinstance(v, (list, tuple)) else [v])
        allowed = ("nodes", "ops", "keep", "stride", "combine", "group", "genotype")
        kw: dict[str, tuple] = {}
        for k in e.kwargs:
            if k.name not in allowed:
                raise self.err("E0203", f"`cell` has no argument `{k.name}`", k.span, scope,
                               help=did_you_mean(k.name, allowed) or "its arguments: " + ", ".join(allowed))
            kw[k.name] = (self.eval(k.value, scope), k.span)

        def arg(name, default=None):
            return kw[name][0] if name in kw else default

        def where(name):
            return kw[name][1] if name in kw else e.span

        nodes, ops, keep = arg("nodes"), arg("ops"), arg("keep", "all")
        stride, combine = arg("stride", 1), arg("combine", "concat")
        if not inputs:
            raise self.err("E0306", "`cell` needs at least one input tensor", e.span, scope)
        if not _is_int(nodes) or nodes < 1:
            raise self.err("E0604", "`cell` needs `nodes=N` with N >= 1", where("nodes"), scope)
        if not isinstance(ops, list) or not ops or not all(isinstance(o, STAGE_TYPES) for o in ops):
            raise self.err("E0604", "`cell` needs `ops=[...]`, a list of ops", where("ops"), scope)
        if keep != "all" and not (_is_int(keep) and keep >= 1):
            raise self.err("E0604", f"`keep` is a number of inputs or \"all\", got {keep!r}", where("keep"), scope)
        if _is_int(keep) and keep > len(inputs):
            raise self.err("E0604", f"`keep={keep}` but the first node has only {len(inputs)} input(s)",
                           where("keep"), scope, help=f"keep at most {len(inputs)}")
        if combine not in ("concat", "last"):
            raise self.err("E0604", f'`combine` is "concat" or "last", got {combine!r}', where("combine"), scope)
        if not _is_int(stride) or stride < 1:
            raise self.err("E0604", f"`stride` must be a positive int, got {stride!r}", where("stride"), scope)
        genotype = arg("genotype")
        if genotype is not None:
            genotype = self._check_genotype(genotype, nodes, len(inputs), keep, where("genotype"), scope)
        name = self._fresh(scope, "cell")
        self._claim(scope, name, e.span)
        path = scope.path(name)
        group = arg("group") or path
        op_reprs = [_stage_repr(o) for o in ops]
        self._check_cell_group(group, (len(inputs), nodes, keep, tuple(op_reprs), combine), e.span, scope)
        self.graph.containers[path] = "cell"
        inner = Scope(prefix=path, block=scope.block, calls=scope.calls, vars=scope.vars)
        discrete = [o for o in ops if keep == "all" or not _is_zero(o)]
        reprs = [r for o, r in zip(ops, op_reprs) if keep == "all" or not _is_zero(o)]
        # Ops to check on each kind of edge (discrete mode): those that open no decisions of their own.
        probes = [(o, r) for o, r in zip(ops, op_reprs) if self._is_leaf(o)]
        leaf = len(probes) == len(ops)
        probes = [(o, r) for o, r in probes
                  if not any(isinstance(v, ModuleRef) for v in o.args + tuple(v for _, v, _ in o.kwargs))]
        n_edges = sum(len(inputs) + j for j in range(nodes))
        alpha = self._alpha(group, n_edges, len(ops), e.span, scope) if self.relax else None
        beta = self._alpha(group + ".beta", n_edges, 1, e.span, scope) if self.relax == "pcdarts" else None
        states = list(inputs)
        if not self.relax:  # what the supernet finds by applying every op: check each op on each kind of edge
            probed: set = set()
            for x in inputs:
                self._probe_ops(probes, x, stride, inner, e.span, probed)
        row = 0
        for j in range(nodes):
            n_in = len(states)
            if self.relax or keep == "all":
                edges = list(range(n_in))
            elif genotype is not None:
                edges = [i for _, i in genotype[j]]
            else:
                combos = list(itertools.combinations(range(n_in), keep))
                inputs_label = f"{group}.node{j}.inputs"
                edges = list(combos[self._cell_decision(inputs_label,
                                                        ["+".join(f"s{i}" for i in c) for c in combos],
                                                        e.span, scope, leaf=False)])
            terms = []
            for i in edges:
                s_edge = stride if i < len(inputs) else 1
                if self.relax == "pcdarts":
                    terms.append(self._partial_edge(ops, states[i], s_edge, inner, f"edge{j}_{i}", alpha,
                                                    row + i, e.span))
                    continue
                if self.relax:
                    outs = [self._apply_edge(o, states[i], s_edge, inner, f"edge{j}_{i}.{k}", e.span)
                            for k, o in enumerate(ops)]
                    terms.append(self._mixed(alpha, row + i, outs, inner, e.span))
                    continue
                if genotype is not None:
                    op = genotype[j][i] if keep == "all" else next(o for o, src in genotype[j] if src == i)
                else:
                    op = discrete[self._cell_decision(f"{group}.node{j}.edge{i}", reprs, e.span, scope, leaf,
                                                      parent=None if keep == "all" else inputs_label)]
                terms.append(self._apply_edge(op, states[i], s_edge, inner, f"edge{j}_{i}", e.span))
            if beta is not None:  # PC-DARTS: the node's edges weighted by softmax(β) over them
                total = self._apply_op(REGISTRY["weighted_sum"], {"start": row}, [beta] + terms, e.span, inner)
                row += n_in
                states.append(total)
                continue
            row += n_in
            total = terms[0]
            for t in terms[1:]:
                total = self._apply_op(REGISTRY["add"], {}, [total, t], e.span, inner)
            states.append(total)
            if not self.relax and j < nodes - 1:
                self._probe_ops(probes, total, 1, inner, e.span, probed)
        inter = states[len(inputs):]
        if combine == "last" or len(inter) == 1:
            return inter[-1]
        return self._apply_op(REGISTRY["concat"], {"dim": 1}, inter, e.span, inner, name="concat")

    def _check_genotype(self, genotype, nodes: int, n_inputs: int, keep, span, scope) -> list:
        """Validate `genotype=` against the cell's shape. Returns, per node, its
        (op, input) pairs (keep=K) or its op for each input in order (keep="all")."""
        pair_help = ("each pair is `[op, input]`: an op and the index of the state it reads, "
                     "the cell's inputs first, then the nodes before it")
        if not isinstance(genotype, (list, tuple)):
            raise self.err("E0604", f"`genotype` is a list of nodes, each a list of [op, input] pairs, "
                           f"got {kind_of(genotype)}", span, scope, help=pair_help)
        if len(genotype) != nodes:
            raise self.err("E0604", f"the genotype has {len(genotype)} node(s), but the cell has `nodes={nodes}`",
                           span, scope, help=f"give one list of [op, input] pairs for each of the {nodes} node(s)")
        out = []
        for j, node in enumerate(genotype):
            n_in = n_inputs + j
            allowed = "0" if n_in == 1 else f"0..{n_in - 1}"
            reads = (f"node {j} reads the cell's {n_inputs} input(s)"
                     + (f" and the {j} node(s) before it" if j else "") + f": inputs {allowed}")
            if not isinstance(node, (list, tuple)):
                raise self.err("E0604", f"node {j} of the genotype is {kind_of(node)}, not a list of "
                               "[op, input] pairs", span, scope, help=pair_help)
            pairs: list = []
            for k, pair in enumerate(node):
                if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], STAGE_TYPES)
                        and _is_int(pair[1])):
                    if not isinstance(pair, (list, tuple)):
                        why = f"it is {kind_of(pair)}, not [op, input]"
                    elif len(pair) != 2:
                        why = f"it has {len(pair)} item(s), not 2 ([op, input])"
                    elif not isinstance(pair[0], STAGE_TYPES):
                        why = f"its first item is {kind_of(pair[0])}, not an op"
                    else:
                        why = f"its second item is {kind_of(pair[1])}, not an input index"
                    raise self.err("E0604", f"pair {k} of node {j} of the genotype is malformed: {why}", span, scope,
                                   help=pair_help)
                op, i = pair
                if not 0 <= i < n_in:
                    raise self.err("E0604", f"node {j} of the genotype takes input {i}, but it has {n_in} "
                                   f"({allowed})", span, scope, help=reads)
                if any(i == src for _, src in pairs):
                    raise self.err("E0604", f"node {j} of the genotype takes input {i} twice", span, scope,
                                   help="each input feeds a node through one op: list it once")
                pairs.append((op, i))
            if keep == "all":
                missing = [i for i in range(n_in) if all(i != src for _, src in pairs)]
                if missing:
                    raise self.err("E0604", f"node {j} of the genotype leaves out input {missing[0]}, but with "
                                   f'`keep="all"` it takes every input ({allowed})', span, scope,
                                   help=f"list a pair for each of inputs {allowed}: `[zero, {missing[0]}]` for "
                                   "an edge that is cut")
                by_input = dict((i, op) for op, i in pairs)
                out.append([by_input[i] for i in range(n_in)])
            else:
                if len(pairs) != keep:
                    raise self.err("E0604", f"node {j} of the genotype has {len(pairs)} pair(s), but the cell has "
                                   f"`keep={keep}`", span, scope,
                                   help=f"give each node {keep} [op, input] pair(s) with different inputs; {reads}")
                out.append(pairs)
        return out

    def _check_cell_group(self, group: str, shape: tuple, span, scope) -> None:
        """Cells that share a `group` share their decisions: they must have one shape."""
        first = self._cell_groups.setdefault(group, (shape, span))
        if first[0] == shape:
            return
        names = ("inputs", "nodes", "keep", "ops", "combine")
        diff = next(k for k, (a, b) in enumerate(zip(shape, first[0])) if a != b)

        def show(v):
            if names[diff] == "inputs":
                return f"{v} input(s)"
            if names[diff] == "ops":
                return "ops=[" + ", ".join(v) + "]"
            return f"{names[diff]}={v!r}" if isinstance(v, str) else f"{names[diff]}={v}"

        raise self.err("E0604", f"group `{group}` is used by cells of different shapes: {show(shape[diff])} here, "
                       f"{show(first[0][diff])} in the first", span, scope,
                       notes=[f"first used at {first[1]}"] if first[1] else [],
                       help="cells that share a `group` must have the same inputs, nodes, keep, ops and combine")

    def _probe_ops(self, probes: list, x: Value, stride: int, scope: Scope, span, probed: set) -> None:
        """Apply each (op, its repr) of `probes` to a state like `x` with the edge's stride
        on a scratch graph, once per (type, stride): in the discrete space only the
        decided ops are applied, and the others must fit as they do in the supernet."""
        if (x.type, stride) in probed:
            return
        probed.add((x.type, stride))
        # Successes are kept on the program: exploring a space elaborates it many times.
        done = self.prog.__dict__.setdefault("_cell_probes", set())
        for op, text in probes:
            key = (id(op.callee), text, x.type, stride, tuple(sorted(self.dims.items())))
            if key in done:
                continue
            saved = (self.graph, self.used_paths, self._modules, self.instances, dict(self.trace),
                     len(self.encounters), self._sharing)
            rng = self.decider.rng.getstate() if self.decider is not None and self.decider.rng else None
            try:
                self.graph = Graph(saved[0].name)
                self.used_paths, self._modules, self.instances, self._sharing = {}, {}, {}, False
                probe = Scope(prefix=scope.path("probe"), block=scope.block, calls=scope.calls, vars=scope.vars)
                node = self.graph.add("input", _io_attrs("probe"), [], [x.type], "probe", span)
                self._apply_edge(op, Value(node.id, 0, x.type), stride, probe, "op", span)
                done.add(key)
            except CompileError as ex:
                if ex.diagnostics[0].code != "E0601":  # an undecided choice inside: reached when it is applied
                    raise
            finally:
                self.graph, self.used_paths, self._modules, self.instances = saved[:4]
                self.trace.clear()
                self.trace.update(saved[4])
                del self.encounters[saved[5]:]
                self._sharing = saved[6]
                if rng is not None:
                    self.decider.rng.setstate(rng)

    PC_PARTS = 4  # PC-DARTS sends 1/K of the channels through the candidate ops

    def _partial_edge(self, ops, x: Value, stride: int, scope: Scope, label: str, alpha, row: int, span):
        """A PC-DARTS edge: candidates see the first C/K channels, the rest bypass
        (max-pooled when the edge strides), then the channels are shuffled."""
        k = self.PC_PARTS
        c = x.type.shape[1]
        if not isinstance(c, int) or c % k:
            raise self.err("E0604", f"PC-DARTS needs channels divisible by {k}, got {c}", span, scope)
        edge = Scope(prefix=scope.path(label), block=scope.block, calls=scope.calls, vars=scope.vars)
        self.graph.containers[edge.prefix] = "edge"
        part, rest = self._apply_op(REGISTRY["split"], {"sizes": [c // k, c - c // k], "dim": 1}, [x], span, edge)
        outs = [self._apply_edge(o, part, stride, edge, str(i), span) for i, o in enumerate(ops)]
        mixed = self._mixed(alpha, row, outs, edge, span)
        if stride != 1:
            rest = self._apply_op(REGISTRY["max_pool"], {"kernel": 2, "stride": 2}, [rest], span, edge)
        joined = self._apply_op(REGISTRY["concat"], {"dim": 1}, [mixed, rest], span, edge)
        return self._apply_op(REGISTRY["channel_shuffle"], {"groups": k}, [joined], span, edge)

    def _cell_decision(self, label, cands, span, scope, leaf: bool, parent: str | None = None) -> int:
        d = self.trace.get(label)
        if d is None:
            d = self.trace[label] = Decision(label, cands, span, leaf=leaf, parent=parent)
            d.chosen = self._decide(d, scope)
        elif d.candidates != cands:
            raise self.err("E0604", f"cells of group `{label.split('.node')[0]}` have different shapes", span, scope,
                           notes=[f"first seen at {d.span}"] if d.span else [],
                           help="cells that share a `group` must have the same inputs, nodes and ops")
        return d.chosen

    def _is_leaf(self, op) -> bool:
        """`_is_leaf`, remembered per block on the program (it prints the block's body)."""
        if not isinstance(op, OpRef) or isinstance(op.callee, Op):
            return _is_leaf(op)
        known = self.prog.__dict__.setdefault("_leaf_blocks", {})
        if id(op.callee) not in known:
            known[id(op.callee)] = (op.callee, _is_leaf(op))  # the decl is kept, so its id stays its own
        return known[id(op.callee)][1]

    def _apply_edge(self, op, x: Value, stride: int, scope: Scope, label: str, span):
        """Apply a cell's candidate op to one state, giving it the edge's stride."""
        takes_stride = _takes(op, "stride")
        if stride != 1 and not takes_stride:
            raise self.err("E0604", f"`{_stage_repr(op)}` cannot take the edge's stride {stride}", span, scope,
                           help="give the cell ops that take `stride` (a stride-2 skip is a factorized reduce)")
        if takes_stride and isinstance(op, OpRef):
            op = OpRef(op.callee, op.args, op.kwargs + (("stride", stride, span),), op.span)
        before = x.type
        y = self.apply(op, [x], scope, span, label=label)
        if not isinstance(y, Value) or y.type.shape[:2] != before.shape[:2]:
            got = y.type if isinstance(y, Value) else kind_of(y)
            raise self.err("E0604", f"cell op `{_stage_repr(op)}` changes the channels: {before} -> {got}", span,
                           scope, help="each op in a cell must keep its input's channel count")
        return y

    def _alpha(self, group: str, rows: int, cols: int, span, scope) -> Value:
        """The α table of a relaxed decision group, made once and shared by its cells."""
        if group in self._alphas:
            a = self._alphas[group]
            if a.type.shape != (rows, cols):
                raise self.err("E0604", f"group `{group}` is used by cells of different shapes", span, scope,
                               help="cells that share a `group` must have the same inputs, nodes and ops")
            return a
        top = Scope(prefix="arch", block=scope.block, calls=())
        self.graph.containers["arch"] = "arch"
        self._claim(top, _ident_path(group), span)
        a = self._apply_op(REGISTRY["arch_param"], {"rows": rows, "cols": cols}, [], span, top,
                           name=_ident_path(group))
        self._alphas[group] = a
        return a

    def _mixed(self, alpha: Value, row: int, outs: list, scope: Scope, span) -> Value:
        relax = "gumbel" if self.relax == "gdas" else "softmax"
        return self._apply_op(REGISTRY["mixed"], {"row": row, "relax": relax}, [alpha] + list(outs), span, scope)

    def _choice_numbers(self) -> dict[int, int]:
        """Each `choice(...)` call's number within its declaration, in written order, so
        that an unlabelled choice's label does not depend on other decisions."""
        if not hasattr(self, "_choice_no"):
            from .resolve import _find

            self._choice_no = {}
            for decl in list(self.prog.blocks.values()) + list(self.prog.lets.values()):
                calls = [c for c in _find(decl, A.Call) if isinstance(c.func, A.Name) and c.func.id == "choice"]
                calls.sort(key=lambda c: (c.span.line, c.span.column) if c.span else (0, 0))
                self._choice_no.update({id(c): i for i, c in enumerate(calls)})
        return self._choice_no

    def _decide(self, d: Decision, scope) -> int:
        dec = self.decider
        if dec is not None and d.label in dec.fixed:
            want = dec.fixed[d.label]
            if dec.by_index:
                return want
            for i, text in enumerate(d.candidates):
                if text == str(want) or (isinstance(want, bool) and text == str(want).lower()):
                    return i
            if _is_int(want) and 0 <= want < len(d.candidates):
                return want
            raise self.err("E0601", f"`{want}` is not a candidate of choice `{d.label}`", d.span, scope,
                           help="candidates: " + ", ".join(f"`{c}`" for c in d.candidates)
                           + f" (or an index 0..{len(d.candidates) - 1})")
        if dec is not None and dec.rng is not None:
            return dec.rng.randrange(len(d.candidates))
        if dec is not None and dec.default:
            return 0
        raise self.err("E0601", f"choice `{d.label}` is not decided", d.span, scope,
                       help=f"decide it with `--choose {d.label}=...` or `--sample SEED`")

    def _builtin(self, name, args, e, scope):
        try:
            if name == "range":
                if not all(_is_int(a) for a in args) or not 1 <= len(args) <= 3:
                    raise TypeError
                r = range(*args)
                if len(r) > MAX_NODES:
                    raise self.err("E0401", f"range of {len(r)} is too long", e.span, scope)
                return r
            if name == "len":
                (x,) = args
                return len(x)
            if name in ("min", "max"):
                xs = args[0] if len(args) == 1 else args
                return {"min": min, "max": max}[name](xs)
            if name == "abs":
                (x,) = args
                return abs(x)
        except NotStatic as ex:
            raise self.err("E0213", f"cannot decide this at compile time: {ex}", e.span, scope)
        except (TypeError, ValueError):
            pass
        raise self.err("E0206", f"`{name}` cannot take {', '.join(kind_of(a) for a in args) or 'no arguments'}",
                       e.span, scope)

    def _e_Pipeline(self, e, scope):
        v = self.eval(e.head, scope)
        for stage in e.stages:
            if isinstance(v, list) and _is_tensors(v):
                v = tuple(v)
            if not _is_tensors(v):
                raise self.err("E0206", f"a pipeline feeds tensors, but this is {kind_of(v)}",
                               e.head.span, scope)
            try:
                st = self.eval(stage, scope)
            except CompileError as ex:
                if ex.diagnostics[0].code == "E0004" and isinstance(stage, A.BinOp):
                    ex.diagnostics[0].help = _precedence_hint(e, stage) or ex.diagnostics[0].help
                raise
            v = self.apply(st, list(v) if isinstance(v, tuple) else [v], scope, stage.span)
        return v

    def _e_Labelled(self, e, scope):
        return Labelled(e.label, self.eval(e.stage, scope), e.label_span or e.span)

    def _e_Annotated(self, e, scope):
        if e.annotation not in ("residual", "checkpoint"):
            raise self.err("E0202", f"unknown annotation `@{e.annotation}`", e.span, scope,
                           help=did_you_mean(e.annotation, ["residual", "checkpoint"]))
        return Annotated(e.annotation, self.eval(e.stage, scope), e.span)

    def _e_TensorTypeExpr(self, e, scope):  # pragma: no cover - only inside `input`
        return self._tensor_type(e, scope)

    # -- applying stages ---------------------------------------------------------
    def apply(self, st, inputs: list, scope: Scope, span: Span | None, label: str | None = None):
        """Apply a stage to its input tensors; `label` names the module it creates."""
        if isinstance(st, Labelled):
            return self.apply(st.stage, inputs, scope, st.span or span, label=st.label)
        if isinstance(st, OpRef):
            name = label or self._fresh(scope, st.name)
            self._claim(scope, name, span if label else st.span or span)
            if isinstance(st.callee, Op):
                v = self._apply_op(st.callee, st, inputs, st.span or span, scope, name=name)
            else:
                v = self._call_block(st, inputs, scope, name, st.span or span)
                if label and not self._sharing:
                    scope.labels.setdefault(label, ModuleRef(scope.path(name), -1, st))
            return v
        if isinstance(st, list):
            return self._sequence(st, inputs, scope, span, label)
        if isinstance(st, Repeat):
            if label is not None:
                return self._sequence([st], inputs, scope, span, label)
            if st.count == 0:  # no copies: the identity, as an empty nn.Sequential
                return inputs[0] if len(inputs) == 1 else tuple(inputs)
            v = inputs
            for i in range(st.count):
                before = self.graph._next
                v = self.apply(st.stage, v if isinstance(v, list) else [v], scope, span)
                if i == 0:
                    self._check_growth(self.graph._next - before, st.count - 1, st.span or span, scope)
            return v
        if isinstance(st, ModuleRef):
            return self._reuse(st, inputs, scope, span)
        if isinstance(st, Annotated):
            return self._annotated(st, inputs, scope, span, label)
        if isinstance(st, RelaxedChoice):
            name = label or self._fresh(scope, "choice")
            self._claim(scope, name, st.span or span)
            inner = Scope(prefix=scope.path(name), block=scope.block, calls=scope.calls, vars=scope.vars)
            self.graph.containers[inner.prefix] = "choice"
            outs = [self.apply(c, inputs, inner, span, label=str(k)) for k, c in enumerate(st.candidates)]
            alpha = self._alpha(st.label, 1, len(outs), span, scope)
            return self._mixed(alpha, 0, outs, inner, span)
        if isinstance(st, ChoiceStage):
            v = self.apply(st.stage, inputs, scope, span, label)
            outs = v if isinstance(v, (list, tuple)) else [v]
            self.trace[st.label].outs[st.index] = fmt_types([o.type for o in outs if isinstance(o, Value)])
            return v
        raise self.err("E0206", f"{kind_of(st)} is not a stage", span, scope,
                       help="a stage is an op, a block, a labelled module or a list of stages")

    def _check_growth(self, per_copy: int, copies_left: int, span, scope) -> None:
        """Refuse, before building them, repetitions that would pass the node limit."""
        if len(self.graph) + per_copy * copies_left > MAX_NODES:
            total = len(self.graph) + per_copy * copies_left
            raise self.err("E0401", f"this would make about {total:,} op instances, more than the limit of "
                           f"{MAX_NODES:,}", span, scope,
                           help="a network this large is almost certainly a mistake in a count")

    def _fresh(self, scope: Scope, base: str) -> str:
        """The next unused `{base}_{k}` name in this scope."""
        while True:
            name = scope.fresh(base)
            if self._sharing or scope.path(name) not in self.used_paths:
                return name

    def _claim(self, scope: Scope, name: str, span) -> None:
        path = scope.path(name)
        if self._sharing:
            if path not in self.used_paths:
                raise self.err("E0301", f"reusing a module made a new module at `{path}`", span, scope,
                               help="a reused block must create the same modules each time")
            return
        if path in self.used_paths:
            raise self.err("E0211", f"label `{name}` is already used in this scope", span, scope,
                           help=f"to share its weights write `-> {name}`; otherwise choose another label")
        self.used_paths[path] = 1

    def _sequence(self, stages: list, inputs, scope: Scope, span, label):
        name = label or self._fresh(scope, "seq")
        self._claim(scope, name, span)
        path = scope.path(name)
        if label and not self._sharing and not label.isdigit():
            scope.labels.setdefault(label, ModuleRef(path, -1, list(stages)))
        self.graph.containers[path] = "seq"
        child = Scope(prefix=path, block=scope.block, calls=scope.calls, vars=scope.vars)
        v = inputs
        i = 0
        for st in stages:
            copies = [st.stage] * st.count if isinstance(st, Repeat) else [st]
            for k, c in enumerate(copies):
                before = self.graph._next
                v = self.apply(c, list(v) if isinstance(v, (list, tuple)) else [v], child, span, label=str(i))
                if k == 0 and len(copies) > 1:
                    self._check_growth(self.graph._next - before, len(copies) - 1, st.span or span, scope)
                i += 1
        return v[0] if isinstance(v, list) and len(v) == 1 else v

    def _reuse(self, ref: ModuleRef, inputs, scope, span):
        if ref.stage is not None:  # a labelled block instance or sequence: apply it again, sharing weights
            outer = self._sharing
            self._sharing = True
            try:
                leaf = ref.path.rsplit(".", 1)[-1]
                return self.apply(ref.stage, inputs, scope, span, label=leaf)
            finally:
                self._sharing = outer
        owner = self.graph.node(ref.node)
        self._check_shared(owner, inputs, span, scope, ref.path)
        return self._add_node(REGISTRY[owner.op], owner.attrs, inputs, span, scope, ref.path, shared=True)

    def _check_shared(self, owner, inputs, span, scope, path) -> None:
        """A module used again must get inputs its weights fit."""
        op = REGISTRY[owner.op]
        in_types = [v.type for v in inputs]
        old_types = self.graph.in_types(owner.id)
        try:
            fits = op.params(owner.attrs, in_types) == op.params(owner.attrs, old_types)
        except ShapeError:
            fits = False
        if not fits:
            leaf = path.rsplit(".", 1)[-1]
            raise self.err("E0301", f"`{path}` is reused on {fmt_types(in_types)}, but its weights were made "
                           f"for {fmt_types(old_types)}", span, scope,
                           help=f"`{leaf}` here is the module labelled `{leaf}`, reused with shared weights; "
                           f"for a fresh `{leaf}` op write `{leaf}()`" if leaf in REGISTRY or leaf in self.prog.blocks
                           else None)

    def _annotated(self, st: Annotated, inputs, scope, span, label):
        # `@checkpoint` marks the nodes a stage creates; `@residual` adds its input back.
        before = self.graph._next
        v = self.apply(st.stage, inputs, scope, span, label)
        if st.annotation == "checkpoint":
            created = [self.graph.node(i).path for i in range(before, self.graph._next)]
            key = label and scope.path(label) or _common_prefix(created) or f"segment_{before}"
            for nid in range(before, self.graph._next):
                self.graph.node(nid).meta["checkpoint"] = key
            return v
        if len(inputs) != 1 or not isinstance(v, Value):
            raise self.err("E0306", "`@residual` wraps a stage with one tensor input and one output", st.span, scope)
        x = inputs[0]
        if x.type.shape != v.type.shape:
            x = self._shortcut(x, v, before, scope, st.span)
        return self._apply_op(REGISTRY["add"], {}, [v, x], st.span, scope)

    def _shortcut(self, x: Value, y: Value, first_node: int, scope: Scope, span) -> Value:
        """The projection `@residual` inserts when F(x) and x differ: a strided 1x1
        conv and batch norm for images, a linear layer for features."""
        xs, ys = x.type.shape, y.type.shape
        created = [self.graph.node(i).path for i in range(first_node, self.graph._next)]
        owner = _common_prefix(created)
        where = (Scope(prefix=owner, block=scope.block, calls=scope.calls)
                 if owner in self.graph.containers else scope)
        if len(xs) != len(ys) or xs[0] != ys[0]:
            raise self.err("E0303", f"`@residual` cannot project {x.type} onto {y.type}", span, scope,
                           help="the stage must keep the rank and the batch")
        if len(xs) >= 3:
            strides = []
            for a, b in zip(xs[2:], ys[2:]):
                if not (isinstance(a, int) and isinstance(b, int) and b > 0 and a % b == 0) and a != b:
                    raise self.err("E0303", f"`@residual` cannot project {x.type} onto {y.type}: "
                                   f"{a} is not a whole multiple of {b}", span, scope,
                                   help="the stage may shrink spatial sizes only by whole strides")
                strides.append(1 if a == b else a // b)
            stride = strides[0] if len(set(strides)) == 1 else strides
            name = self._fresh_exact(where, "shortcut")
            conv = OpRef(REGISTRY["conv"], (ys[1], 1), (("stride", stride, span), ("bias", False, span)), span)
            bn = OpRef(REGISTRY["bn"], span=span)
            return self._sequence([conv, bn], [x], where, span, name)
        if any(a != b for a, b in zip(xs[:-1], ys[:-1])):
            raise self.err("E0303", f"`@residual` cannot project {x.type} onto {y.type}", span, scope,
                           help="only the last axis may change for features")
        name = self._fresh_exact(where, "shortcut")
        return self.apply(OpRef(REGISTRY["linear"], (ys[-1],), (), span), [x], where, span, label=name)

    def _fresh_exact(self, scope: Scope, base: str) -> str:
        """`base` itself if free in the scope, else `base_1`, `base_2`..."""
        name, k = base, 0
        while scope.path(name) in self.used_paths:
            k += 1
            name = f"{base}_{k}"
        return name

    def _call_block(self, ref: OpRef, inputs, scope: Scope, name: str, span):
        decl: A.BlockDecl = ref.callee
        if len(scope.calls) >= MAX_CALL_DEPTH:
            raise self.err("E0402", f"block calls nest deeper than {MAX_CALL_DEPTH}", span, scope,
                           help="a block that calls itself never ends")
        path = scope.path(name)
        self.graph.containers.setdefault(path, "block:" + decl.name)
        self.instances[path] = (decl.name, span)
        inner = Scope(prefix=path, block=decl.name, calls=scope.calls + (CallSite(decl.name, path, span),))
        kw_spans = {k: s for k, _, s in ref.kwargs}
        self._bind_params(decl, inner, list(inputs), [(k, v) for k, v, _ in ref.kwargs], kw_spans, span,
                          positional=list(ref.args))
        return self._run_body(decl, inner)

    def _apply_op(self, op: Op, ref, inputs: list, span, scope: Scope, name: str | None = None):
        """Validate attributes and add one node; `ref` is an OpRef or a dict of attributes."""
        extra: list = []
        if isinstance(ref, OpRef):
            # Tensor-valued attributes (mha's `kv=`) are extra inputs, in `tensor_attrs` order.
            given = {k: (v, s) for k, v, s in ref.kwargs if k in op.tensor_attrs}
            for k in op.tensor_attrs:
                if k in given and given[k][0] is not None:
                    if not isinstance(given[k][0], Value):
                        raise self.err("E0206", f"`{k}` of `{op.name}` takes a tensor, got {kind_of(given[k][0])}",
                                       given[k][1], scope)
                    extra.append(given[k][0])
            attrs = self._attrs(op, ref.args, tuple(kv for kv in ref.kwargs if kv[0] not in op.tensor_attrs),
                                span, scope)
        else:
            attrs = op.Attrs(**ref)
        if name is None:
            name = self._fresh(scope, op.name)
            self._claim(scope, name, span)
        for v in inputs:
            if not isinstance(v, Value):
                raise self.err("E0206", f"`{op.name}` takes tensors, got {kind_of(v)}", span, scope)
        if op.arity is not None and len(inputs) != op.arity:
            raise self.err("E0306", f"`{op.name}` takes {op.arity} tensor input(s), got {len(inputs)}", span, scope)
        if op.arity is None and not inputs:
            raise self.err("E0306", f"`{op.name}` needs at least one tensor input", span, scope)
        return self._add_node(op, attrs, list(inputs) + extra, span, scope, scope.path(name))

    def _check_ties(self, op: Op, attrs, in_types, span, scope) -> None:
        """A tied parameter must have the shape of the one it shares."""
        for pname, (target, shape) in op.tied(attrs, in_types).items():
            owner = next((n for n in self.graph.nodes() if n.path == target.rsplit(".", 1)[0] and not n.shared),
                         None)
            if owner is None:
                raise self.err("E0201", f"`{op.name}` ties `{pname}` to `{target}`, which does not exist", span,
                               scope, help="tie to a labelled module created earlier: `tie=wte`")
            theirs = REGISTRY[owner.op].params(owner.attrs, self.graph.in_types(owner.id)).get(
                target.rsplit(".", 1)[1])
            if theirs != shape:
                raise self.err("E0303", f"cannot tie `{pname}` {list(shape)} to `{target}` "
                               f"{list(theirs) if theirs else 'which has no such parameter'}", span, scope,
                               help="tied weights must have the same shape")

    def _add_node(self, op: Op, attrs, inputs, span, scope, path, shared=False):
        if self._sharing and not shared and op.has_weights(attrs, [v.type for v in inputs]):
            owner = self._modules.get(path)
            if owner is None or owner.op != op.name:
                raise self.err("E0301", f"reusing a module made a new module at `{path}`", span, scope)
            self._check_shared(owner, inputs, span, scope, path)
            shared = True
        in_types = [v.type for v in inputs]
        try:
            outs = op.infer(attrs, in_types)
            if not shared:
                op.params(attrs, in_types)
                self._check_ties(op, attrs, in_types, span, scope)
        except ShapeError as ex:
            raise self.err(ex.code, ex.message, span, scope, label=ex.label, help=ex.help)
        except NotStatic as ex:
            raise self.err("E0213", f"`{op.name}` needs a known size: {ex}", span, scope,
                           help="bind the symbol with `--dim`")
        if len(self.graph) >= MAX_NODES:
            raise self.err("E0401", f"the graph has more than {MAX_NODES} nodes", span, scope)
        node = self.graph.add(op.name, attrs, inputs, outs, path, span, scope.calls, shared)
        if not shared:
            self._modules.setdefault(path, node)
        leaf = path.rsplit(".", 1)[-1]
        if not shared and not leaf.isdigit():
            scope.labels.setdefault(leaf, ModuleRef(path, node.id))
        vals = [Value(node.id, i, t) for i, t in enumerate(outs)]
        return vals[0] if len(vals) == 1 else tuple(vals)

    def _attrs(self, op: Op, args, kwargs, span, scope):
        fields = [f for f in op.Attrs.model_fields if f not in op.tensor_attrs]
        if len(args) > len(fields):
            raise self.err("E0205", f"`{op.name}` takes at most {len(fields)} argument(s), got {len(args)}", span,
                           scope, help=f"its arguments: {', '.join(fields)}" if fields else
                           f"`{op.name}` takes no arguments")
        values = dict(zip(fields, args))
        for k, v, kspan in kwargs:
            if k not in op.Attrs.model_fields:
                raise self.err("E0203", f"`{op.name}` has no argument `{k}`", kspan, scope,
                               help=did_you_mean(k, op.Attrs.model_fields) or
                               (f"its arguments: {', '.join(fields)}" if fields else None))
            if k in values:
                raise self.err("E0205", f"argument `{k}` of `{op.name}` given twice", kspan, scope)
            values[k] = v
        for k, v in values.items():
            if isinstance(v, ModuleRef):  # `tie=wte`: a labelled module, by path
                values[k] = v.path
            elif isinstance(v, Sym):
                raise self.err("E0213", f"argument `{k}` of `{op.name}` is the symbolic size `{v}`", span, scope,
                               help="bind the symbol with `--dim`")
        try:
            return op.Attrs(**values)
        except ValidationError as ex:
            first = ex.errors()[0]
            loc = str(first["loc"][0]) if first["loc"] else ""
            kspan = next((s for k, _, s in kwargs if k == loc), span)
            code = "E0204" if first["type"] == "missing" else "E0207"
            if code == "E0204":
                msg, hint = f"`{op.name}` needs `{loc}`", f"its arguments: {', '.join(fields)}"
            else:
                branches = [er for er in ex.errors() if er["loc"] and er["loc"][0] == loc]
                msg = f"invalid `{loc}` for `{op.name}`: " + (
                    first["msg"] if len(branches) == 1 else f"{values.get(loc)!r} is not accepted")
                hint = f"`{loc}` takes {_describe_type(op.Attrs.model_fields[loc].annotation)}" \
                    if loc in op.Attrs.model_fields else f"its arguments: {', '.join(fields)}"
            raise self.err(code, msg, kspan, scope, help=hint)


@dataclass(frozen=True)
class RelaxedChoice:
    """An op choice in a supernet: every candidate, mixed by α."""

    label: str
    candidates: tuple
    span: Span | None = None


def _is_zero(op) -> bool:
    return isinstance(op, OpRef) and isinstance(op.callee, Op) and op.callee.name == "zero"


def _takes(op, param: str) -> bool:
    if isinstance(op, OpRef):
        if isinstance(op.callee, Op):
            return param in op.callee.Attrs.model_fields
        return any(p.name == param for p in op.callee.params)
    return False


def _is_leaf(op) -> bool:
    """An op that cannot open decisions: a built-in op, or a block with no choice in it."""
    if not isinstance(op, OpRef):
        return False
    if isinstance(op.callee, Op):
        return True
    return "choice(" not in repr(op.callee.body) and "cell(" not in repr(op.callee.body)


def _stage_repr(op) -> str:
    if isinstance(op, OpRef):
        args = [repr(a) if not isinstance(a, STAGE_TYPES) else _stage_repr(a) for a in op.args]
        args += [f"{k}={v!r}" for k, v, _ in op.kwargs]
        return op.name + (f"({', '.join(args)})" if args else "")
    return kind_of(op)


def _ident_path(label: str) -> str:
    import re

    return re.sub(r"\W", "_", label)


def _precedence_hint(pipe: A.Pipeline, stage: A.BinOp) -> str | None:
    """`x -> conv(64, 3) + x` -> "write `(x -> conv(64, 3)) + x`", quoting the user's text."""
    a, b = pipe.span, stage.left.span
    if not a or not b or a.line != b.end_line:
        return None
    from .diagnostics import _source_text, source_lines

    text = _source_text(a.file, None)
    if text is None:
        return None
    line = source_lines(text)[a.line - 1]
    return (f"`->` binds loosest: write `({line[a.column - 1:b.end_column - 1]}) {stage.op} "
            f"{_source_of(stage.right)}`")


def _describe_type(annotation) -> str:
    """`int | tuple[int, ...] | Literal['same']` -> readable words."""
    import re

    if isinstance(annotation, type):
        return {"int": "an int", "float": "a number", "bool": "true or false", "str": "a string"}.get(
            annotation.__name__, annotation.__name__)
    text = str(annotation).replace("typing.", "")
    text = re.sub(r"Literal\[([^\]]*)\]", r"\1", text)
    return text.replace("NoneType", "none").replace("'", '"')


def _common_prefix(paths: list[str]) -> str:
    if not paths:
        return ""
    parts = [p.split(".") for p in paths]
    out = []
    for comps in zip(*parts):
        if len(set(comps)) != 1:
            break
        out.append(comps[0])
    return ".".join(out)


def _source_of(e) -> str:
    """The text of an expression as written (a choice candidate, for --choose)."""
    from .diagnostics import _source_text

    sp = e.span
    text = _source_text(sp.file, None) if sp else None
    if text is None or sp.line != sp.end_line:
        return type(e).__name__
    line = text.splitlines()[sp.line - 1]
    return line[sp.column - 1: sp.end_column - 1]


@dataclass(frozen=True)
class _Builtin:
    name: str


def _io_attrs(name: str):
    return REGISTRY["input"].Attrs(name=name)


def fmt_types(ts) -> str:
    return ", ".join(str(t) for t in ts)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_tensors(v) -> bool:
    if isinstance(v, Value):
        return True
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, Value) for x in v)


def _arith(op, a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        if op not in ("==", "!="):
            raise TypeError
    if op == "+":
        if isinstance(a, (list, tuple)) != isinstance(b, (list, tuple)):
            raise TypeError
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        if isinstance(a, (list, str)) or isinstance(b, (list, str)):
            raise TypeError
        return a * b
    if op == "/":
        return a / b
    if op == "//":
        return a // b
    if op == "%":
        return a % b
    if op == "**":
        if _is_int(b) and abs(b) > 64 or isinstance(a, (int, float)) and abs(a) > 2**64 and b > 1:
            raise OverflowError
        return a ** b
    if op == "@":
        raise TypeError
    if op in ("==", "!=") and (isinstance(a, Sym) or isinstance(b, Sym)):
        diff = a - b  # symbolic sizes are equal only if provably so
        if not isinstance(diff, int):
            raise NotStatic(f"`{a} {op} {b}` depends on the value of a symbol")
        return (diff == 0) == (op == "==")
    return {"==": lambda: a == b, "!=": lambda: a != b, "<": lambda: a < b, "<=": lambda: a <= b,
            ">": lambda: a > b, ">=": lambda: a >= b}[op]()


STAGE_TYPES = STAGE_TYPES + (RelaxedChoice,)


def elaborate(prog: Program, model: str, args: dict | None = None, dims: dict | None = None,
              decider: Decider | None = None) -> Graph:
    el = Elaborator(prog, dims)
    el.decider = decider
    return el.elaborate(model, args)
