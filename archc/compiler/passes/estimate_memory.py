"""Memory estimation: what a training step (or an inference pass) holds, over time.

The pass replays, on shapes alone, what the generated PyTorch code does: the
forward pass line by line (outputs allocated, variables released after their
last use, ReLU in place where the code generator runs it in place), the loss,
the backward pass node by node in the autograd engine's order (gradients
allocated, passed through, accumulated; saved tensors released as their node
runs), recomputation of checkpointed segments, the optimizer step and
`zero_grad`. Each op says what it saves and what it allocates (`Op.saved`,
`Op.footprint`) for the device's rules (archc.compiler.devices); storages are
counted once, however many tensors view them or nodes save them.

The result is a timeline whose peak is reported with what it is made of, per
node figures, the totals a user asks for (parameters, gradients, optimizer
state, master weights, activations saved for backward), whether the step fits
the device, and the largest batch (and context length) that fits, solved from
the per-sample terms of every point of the timeline.

Assumptions (docs/memory.md has them all): the step is a steady-state one
(optimizer state exists, gradients start as None and end as None:
`zero_grad(set_to_none=True)`); the loss is cross-entropy of the model's first
output against int64 targets (flattened to [N, classes]) unless the model
outputs a scalar named `loss`; the data batch stays referenced by the caller.
Never imports torch.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

from ..devices import DEVICES, Device, lookup, parse_bytes, suggest, with_overrides
from ..diagnostics import CompileError, Diagnostic, Span
from ..dims import Sym
from ..ir import Graph, Node, TensorType
from ..ops import REGISTRY
from ..ops.base import Footprint, MemoryContext, Op, Saved, contiguous_strides, dtype_bytes, is_float
from ..ops.stochastic import ema_pairs

LOW = {"fp16": "float16", "bf16": "bfloat16", "fp16-mixed": "float16", "bf16-mixed": "bfloat16"}
# Ops that combine their input with their own parameter by plain arithmetic, so the result
# takes the wider of the two dtypes (a 16-bit input under autocast becomes float32).
PARAM_PROMOTES = frozenset({"learned_pe", "cls_token"})
CATEGORIES = ("parameters", "buffers", "gradients", "optimizer", "master", "inputs", "saved", "activations",
              "autocast copies", "gradient buffers", "workspace", "checkpoint state")


# -- a faster view of the graph -------------------------------------------------------

def fast_view(graph: Graph) -> Graph:
    """The same graph with node lookups and the topological order cached (a pass reads
    them tens of thousands of times; networkx's views are slow). Reading only."""
    if getattr(graph, "_fast_view", False):
        return graph
    import copy

    view = copy.copy(graph)
    order = graph.nodes()
    by_id = {n.id: n for n in order}
    ins = {n.id: graph.in_values(n.id) for n in order}
    view.node = by_id.__getitem__  # type: ignore[method-assign]
    view.nodes = lambda: list(order)  # type: ignore[method-assign]
    view.in_values = ins.__getitem__  # type: ignore[method-assign]
    view.in_types = lambda nid: [v.type for v in ins[nid]]  # type: ignore[method-assign]
    view._fast_view = True
    return view


# -- settings -------------------------------------------------------------------

@dataclass
class MemorySettings:
    """What a memory estimate assumes: from a `train` plan, or given directly."""

    training: bool = True
    precision: str = "fp32"  # fp32 | fp16 | bf16 | fp16-mixed | bf16-mixed
    optimizer: str = "adamw"  # sgd | adam | adamw
    momentum: float = 0.0
    weight_decay: float = 0.0
    accumulate: int = 1
    checkpoint: list[list[int]] = field(default_factory=list)  # segments: node ids in execution order
    shard: str = "none"  # none | ddp | zero1 | zero2 | zero3
    gpus: int = 1
    device: Device = field(default_factory=lambda: DEVICES["cpu"])
    dims: dict[str, int] = field(default_factory=dict)
    span: Span | None = None  # the plan, for diagnostics

    @property
    def mixed(self) -> bool:
        return self.precision.endswith("-mixed")

    @property
    def autocast(self) -> bool:
        """torch.autocast around forward and loss (mixed precision without ZeRO)."""
        return self.mixed and self.shard in ("none", "ddp")

    @property
    def low(self) -> str | None:
        return LOW.get(self.precision)

    @property
    def zero(self) -> int:
        return {"zero1": 1, "zero2": 2, "zero3": 3}.get(self.shard, 0)


def settings_from_plan(graph: Graph, plan, *, dims: dict[str, int] | None = None, device: str | None = None,
                       training: bool | None = None, attention: str | None = None) -> MemorySettings:
    """Read a plan's directives; bad devices and checkpoint selectors are diagnostics."""
    from ..selectors import select

    graph = fast_view(graph)
    s = MemorySettings()
    diags: list[Diagnostic] = []
    # checkpoint segments: node -> segment key, from the graph's marks (a plan already applied,
    # `@checkpoint`) and from the plan's checkpoint directives
    keys: dict[int, str] = {n.id: str(n.meta["checkpoint"]) for n in graph.nodes() if n.meta.get("checkpoint")}
    if plan is not None:
        s.span = plan.span
        s.training = plan.kind in ("train", "finetune") if training is None else training
        if (d := plan.one("precision")) is not None:
            s.precision = d.args.mode
        if (d := plan.one("optimizer")) is not None:
            s.optimizer, s.momentum, s.weight_decay = d.args.name, d.args.momentum, d.args.weight_decay
        if (d := plan.one("accumulate")) is not None:
            s.accumulate = d.args.steps
        if (d := plan.one("shard")) is not None:
            s.shard, s.gpus = d.args.strategy, d.args.gpus
        s.dims = plan.dims()
        if (d := plan.one("device")) is not None and device is None:
            dev = lookup(d.args.name)
            if dev is None:
                diags.append(Diagnostic("E0504", f"unknown device `{d.args.name}`", _at(d, "name"),
                                        help=suggest(d.args.name)))
            else:
                memory = getattr(d.args, "memory", None)
                try:
                    mem = parse_bytes(memory) if memory is not None else None
                except ValueError as e:
                    diags.append(Diagnostic("E0502", f"invalid `memory` for `device`: {e}", _at(d, "memory")))
                    mem = None
                s.device = with_overrides(dev, mem, getattr(d.args, "attention", None))
        for d in plan.all("checkpoint"):
            fast = _select_simple(graph, d.args.on) if not d.args.exclude else None
            if fast is not None:
                keys.update(fast)
                continue
            try:
                sel = select(graph, d.args.on, d.args.exclude, span=_at(d, "on"), what="checkpoint selector")
            except CompileError as e:
                diags += e.diagnostics
                continue
            for nid in sel.nodes:  # the rule of passes/mark_checkpoints.py
                n = graph.node(nid)
                keys[nid] = next((m for m in sel.modules if n.path == m or n.path.startswith(m + ".")), n.path)
    elif training is not None:
        s.training = training
    if device is not None:
        dev = lookup(device)
        if dev is None:
            diags.append(Diagnostic("E0504", f"unknown device `{device}`", None, help=suggest(device)))
        else:
            s.device = dev
    if attention is not None:
        s.device = with_overrides(s.device, attention=attention)
    if dims:
        bad = [k for k, v in dims.items() if not isinstance(v, int) or v <= 0]
        if bad:
            diags.append(Diagnostic("E0502", f"dimension `{bad[0]}` must be a positive integer, got {dims[bad[0]]}",
                                    s.span))
        s.dims = {**s.dims, **dims}
    if diags:
        raise CompileError(diags)
    s.checkpoint = _runs(graph, keys)
    return s


def _at(d, arg: str):
    at = getattr(d, "at", None)
    return at(arg) if at is not None else d.span


def _runs(graph: Graph, keys: dict[int, str]) -> list[list[int]]:
    """Segments as the code generator makes them: runs of consecutive nodes with one key."""
    segs: list[list[int]] = []
    prev = None
    for n in graph.nodes():
        if n.op in ("input", "output"):
            continue
        k = keys.get(n.id)
        if k is None:
            prev = None
            continue
        if k == prev:
            segs[-1].append(n.id)
        else:
            segs.append([n.id])
        prev = k
    return segs


def _select_simple(graph: Graph, selector: str) -> dict[int, str] | None:
    """Segment keys for a lone `block:NAME` or `op:NAME` selector, found in one pass (selectors.select
    gives the same answer, and the diagnostics when nothing matches: it is called then)."""
    term = selector.strip()
    if "," in term or not term.startswith(("block:", "op:")):
        return None
    keys: dict[int, str] = {}
    if term.startswith("op:"):
        keys = {n.id: n.path for n in graph.nodes() if n.op == term[3:]}
        return keys or None
    block = term[6:]
    for n in graph.nodes():
        if n.op in ("input", "output"):
            continue
        for site in n.calls:
            if site.block == block:
                keys[n.id] = site.path
                break
    return keys or None


# -- the report -------------------------------------------------------------------

@dataclass
class NodeMemory:
    path: str
    op: str
    block: str  # the innermost block instance ("" at the top level)
    params: int = 0
    gradients: int = 0
    optimizer: int = 0
    saved: int = 0  # activations this node keeps for backward (first keeper counts a shared storage)
    outputs: int = 0  # bytes of the tensors it produces (new storage only)
    workspace: int = 0  # its largest transient

    @property
    def total(self) -> int:
        return self.params + self.gradients + self.optimizer + self.saved


@dataclass
class MemoryReport:
    model: str
    mode: str  # "training" | "inference"
    device: Device
    settings: MemorySettings
    dims: dict[str, int]
    parameters: int = 0
    buffers: int = 0
    gradients: int = 0
    optimizer: int = 0
    master: int = 0
    activations: int = 0  # saved for backward, at the end of the forward pass (and loss)
    inputs: int = 0
    peak: int = 0
    peak_at: str = ""
    peak_parts: dict[str, int] = field(default_factory=dict)
    nodes: list[NodeMemory] = field(default_factory=list)
    phases: list[tuple[str, int]] = field(default_factory=list)  # (moment, live bytes) at phase ends
    kv_cache: int = 0  # bytes of the key/value cache for decoding a context of the plan's length
    params_count: int = 0
    trainable_count: int = 0
    largest_layer: int = 0  # parameters of the largest module (ZeRO-3 gathers one at a time)
    per_sample: int | None = None  # bytes the peak grows by per extra sample (at the peak's moment)
    fixed: int | None = None  # the peak's part that does not grow with the batch
    batch_symbol: str | None = None
    max_batch: int | None = None
    context_symbol: str | None = None
    max_context: int | None = None
    context_cap: int | None = None  # the model's own limit on the context (position tables)
    assumptions: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def model_state(self) -> int:
        return self.parameters + self.buffers + self.gradients + self.optimizer + self.master

    @property
    def budget(self) -> int | None:
        return self.device.usable

    @property
    def fits(self) -> bool | None:
        b = self.budget
        return None if b is None else self.peak <= b

    def blocks(self) -> list[tuple[str, NodeMemory]]:
        """Per block instance (innermost), summed; largest first."""
        acc: dict[str, NodeMemory] = {}
        for n in self.nodes:
            key = n.block or "(top level)"
            b = acc.setdefault(key, NodeMemory(key, "block", key))
            b.params += n.params
            b.gradients += n.gradients
            b.optimizer += n.optimizer
            b.saved += n.saved
            b.outputs += n.outputs
            b.workspace = max(b.workspace, n.workspace)
        return sorted(acc.items(), key=lambda kv: -kv[1].total)

    def to_json(self) -> dict:
        s = self.settings
        return {
            "model": self.model,
            "mode": self.mode,
            "device": {"name": self.device.name, "memory": self.device.memory, "usable": self.budget,
                       "context_bytes": self.device.context_bytes},
            "precision": s.precision, "optimizer": s.optimizer if self.mode == "training" else None,
            "shard": s.shard, "gpus": s.gpus, "accumulate": s.accumulate,
            "checkpoint_segments": len(s.checkpoint), "dims": self.dims,
            "totals": {"parameters": self.parameters, "buffers": self.buffers, "gradients": self.gradients,
                       "optimizer": self.optimizer, "master": self.master, "activations": self.activations,
                       "inputs": self.inputs, "model_state": self.model_state, "peak": self.peak,
                       "kv_cache": self.kv_cache},
            "peak": {"at": self.peak_at, "bytes": self.peak, "parts": self.peak_parts},
            "fits": self.fits,
            "per_sample": self.per_sample, "fixed": self.fixed,
            "max_batch": {"symbol": self.batch_symbol, "value": self.max_batch},
            "max_context": {"symbol": self.context_symbol, "value": self.max_context, "cap": self.context_cap},
            "parameters_count": self.params_count, "trainable_count": self.trainable_count,
            "largest_layer": self.largest_layer,
            "phases": [{"at": m, "bytes": b} for m, b in self.phases],
            "nodes": [{"path": n.path, "op": n.op, "block": n.block, "params": n.params, "gradients": n.gradients,
                       "optimizer": n.optimizer, "saved": n.saved, "outputs": n.outputs, "workspace": n.workspace,
                       "total": n.total} for n in self.nodes],
            "assumptions": self.assumptions,
        }


# -- entry points ------------------------------------------------------------------

def estimate_memory(graph: Graph, plan=None, *, settings: MemorySettings | None = None,
                    dims: dict[str, int] | None = None, device: str | None = None, training: bool | None = None,
                    attention: str | None = None, solve: bool = True) -> MemoryReport:
    """Estimate a plan's memory (or, without a plan, fp32 training on the CPU).

    `graph` may keep symbolic dimensions: `dims` (and the plan's) bind them, and the
    batch and context solutions vary them."""
    t0 = time.perf_counter()
    graph = fast_view(graph)
    s = settings or settings_from_plan(graph, plan, dims=dims, device=device, training=training,
                                       attention=attention)
    if settings is not None and dims:
        s = replace(s, dims={**s.dims, **dims})
    model = _Model(graph, s)
    rep = model.run(s.dims, detail=True)
    if solve:
        model.solve(rep)
    rep.seconds = time.perf_counter() - t0
    return rep


# -- the model of one graph ----------------------------------------------------------

class _Model:
    """Everything about a graph that does not depend on the dims, computed once."""

    def __init__(self, graph: Graph, s: MemorySettings):
        from ..lower.torch import _may_overwrite  # the code generator's own rule (imports no torch)

        graph = fast_view(graph)
        self.g, self.s = graph, s
        self.nodes = [n for n in graph.nodes()]
        self.order = {n.id: i for i, n in enumerate(self.nodes)}
        self.ins = {n.id: graph.in_values(n.id) for n in self.nodes}
        self.users: dict[tuple[int, int], list[int]] = {}
        for n in self.nodes:
            for v in self.ins[n.id]:
                self.users.setdefault((v.node, v.port), []).append(n.id)
        outs = [self.ins[o][0] for o in graph.outputs]
        self.keep = {(v.node, v.port) for v in outs}
        self.last_use: dict[tuple[int, int], int] = {}
        for key, us in self.users.items():
            self.last_use[key] = max(self.order[u] for u in us if graph.node(u).op != "output") \
                if any(graph.node(u).op != "output" for u in us) else -1
        self.node_by_id = {n.id: n for n in self.nodes}
        self.in_keys = {n.id: [(v.node, v.port) for v in self.ins[n.id]] for n in self.nodes}
        self.static_key = {n.id: (n.op, repr(n.attrs)) for n in self.nodes}
        self.segment_of: dict[int, int] = {}
        for k, seg in enumerate(s.checkpoint):
            for nid in seg:
                self.segment_of.setdefault(nid, k)
        # in place as the code generator runs it: never on a value from outside the segment
        self.inplace = {n.id for n in self.nodes
                        if getattr(REGISTRY.get(n.op), "inplace_template", None) and len(self.ins[n.id]) == 1
                        and _may_overwrite(graph, self.ins[n.id][0], self.keep)
                        and (n.id not in self.segment_of
                             or self.segment_of.get(self.ins[n.id][0].node) == self.segment_of[n.id])}
        self._params()
        self._loss()
        self._cache: dict = {}
        autocast = s.autocast
        self.static = {}
        self.moments = {}
        for n in self.nodes:
            if n.op in ("input", "output"):
                continue
            keys = self.node_params.get(n.id, {})
            self.static[n.id] = (self.static_key[n.id], keys, any(self.trainable.get(k, False) for k in keys.values()),
                                 autocast and (n.op in s.device.autocast_low or n.op in s.device.autocast_weights),
                                 [(name, key, bool(self.trainable.get(key)), self.param_numel.get(key, 0))
                                  for name, key in keys.items()],
                                 self.segment_of.get(n.id), n.id in self.inplace)
            self.moments[n.id] = ("forward: " + n.path, "backward: " + n.path, "recompute: " + n.path)

    # parameters: storage keys, shapes, owners, trainability (independent of dims)
    def _params(self) -> None:
        g = self.g
        self.node_params: dict[int, dict[str, str]] = {}  # nid -> param name -> storage key
        self.param_shape: dict[str, tuple] = {}
        self.param_owner: dict[str, Node] = {}
        self.param_order: list[str] = []
        self.buffer_shape: dict[str, tuple] = {}
        for n in self.nodes:
            if n.op in ("input", "output"):
                continue
            op = REGISTRY[n.op]
            ins = g.in_types(n.id)
            mine: dict[str, str] = {}
            for name, shape in op.params(n.attrs, ins).items():
                key = f"{n.path}.{name}" if name else n.path
                mine[name] = key
                if key not in self.param_shape and not n.shared:
                    self.param_shape[key] = tuple(shape)
                    self.param_owner[key] = n
                    self.param_order.append(key)
            for name, (target, shape) in op.tied(n.attrs, ins).items():
                mine[name] = target
            if not n.shared:
                for name, shape in op.buffers(n.attrs, ins).items():
                    self.buffer_shape[f"{n.path}.{name}"] = tuple(shape)
            self.node_params[n.id] = mine
        # an `ema` target is frozen by the runtime (archc.runtime.ema.init) and moved by averaging
        targets = tuple(t for t, _, _ in ema_pairs(g))
        self.trainable = {k: not (self.param_owner[k].meta.get("frozen", False) or
                                  any(k == t or k.startswith(t + ".") for t in targets))
                          for k in self.param_shape}
        # parameters the loss's backward never reaches (a pooler beside the first output) get no
        # gradient, and so no optimizer state either
        if g.outputs:
            import networkx as nx

            out = g.outputs[0]
            reach = nx.ancestors(g.g, out) | {out}
            used = {key for n in self.nodes if n.id in reach for key in self.node_params.get(n.id, {}).values()}
        else:
            used = set(self.trainable)
        # (autograd still keeps what their ops save: it cannot know the loss ahead)
        self.gets_grad = {k: v and k in used for k, v in self.trainable.items()}
        self.param_numel = {k: math.prod(sh) for k, sh in self.param_shape.items()}
        # ties: the tied linear's own copy of the key points at the owner's storage
        for n in self.nodes:
            for name, key in self.node_params.get(n.id, {}).items():
                if key not in self.param_shape:  # tied to a parameter created later (not normally)
                    self.param_shape[key] = ()
                    self.trainable[key] = self.gets_grad[key] = False

    def _loss(self) -> None:
        g = self.g
        self.out_values = [self.ins[o][0] for o in g.outputs]
        first = self.out_values[0] if self.out_values else None
        # a model whose first output is a scalar computes its own loss (an objective op)
        self.model_loss = bool(first is not None and first.type.rank == 0 and is_float(first.type.dtype))

    # -- per-dims preparation ---------------------------------------------------------------------
    def _concrete(self, dims: dict[str, int]) -> dict:
        """Concrete types, dtypes, strides, saved lists and footprints for one binding of the
        dims, boiled down to one `_Plan` of plain numbers per node."""
        s = self.s
        low = s.low
        pure_low = low is not None and not s.autocast
        param_dtype = low if pure_low else "float32"
        memo: dict = {}

        def sub(t: TensorType) -> TensorType:
            hit = memo.get(t)
            if hit is not None:
                return hit
            shape = tuple(d.subs(dims) if isinstance(d, Sym) else d for d in t.shape)
            for d in shape:
                if not isinstance(d, int):
                    raise CompileError(Diagnostic(
                        "E0213", f"dimension `{d}` has no value: memory needs every size known", s.span,
                        help="bind it with `dims(...)` in the plan or `--dim " + str(d) + "=N`"))
                if d < 0:
                    raise CompileError(Diagnostic("E0305", f"a tensor would have a negative size {d}", s.span))
            memo[t] = out = TensorType(shape, t.dtype)
            return out

        def nbytes(t: TensorType) -> int:
            n = dtype_bytes(t.dtype)
            for d in t.shape:
                n *= d
            return n

        vt: dict[tuple[int, int], TensorType] = {}  # value -> concrete type (dtype as run)
        rg: dict[tuple[int, int], bool] = {}
        strides: dict[tuple[int, int], tuple] = {}
        plans: list[_Plan] = []
        by_id: dict[int, _Plan] = {}
        pb = dtype_bytes(param_dtype)
        autocast, training, fp32_ops = s.autocast, s.training, s.device.autocast_fp32
        cache, static = self._cache, self.static
        cstrides: dict = {}

        def contig(shape):
            st = cstrides.get(shape)
            if st is None:
                st = cstrides[shape] = contiguous_strides(shape)
            return st

        for n in self.nodes:
            op_name = n.op
            if op_name == "input":
                t = sub(n.outputs[0])
                dt = low if (pure_low and is_float(t.dtype)) else t.dtype
                vt[(n.id, 0)] = TensorType(t.shape, dt)
                rg[(n.id, 0)] = False
                strides[(n.id, 0)] = contig(t.shape)
                continue
            if op_name == "output":
                continue
            st_key, keys, weights_grad, cast_w, params_static, seg, inplace = static[n.id]
            keys_in = self.in_keys[n.id]
            in_t = [vt[k] for k in keys_in]
            in_rg = [rg[k] for k in keys_in]
            op_st = [strides[k] for k in keys_in]
            casts = None
            out_dtype = None
            if autocast:
                if cast_w and op_name not in s.device.autocast_weights:  # (gru: only its weights are cast)
                    casts = [low if is_float(t.dtype) and t.dtype != low else None for t in in_t]
                    out_dtype = low
                elif op_name in fp32_ops or (in_t and f"{op_name}/{len(in_t[0].shape)}" in fp32_ops):
                    # ("max_pool/5": by input rank; CPU autocast runs 3-D pooling in float32)
                    if op_name != "softmax":  # layer/group/RMS norm, 3-D pools: inputs cast to float32
                        casts = [("float32" if is_float(t.dtype) and t.dtype != "float32" else None) for t in in_t]
                    out_dtype = "float32"
            if out_dtype is None:
                fl = [t.dtype for t in in_t if is_float(t.dtype)]
                if op_name in PARAM_PROMOTES and keys:  # x + table, cat([token, x]): type promotion
                    fl.append(param_dtype)
                if op_name == "embedding" or not fl:
                    out_dtype = param_dtype
                else:
                    out_dtype = "float32" if "float32" in fl else fl[0]
            if casts and any(casts):
                op_in = [TensorType(t.shape, c) if c else t for t, c in zip(in_t, casts)]
                op_st = [contig(t.shape) if c else st for t, c, st in zip(in_t, casts, op_st)]
            else:
                op_in = in_t
                casts = None
            outs = [TensorType(sub(t).shape, out_dtype if is_float(t.dtype) else t.dtype) for t in n.outputs]
            cast_in = tuple(c is not None for c in casts) if casts else ()
            ck = (st_key, tuple(op_in), tuple(outs), tuple(in_rg), weights_grad, inplace, tuple(op_st), training,
                  cast_in)
            hit = cache.get(ck)
            if hit is None:
                wdt = low if cast_w else param_dtype
                pinfo = {name: (self.param_shape[key], wdt) for name, key in keys.items()}
                ctx = MemoryContext(s.device, op_in, outs, in_rg, weights_grad, training, op_st, inplace, pinfo,
                                    list(cast_in), bool(cast_w))
                op = REGISTRY[op_name]
                if type(op).saved is Op.saved and training:
                    self._note(f"`{op_name}` does not say what it keeps for backward: assumed all its inputs")
                try:
                    fp = op.footprint(n.attrs, op_in, outs, ctx)
                    saved = list(op.saved(n.attrs, op_in, outs, ctx)) if training else []
                except Exception as e:  # a user op that cannot say: keep its inputs
                    fp, saved = Footprint(), [Saved.input(i) for i in range(len(op_in))]
                    self._note(f"`{op_name}` could not describe its memory ({e}); assumed it keeps its inputs")
                out_bytes = []
                for j, t in enumerate(outs):
                    nb = dtype_bytes(t.dtype)
                    for d in t.shape:
                        nb *= d
                    out_bytes.append(0 if j in fp.views else nb)
                in_bytes, prod_bytes = [], []
                for t, u in zip(op_in, in_t):
                    nb = dtype_bytes(t.dtype)
                    for d in t.shape:
                        nb *= d
                    in_bytes.append(nb)
                    prod_bytes.append(nb * dtype_bytes(u.dtype) // dtype_bytes(t.dtype))
                sv = [(0, x.index) if x.kind == "input" else (1, x.index) if x.kind == "output"
                      else (2, x.name) if x.kind == "param" else (3, int(x.bytes)) for x in saved]
                out_st = [tuple(fp.strides[j]) if j in fp.strides else contig(t.shape) for j, t in enumerate(outs)]
                hit = cache[ck] = (fp, sv, out_bytes, in_bytes, prod_bytes, out_st)
            fp, sv, out_bytes, in_bytes, prod_bytes, out_st = hit
            out_rg = fp.differentiable and training and (any(in_rg) or weights_grad)
            nid = n.id
            for j, t in enumerate(outs):
                key = (nid, j)
                vt[key] = t
                rg[key] = out_rg and is_float(t.dtype)
                strides[key] = out_st[j]
            pl = _Plan()
            pl.nid, pl.node, pl.ins = nid, n, keys_in
            pl.casts = [c is not None for c in casts] if casts else [False] * len(keys_in)
            pl.in_bytes, pl.prod_bytes, pl.out_bytes = in_bytes, prod_bytes, out_bytes
            pl.out_types, pl.op_in = outs, op_in
            pl.views, pl.saved = fp.views, sv
            pl.fwd, pl.bwd = int(fp.fwd_peak), int(fp.bwd_peak)
            pl.grad_views = fp.grad_views
            pl.frees_saved = fp.frees_saved
            pl.phases = [(tuple(ph.grads), int(ph.temp), tuple((int(b), u) for b, u in ph.keep), ph.inputs,
                          int(ph.workspace), tuple(ph.frees)) for ph in fp.phases]
            pl.in_rg, pl.out_rg = in_rg, out_rg
            pl.in_grad = in_rg
            pl.cast_w = cast_w
            wb = dtype_bytes(low if cast_w else param_dtype)
            pl.params = [(name, key, tr, numel * wb, numel * pb) for name, key, tr, numel in params_static]
            pl.seg = seg
            pl.fwd_at, pl.bwd_at, pl.rec_at = self.moments[nid]
            plans.append(pl)
            by_id[nid] = pl
        return {"vt": vt, "rg": rg, "plans": plans, "by_id": by_id, "param_dtype": param_dtype}

    _notes: list[str]

    def _note(self, text: str) -> None:
        notes = self.__dict__.setdefault("_notes", [])
        if text not in notes:
            notes.append(text)

    # -- one simulated step ------------------------------------------------------------------------
    def run(self, dims: dict[str, int], detail: bool = False) -> MemoryReport:
        c = self._concrete(dims)
        sim = _Sim(self, c, detail)
        return sim.report(dims)

    # -- the largest batch and context that fit ---------------------------------------------------
    def solve(self, rep: MemoryReport) -> None:
        """The largest batch (and context) that fit, solved from the timeline: every point of
        it is linear in the batch (quadratic in the context), so two replays give each
        point's fixed and per-sample bytes, and the answer is the tightest bound over all
        points. With allocator rounding the bound is checked by a replay when it is close."""
        s = self.s
        bsym, tsym = self._symbols()
        rep.batch_symbol, rep.context_symbol = bsym, tsym
        rep.context_cap = self._context_cap()
        budget = rep.budget
        if bsym is None:
            return
        trace0 = rep.__dict__["_trace"]
        b0 = s.dims.get(bsym)
        if b0 is None:
            return
        try:
            t1 = self.run({**s.dims, bsym: b0 + 1}).__dict__["_trace"]
        except CompileError:
            return
        if len(t1) != len(trace0):
            return
        slopes = [y - x for x, y in zip(trace0, t1)]
        base = [x - b0 * k for x, k in zip(trace0, slopes)]
        i = max(range(len(trace0)), key=trace0.__getitem__)
        rep.per_sample, rep.fixed = slopes[i], base[i]
        if budget is None:
            return
        best = None
        for a, k in zip(base, slopes):
            if k > 0:
                lim = (budget - a) // k
                best = lim if best is None else min(best, lim)
            elif a > budget:
                best = 0
        if best is not None:
            best = max(0, int(best))
            rep.max_batch = self._verify(best, budget, lambda v: {bsym: v}, base, slopes) if best else 0
        if tsym is None or tsym not in s.dims:
            return
        t0 = s.dims[tsym]
        ts = (t0, t0 // 2, t0 + t0 // 2) if t0 >= 16 else (t0, t0 + 8, t0 + 16)
        traces = [trace0]
        for t in ts[1:]:
            try:
                traces.append(self.run({**s.dims, tsym: t}).__dict__["_trace"])
            except CompileError:
                return
        if len({len(x) for x in traces}) != 1:
            return
        (x1, x2, x3) = ts
        d = (x1 - x2) * (x1 - x3) * (x2 - x3)
        best = None
        coef = []
        sqrt = math.sqrt
        for y1, y2, y3 in zip(*traces):
            # the quadratic a0 + b1 t + c2 t^2 through (x1, y1), (x2, y2), (x3, y3)
            c2 = (x3 * (y2 - y1) + x2 * (y1 - y3) + x1 * (y3 - y2)) / d
            b1 = (x3 * x3 * (y1 - y2) + x2 * x2 * (y3 - y1) + x1 * x1 * (y2 - y3)) / d
            a0 = y1 - b1 * x1 - c2 * x1 * x1
            coef.append((a0, b1, c2))
            if c2 > 1e-9:
                disc = b1 * b1 - 4 * c2 * (a0 - budget)
                lim = (-b1 + sqrt(disc)) / (2 * c2) if disc >= 0 else 0
            elif b1 > 1e-9:
                lim = (budget - a0) / b1
            else:
                if a0 > budget:
                    best = 0
                continue
            if best is None or lim < best:
                best = lim
        if best is not None:
            best = math.floor(best)
        if best is not None:
            best = max(0, best)
            if best and (rep.context_cap is None or best <= rep.context_cap):
                best = self._verify(best, budget, lambda v: {tsym: v},
                                    [a for a, _, _ in coef], [(b, c) for _, b, c in coef])
            if rep.context_cap is not None:
                best = min(best, rep.context_cap)
            rep.max_context = best

    def _verify(self, guess: int, budget: int, bind, base, slopes) -> int:
        """Rounding makes the timeline only nearly linear: when the solved limit is within the
        rounding's reach of the budget, settle it by replaying."""
        s = self.s
        slack = s.device.alloc_round * 4096 if s.device.alloc_round > 1 else 0

        def predicted(v):
            out = []
            for a, k in zip(base, slopes):
                out.append(a + (k[0] * v + k[1] * v * v if isinstance(k, tuple) else k * v))
            return max(out)

        if not slack or (budget - predicted(guess) > slack and predicted(guess + 1) - budget > slack):
            return guess
        v = guess
        for _ in range(8):
            if self.run({**s.dims, **bind(v)}).peak <= budget:
                if self.run({**s.dims, **bind(v + 1)}).peak > budget:
                    return v
                v += 1
            else:
                v -= 1
                if v < 1:
                    return 0
        return v

    def _symbols(self) -> tuple[str | None, str | None]:
        """The batch symbol (the first input's first axis) and, for sequence inputs, the context
        symbol (the second axis of a token [B, T] or sequence [B, T, D] input)."""
        bsym = tsym = None
        for i in self.g.inputs:
            t = self.g.node(i).outputs[0]
            if t.rank and isinstance(t.shape[0], Sym) and len(t.shape[0].symbols()) == 1 and bsym is None:
                bsym = next(iter(t.shape[0].symbols()))
            if ((t.rank == 2 and not is_float(t.dtype)) or t.rank == 3) and isinstance(t.shape[1], Sym) \
                    and len(t.shape[1].symbols()) == 1 and tsym is None:
                tsym = next(iter(t.shape[1].symbols()))
        if bsym is None:  # a concrete graph: dims bound at elaboration
            return None, None
        return bsym, tsym

    def _context_cap(self) -> int | None:
        caps = [n.attrs.max_len for n in self.nodes if n.op in ("learned_pe", "sinusoidal_pe")]
        return min(caps) if caps else None


# -- the simulation ------------------------------------------------------------------------------

class _Plan:
    """One node's memory behaviour for one binding of the dims, as plain numbers."""

    __slots__ = ("nid", "node", "ins", "casts", "in_bytes", "prod_bytes", "out_bytes", "out_types", "op_in", "views",
                 "saved", "fwd", "bwd", "grad_views", "frees_saved", "phases", "in_rg", "out_rg", "in_grad", "cast_w", "params", "seg",
                 "fwd_at", "bwd_at", "rec_at")


class _Live:
    """Live storages with reference counts; per-category totals; the peak and its make-up."""

    def __init__(self, device: Device):
        self.dev = device
        self.size: dict[int, int] = {}
        self.cat: dict[int, str] = {}
        self.refs: dict[int, int] = {}
        self.saves: dict[int, int] = {}
        self.by: dict[str, int] = {c: 0 for c in CATEGORIES}
        self.total = 0
        self.peak = -1
        self.peak_at = ""
        self.peak_parts: dict[str, int] = {}
        self.trace: list[int] = []
        self.tag = ""
        self._next = 0
        self._rounds = device.alloc_round > 1

    def alloc(self, nbytes: int, cat: str) -> int:
        sid = self._next
        self._next += 1
        n = self.dev.round(nbytes) if self._rounds else nbytes
        self.size[sid], self.cat[sid], self.refs[sid], self.saves[sid] = n, cat, 1, 0
        self.by[cat] += n
        self.total += n
        return sid

    def ref(self, sid: int) -> None:
        self.refs[sid] += 1

    def unref(self, sid: int) -> None:
        self.refs[sid] -= 1
        if self.refs[sid] == 0:
            n = self.size.pop(sid)
            self.by["saved" if self.saves[sid] else self.cat[sid]] -= n
            self.total -= n
            del self.cat[sid], self.refs[sid], self.saves[sid]

    def save(self, sid: int) -> None:
        """A node keeps `sid` for backward (counts as a reference)."""
        self.refs[sid] += 1
        if self.saves[sid] == 0:
            self.by[self.cat[sid]] -= self.size[sid]
            self.by["saved"] += self.size[sid]
        self.saves[sid] += 1

    def unsave(self, sid: int) -> None:
        self.saves[sid] -= 1
        if self.saves[sid] == 0:
            self.by["saved"] -= self.size[sid]
            self.by[self.cat[sid]] += self.size[sid]
        self.unref(sid)

    def recat(self, sid: int, cat: str) -> None:
        if self.saves[sid] == 0:
            self.by[self.cat[sid]] -= self.size[sid]
            self.by[cat] += self.size[sid]
        self.cat[sid] = cat

    def check(self, moment: str, extra: int = 0) -> None:
        if extra:
            extra = self.dev.round(extra)
        now = self.total + extra
        self.trace.append(now)
        if now > self.peak:
            self.peak, self.peak_at = now, moment + self.tag
            parts = {k: v for k, v in self.by.items() if v}
            if extra:
                parts["workspace"] = parts.get("workspace", 0) + extra
            self.peak_parts = parts


class _Sim:
    """One steady-state training step (or one inference pass) over concrete sizes."""

    def __init__(self, m: _Model, c: dict, detail: bool):
        self.m, self.c, self.s = m, c, m.s
        self.live = _Live(m.s.device)
        self.detail = detail
        self.node_mem: dict[int, NodeMemory] = {}
        self.first_saver: dict[int, int] = {}  # storage -> node that kept it first
        self.phases: list[tuple[str, int]] = []
        self.activations = 0
        self.attributing = False
        self.run()

    # helpers
    def nbytes(self, t: TensorType) -> int:
        n = 1
        for d in t.shape:
            n *= d
        return n * dtype_bytes(t.dtype)

    def nm(self, n: Node) -> NodeMemory:
        r = self.node_mem.get(n.id)
        if r is None:
            block = n.calls[-1].path if n.calls else ""
            r = self.node_mem[n.id] = NodeMemory(n.path, n.op, block)
        return r

    # -- model state ----------------------------------------------------------------------------
    def model_state(self) -> None:
        m, s, L = self.m, self.s, self.live
        pdt = self.c["param_dtype"]
        pb = dtype_bytes(pdt)
        self.param_sid: dict[str, int] = {}
        self.grad_sid: dict[str, int] = {}
        P = sum(math.prod(sh) for sh in m.param_shape.values())
        Pt = sum(math.prod(sh) for k, sh in m.param_shape.items() if m.gets_grad[k])
        self.P, self.Pt = P, Pt
        # the largest layer: a module's own parameters (what ZeRO-3 gathers at once)
        layers: dict[str, int] = {}
        for key, sh in m.param_shape.items():
            owner = m.param_owner[key]
            sub = key[len(owner.path) + 1:].rpartition(".")[0] if key.startswith(owner.path + ".") else ""
            mod = owner.path + ("." + sub if sub else "")
            layers[mod] = layers.get(mod, 0) + math.prod(sh)
        self.largest = max(layers.values(), default=0)
        z = s.zero
        N = s.gpus if z else 1
        opt_per = {"adam": 8, "adamw": 8, "sgd": 4 if s.momentum else 0}[s.optimizer] if s.training else 0
        if s.training and not s.mixed and pdt != "float32":
            opt_per = opt_per // 4 * pb  # optimizer state in the parameters' dtype
        self.state = {"parameters": 0, "buffers": 0, "gradients": 0, "optimizer": 0, "master": 0}
        for key, sh in m.param_shape.items():
            owner = m.param_owner[key]
            self.nm(owner).params += math.prod(sh) * pb
        if z:
            mixed = s.mixed
            f_b, m_b = (4, 4) if mixed else (0, 0)
            g_b = pb
            # DeepSpeed's layout (its estimate_zero{2,3}_model_states_mem_needs): 16-bit parameters
            # and gradients, and per GPU a 1/N partition of the float32 gradients, the float32
            # master weights and the optimizer state; ZeRO-3 partitions the parameters too and
            # gathers the largest layer (twice over) to compute. Partitions are taken whole and
            # floored once, as DeepSpeed's int(18 * P / N).
            opt, master = Pt * opt_per // N, Pt * m_b // N
            if not s.training:
                params, grads, opt, master = P * pb, 0, 0, 0
            elif z == 1:
                params = P * pb
                grads = Pt * g_b + (Pt * (f_b + m_b + opt_per) // N - opt - master)
            elif z == 2:
                params = P * pb
                grads = Pt * (g_b + f_b + m_b + opt_per) // N - opt - master
            else:
                part = (P * pb + Pt * (f_b + m_b + opt_per)) // N
                params = P * pb // N + 2 * pb * self.largest
                grads = part - P * pb // N - opt - master
            for cat, v in (("parameters", params), ("gradients", grads), ("optimizer", opt), ("master", master)):
                if v:
                    L.alloc(v, cat)
                self.state[cat] = v
            for key in m.param_shape:
                self.param_sid[key] = -1  # partitioned: no per-parameter storage modelled
            self._zero_params = True
        else:
            self._zero_params = False
            for key in m.param_order:
                self.param_sid[key] = L.alloc(math.prod(m.param_shape[key]) * pb, "parameters")
                self.state["parameters"] += L.size[self.param_sid[key]]
            self.opt_sids = []
            if s.training and opt_per:
                for key in m.param_order:
                    if not m.gets_grad[key]:
                        continue
                    n = math.prod(m.param_shape[key])
                    per_state = pb  # exp_avg, exp_avg_sq, momentum_buffer: zeros_like(param)
                    k = 2 if s.optimizer in ("adam", "adamw") else 1
                    for _ in range(k):
                        self.opt_sids.append(L.alloc(n * per_state, "optimizer"))
                    if s.optimizer in ("adam", "adamw") and s.device.kind == "cpu":
                        self.opt_sids.append(L.alloc(4, "optimizer"))  # the step count (a float32 tensor)
                for sid in self.opt_sids:
                    self.state["optimizer"] += L.size[sid]
            if s.training and s.shard == "ddp":
                v = Pt * pb  # DDP's gradient buckets (gradient_as_bucket_view=False)
                L.alloc(v, "gradients")
                self.state["gradients"] += v
        for key, sh in m.buffer_shape.items():
            leaf = key.rpartition(".")[2]
            dt = "int64" if leaf == "num_batches_tracked" else pdt
            n = L.alloc(math.prod(sh) * dtype_bytes(dt), "buffers")
            self.state["buffers"] += L.size[n]
        if s.training:
            for key, sh in m.param_shape.items():
                if m.gets_grad[key]:
                    owner = m.param_owner[key]
                    nbytes = math.prod(sh)
                    self.nm(owner).gradients += nbytes * pb
                    self.nm(owner).optimizer += nbytes * (opt_per + (4 if s.mixed and z else 0))
        if s.device.kind == "cuda" and s.device.workspace_bytes:
            L.alloc(s.device.workspace_bytes, "workspace")

    # -- forward ----------------------------------------------------------------------------------
    def run(self) -> None:
        m, s, L, c = self.m, self.s, self.live, self.c
        self.model_state()
        self.vals: dict[tuple[int, int], int] = {}
        self.inputs_bytes = 0
        self.input_sids: dict[tuple[int, int], int] = {}
        for i in m.g.inputs:
            t = c["vt"][(i, 0)]
            sid = self.input_sids[(i, 0)] = L.alloc(self.nbytes(t), "inputs")  # the caller holds the batch
            self.inputs_bytes += L.size[sid]
        self.targets = None
        if s.training and not m.model_loss and m.out_values:
            lt = c["vt"][(m.out_values[0].node, m.out_values[0].port)]
            n = 1
            for d in lt.shape[:-1]:
                n *= d
            self.targets = L.alloc(n * 8, "inputs")  # int64 class indices
            self.inputs_bytes += L.size[self.targets]
        L.check("start of step")
        self.saved_by: dict[int, list[int]] = {}
        self.saved_at: dict[int, dict[int, int]] = {}  # phased backward: saved entry -> storage
        self.seg_inputs: dict[int, list[int]] = {}
        self.seg_keys: dict[int, list] = {}
        self.seg_state: dict[int, int] = {}
        self._recomp_vals: set = set()
        if not s.training:
            self.forward(grad=False)
            self.phases.append(("end of forward", L.total))
            return
        steps = max(1, s.accumulate)
        for mb in range(1, min(steps, 2) + 1):
            L.tag = "" if steps == 1 else f" (micro-batch {mb} of {steps})"
            self.attributing = mb == 1
            self.forward(grad=True)
            self.attributing = False
            if mb == 1:
                self.activations = L.by["saved"]
            self.phases.append(("end of forward" + L.tag, L.total))
            self.backward()
            self.phases.append(("end of backward" + L.tag, L.total))
        L.tag = ""
        self.optimizer_step()
        self.phases.append(("after optimizer step", L.total))

    def weights(self, pl: _Plan, grad: bool, tmp: list[int]) -> dict[str, int]:
        """The storages an op uses for its parameters: the parameters, or autocast's copies
        (cached for the autocast region when the parameter is trainable; a frozen one is
        cast at every use)."""
        L = self.live
        out: dict[str, int] = {}
        for name, key, trainable, op_bytes, _ in pl.params:
            if not pl.cast_w:
                sid = self.param_sid.get(key)
                if sid is not None and sid >= 0:
                    out[name] = sid
                continue
            if trainable and grad:
                sid = self.cast_cache.get(key)
                if sid is None:
                    sid = self.cast_cache[key] = L.alloc(op_bytes, "autocast copies")
            else:
                sid = L.alloc(op_bytes, "autocast copies")
                tmp.append(sid)
            out[name] = sid
        return out

    def forward(self, grad: bool, only: list[int] | None = None, stop_after: int | None = None) -> None:
        """The forward pass (or, with `only`, a segment's recomputation up to `stop_after`)."""
        m, L, c = self.m, self.live, self.c
        by_id = c["by_id"]
        recompute = only is not None
        if not recompute:
            self.cast_cache: dict[str, int] = {}
            plans = c["plans"]
            for key, sid in self.input_sids.items():  # the forward's own variables for the inputs
                self.vals[key] = sid
                L.ref(sid)
            last_use, keep = m.last_use, m.keep
        else:
            plans = [by_id[i] for i in only if i in by_id]
            last_use = {}
            for k, pl in enumerate(plans):
                for key in pl.ins:
                    last_use[key] = k
            keep = set()
        vals = self.vals
        attributing = self.attributing and not recompute
        detail = self.detail and not recompute
        for k, pl in enumerate(plans):
            seg = pl.seg if grad else None
            if seg is not None and not recompute and seg not in self.seg_inputs:
                self.enter_segment(seg)
            tmp: list[int] = []
            ins = []
            for i, key in enumerate(pl.ins):
                sid = vals[key]
                if pl.casts[i]:
                    sid = L.alloc(pl.in_bytes[i], "activations")
                    tmp.append(sid)
                ins.append(sid)
            outs = []
            views = pl.views
            for j, nb in enumerate(pl.out_bytes):
                if j in views:
                    i = views[j]
                    if i < len(ins):
                        sid = ins[i]
                        L.ref(sid)
                    else:  # a parameter handed out as it is (arch_param)
                        sid = next((self.param_sid.get(key) for _, key, *_ in pl.params), None)
                        if sid is None or sid < 0:
                            sid = L.alloc(0, "activations")
                        else:
                            L.ref(sid)
                else:
                    sid = L.alloc(nb, "activations")
                outs.append(sid)
            ws = self.weights(pl, grad, tmp) if pl.params else {}
            keep_saved = grad and (seg is None or recompute)
            transient = 0
            if grad and pl.saved:
                kept: list[int] = []
                at = self.saved_at[pl.nid] = {} if pl.phases and keep_saved else None
                for idx, (kind, arg) in enumerate(pl.saved):
                    if at is not None:  # a phased backward frees its saved tensors by index
                        at[idx] = len(kept)
                    if kind == 3:
                        if keep_saved:
                            sid = L.alloc(arg, "activations")
                            L.save(sid)
                            L.unref(sid)
                            kept.append(sid)
                            if attributing:
                                self._attribute(sid, pl.node)
                        else:
                            transient += arg
                        continue
                    if not keep_saved:
                        continue
                    if kind == 0:
                        sid = ins[arg] if arg < len(ins) else None
                    elif kind == 1:
                        sid = outs[arg] if arg < len(outs) else None
                    else:
                        sid = ws.get(arg)
                    if sid is None or sid < 0 or L.cat.get(sid) in ("parameters", "buffers"):
                        continue
                    L.save(sid)
                    kept.append(sid)
                    if attributing:
                        self._attribute(sid, pl.node)
                if keep_saved:
                    self.saved_by[pl.nid] = kept
                if at is not None:  # entry -> its storage, for the entries kept (not parameters)
                    ends = list(at.values())[1:] + [len(kept)]
                    self.saved_at[pl.nid] = {i: kept[p] for (i, p), e in zip(at.items(), ends) if e > p}
            L.check(pl.rec_at if recompute else pl.fwd_at, pl.fwd + transient)
            if detail:
                r = self.nm(pl.node)
                r.outputs += sum(pl.out_bytes)
                r.workspace = max(r.workspace, pl.fwd + transient)
            for j, sid in enumerate(outs):
                vals[(pl.nid, j)] = sid
            for sid in tmp:
                L.unref(sid)
            # release variables after their last use, as the generated code does
            here = k if recompute else m.order[pl.nid]
            for key in pl.ins:
                if last_use.get(key) == here and key not in keep and (not recompute or key in self._recomp_vals):
                    self._drop(key)
            for j in range(len(outs)):
                key = (pl.nid, j)
                if key not in m.users and key not in m.keep:
                    self._drop(key)
            if stop_after is not None and pl.nid == stop_after:
                break
        if recompute:
            for key in list(self._recomp_vals):  # what the recomputation made and nobody kept
                if key in vals:
                    self._drop(key)
            return
        if grad:
            self.loss_forward()
        else:
            for v in m.out_values:
                self._drop((v.node, v.port))
        for sid in self.cast_cache.values():  # leaving autocast clears its cast cache
            L.unref(sid)
        self.cast_cache = {}

    def _drop(self, key) -> None:
        sid = self.vals.pop(key, None)
        if sid is not None:
            self.live.unref(sid)

    def _attribute(self, sid: int, n: Node) -> None:
        if sid not in self.first_saver:
            self.first_saver[sid] = n.id
            if self.detail:
                self.nm(n).saved += self.live.size[sid]

    def enter_segment(self, seg: int) -> None:
        """torch.utils.checkpoint (non-reentrant) keeps the segment's inputs and the RNG state."""
        m, L = self.m, self.live
        ids = m.s.checkpoint[seg]
        inside = set(ids)
        keys: list = []
        for nid in ids:
            for key in m.in_keys.get(nid, []):
                if key[0] not in inside and key not in keys:
                    keys.append(key)
        sids = []
        first = m.node_by_id[ids[0]]
        for key in keys:
            sid = self.vals[key]
            L.save(sid)
            sids.append(sid)
            if self.attributing:
                self._attribute(sid, first)
        self.seg_inputs[seg] = sids
        self.seg_keys[seg] = keys
        if m.s.device.rng_state_bytes:
            self.seg_state[seg] = L.alloc(m.s.device.rng_state_bytes, "checkpoint state")

    # -- loss ---------------------------------------------------------------------------------------
    def loss_forward(self) -> None:
        m, s, L, c = self.m, self.s, self.live, self.c
        self.loss_saved: list[int] = []
        if m.model_loss or not m.out_values:
            for v in m.out_values[1:]:
                self._drop((v.node, v.port))
            return
        v = m.out_values[0]
        lt = c["vt"][(v.node, v.port)]
        n = self.nbytes(lt) // dtype_bytes(lt.dtype)
        low_logits = lt.dtype != "float32"
        lsm_dtype = "float32" if (s.autocast or not low_logits) else lt.dtype
        tmp = None
        if s.autocast and low_logits and s.device.loss_casts_logits:
            tmp = L.alloc(n * 4, "activations")  # autocast casts cross-entropy's input to float32
        lsm = L.alloc(n * dtype_bytes(lsm_dtype), "activations")  # log_softmax output, kept
        L.save(lsm)
        L.unref(lsm)
        self.loss_saved.append(lsm)
        self._attribute_loss(lsm)
        L.check("loss (log_softmax)")
        out = L.alloc(4, "activations")  # the loss
        tw = L.alloc(4, "activations")  # nll_loss's total_weight, kept
        L.save(tw)
        L.unref(tw)
        L.save(self.targets)
        self.loss_saved += [tw, self.targets]
        self._attribute_loss(self.targets)
        self._attribute_loss(tw)
        L.check("loss (nll)")
        if tmp is not None:
            L.unref(tmp)
        self.loss_out = out
        self.lsm_bytes = n * dtype_bytes(lsm_dtype)
        self.logit_grad_bytes = n * dtype_bytes(lt.dtype)
        self.loss_cast = tmp is not None or (lsm_dtype != lt.dtype)
        for v in m.out_values:
            self._drop((v.node, v.port))

    def _attribute_loss(self, sid: int) -> None:
        if not self.attributing or sid in self.first_saver:
            return
        self.first_saver[sid] = -1
        if self.detail:
            r = self.node_mem.get(-1)
            if r is None:
                r = self.node_mem[-1] = NodeMemory("(loss)", "cross_entropy", "")
            r.saved += self.live.size[sid]

    # -- backward -----------------------------------------------------------------------------------
    def backward(self) -> None:
        m, L, c = self.m, self.live, self.c
        self.grads: dict[tuple[int, int], int] = {}
        self.recomputed: set[int] = set()
        grads = self.grads
        if not m.model_loss and m.out_values:
            root = L.alloc(4, "gradient buffers")
            g_lsm = L.alloc(self.lsm_bytes, "gradient buffers")  # nll_loss backward
            L.check("backward: loss (nll)")
            L.unref(root)
            L.unref(self.loss_out)
            for sid in self.loss_saved[1:]:
                L.unsave(sid)
            g_in = L.alloc(self.lsm_bytes, "gradient buffers")  # log_softmax backward
            L.check("backward: loss (log_softmax)")
            L.unref(g_lsm)
            L.unsave(self.loss_saved[0])
            if self.loss_cast:
                g2 = L.alloc(self.logit_grad_bytes, "gradient buffers")
                L.check("backward: loss (cast)")
                L.unref(g_in)
                g_in = g2
            v = m.out_values[0]
            grads[(v.node, v.port)] = g_in
        elif m.out_values:
            v = m.out_values[0]
            grads[(v.node, v.port)] = L.alloc(4, "gradient buffers")
        for pl in reversed(c["plans"]):
            if not pl.out_rg:
                continue
            got = [grads.get((pl.nid, j)) for j in range(len(pl.out_bytes))]
            if all(g is None for g in got):
                continue
            seg = pl.seg
            if seg is not None and seg not in self.recomputed and pl.saved:
                self.recompute(seg)
            self.node_backward(pl, got)
        for sid in grads.values():
            L.unref(sid)
        self.grads = {}
        for kept in self.saved_by.values():
            for sid in kept:
                L.unsave(sid)
        self.saved_by = {}
        for seg in list(self.seg_inputs):
            self._leave_segment(seg)

    def recompute(self, seg: int) -> None:
        """Rerun the segment's forward from its kept inputs, keeping what its nodes save, up to
        the last node that saves anything (early stop)."""
        m, L, c = self.m, self.live, self.c
        ids = m.s.checkpoint[seg]
        savers = [nid for nid in ids if nid in c["by_id"] and c["by_id"][nid].saved]
        self.recomputed.add(seg)
        if not savers:
            return
        self._recomp_vals = {(nid, j) for nid in ids if nid in c["by_id"]
                             for j in range(len(c["by_id"][nid].out_bytes))}
        injected = []
        for key, sid in zip(self.seg_keys.get(seg, []), self.seg_inputs.get(seg, [])):
            if key not in self.vals:
                self.vals[key] = sid
                injected.append(key)
        self.cast_cache = {}
        self.forward(grad=True, only=ids, stop_after=savers[-1])
        for sid in self.cast_cache.values():  # the recomputation's autocast region ends
            L.unref(sid)
        self.cast_cache = {}
        for key in injected:
            self.vals.pop(key, None)
        self._recomp_vals = set()

    def _leave_segment(self, seg: int) -> None:
        L = self.live
        for sid in self.seg_inputs.pop(seg, []):
            L.unsave(sid)
        st = self.seg_state.pop(seg, None)
        if st is not None:
            L.unref(st)

    def node_backward(self, pl: _Plan, got: list) -> None:
        L = self.live
        grads = self.grads
        if pl.phases:
            new_grads = self._phased_backward(pl, got)
        else:
            new_grads = self._one_step_backward(pl, got)
        for j, g in enumerate(got):  # the node's output gradients and saved tensors go
            if g is not None:
                L.unref(g)
                del grads[(pl.nid, j)]
        self._node_backward_end(pl, new_grads)

    def _param_grads(self, pl: _Plan, names=None) -> tuple[list, list]:
        """Allocate the gradients of the node's parameters (those in `names`, or all):
        (pending float32 copies, transient low-precision gradients)."""
        L = self.live
        pending: list[tuple[str | None, int]] = []
        transient: list[int] = []
        for name, key, trainable, op_bytes, final_bytes in pl.params:  # gradients of the parameters
            if not trainable or names is not None and name not in names:
                continue
            if self._zero_params:  # copied into ZeRO's buffers
                transient.append(L.alloc(op_bytes, "gradient buffers"))
            elif key in self.grad_sid:  # accumulated into .grad in place: the new one is transient
                transient.append(L.alloc(op_bytes, "gradient buffers"))
                if op_bytes != final_bytes:
                    pending.append((None, final_bytes))
            elif op_bytes != final_bytes:  # autocast: the low-precision gradient, then its float32 copy
                transient.append(L.alloc(op_bytes, "gradient buffers"))
                pending.append((key, final_bytes))
            else:
                self.grad_sid[key] = L.alloc(final_bytes, "gradients")
        return pending, transient

    def _grad_copies(self, pl: _Plan, pending: list, transient: list) -> None:
        L = self.live
        for key, nbytes in pending:  # ToCopyBackward, then AccumulateGrad
            sid = L.alloc(nbytes, "gradients" if key else "gradient buffers")
            L.check(pl.bwd_at)
            if key:
                self.grad_sid[key] = sid
            else:
                L.unref(sid)
        for sid in transient:
            L.unref(sid)

    def _input_grads(self, pl: _Plan, got: list) -> dict[int, int]:
        L = self.live
        new_grads: dict[int, int] = {}
        for i, needed in enumerate(pl.in_rg):  # gradients of the inputs
            if not needed:
                continue
            j = pl.grad_views.get(i)
            if j is not None and j < len(got) and got[j] is not None:
                L.ref(got[j])
                new_grads[i] = got[j]
            else:
                new_grads[i] = L.alloc(pl.in_bytes[i], "gradient buffers")
        return new_grads

    def _one_step_backward(self, pl: _Plan, got: list) -> dict[int, int]:
        L = self.live
        pending, transient = self._param_grads(pl)
        if pl.frees_saved:  # unrolled over time: saved tensors go as the steps' backward runs (the
            for sid in self.saved_by.pop(pl.nid, ()):  # op's bwd_peak says what is left at the high point)
                L.unsave(sid)
        new_grads = self._input_grads(pl, got)
        L.check(pl.bwd_at, pl.bwd)
        if self.detail:
            r = self.nm(pl.node)
            r.workspace = max(r.workspace, pl.bwd)
        self._grad_copies(pl, pending, transient)
        return new_grads

    def _phased_backward(self, pl: _Plan, got: list) -> dict[int, int]:
        """The node's backward as the steps its op lists (`Footprint.phases`, ops/base.py Phase)."""
        L = self.live
        at = self.saved_at.pop(pl.nid, None)  # None: checkpointed, its saved tensors recomputed
        if at is None and pl.nid in self.saved_by:
            at = {}
        kept = self.saved_by.get(pl.nid, [])
        held: dict[int, list[int]] = {}
        new_grads: dict[int, int] = {}
        for k, (names, temp, keep, inputs, workspace, frees) in enumerate(pl.phases):
            tmp = L.alloc(temp, "gradient buffers")
            for nbytes, until in keep:
                held.setdefault(until if until >= 0 else k, []).append(L.alloc(nbytes, "gradient buffers"))
            if inputs:
                new_grads = self._input_grads(pl, got)
            pending, transient = self._param_grads(pl, names)
            L.check(pl.bwd_at, workspace)
            if self.detail:
                r = self.nm(pl.node)
                r.workspace = max(r.workspace, workspace)
            L.unref(tmp)
            self._grad_copies(pl, pending, transient)
            for i in frees:
                sid = at.pop(i, None) if at else None
                if sid is not None and sid in kept:
                    kept.remove(sid)
                    L.unsave(sid)
            for sid in held.pop(k, []):
                L.unref(sid)
        for sids in held.values():
            for sid in sids:
                L.unref(sid)
        if not any(ph[3] for ph in pl.phases):
            new_grads = self._input_grads(pl, got)
        return new_grads

    def _node_backward_end(self, pl: _Plan, new_grads: dict[int, int]) -> None:
        m, L = self.m, self.live
        grads = self.grads
        for sid in self.saved_by.pop(pl.nid, ()):
            L.unsave(sid)
        seg = pl.seg
        if seg is not None and seg in self.seg_inputs and pl.nid == m.s.checkpoint[seg][0]:
            self._leave_segment(seg)
        for i, sid in new_grads.items():  # route the input gradients to their producers
            key = pl.ins[i]
            if pl.casts[i]:  # undo autocast's cast: a copy in the producer's dtype
                sid2 = L.alloc(pl.prod_bytes[i], "gradient buffers")
                L.check(pl.bwd_at)
                L.unref(sid)
                sid = sid2
            if not pl.in_grad[i]:
                L.unref(sid)
                continue
            old = grads.get(key)
            if old is None:
                grads[key] = sid
            else:  # accumulate (in place when one of the two is not shared)
                L.check(pl.bwd_at)
                if old == sid:
                    fresh = L.alloc(L.size[sid], "gradient buffers")
                    L.unref(sid)
                    L.unref(old)
                    grads[key] = fresh
                else:
                    L.unref(sid)

    # -- optimizer ----------------------------------------------------------------------------------
    def optimizer_step(self) -> None:
        m, s, L, c = self.m, self.s, self.live, self.c
        pb = dtype_bytes(c["param_dtype"])
        where = "optimizer step"
        if self._zero_params:
            L.check(where)  # DeepSpeed's fused optimizers update their partitions in place
        else:
            keys = [k for k in m.param_order if m.gets_grad[k] and k in self.grad_sid]
            sizes = [math.prod(m.param_shape[k]) * pb for k in keys]
            adam = s.optimizer in ("adam", "adamw")
            wd_tmp = s.weight_decay and s.optimizer in ("adam", "sgd")
            if s.device.optimizer_impl == "foreach":
                total = sum(sizes)
                extra = (total if adam else 0) + (total if wd_tmp else 0)
                L.check(where, extra)
            else:  # the single-tensor loop: temporaries of one parameter at a time
                prev = 0
                for k, size in zip(keys, sizes):
                    if adam:  # denom = (exp_avg_sq.sqrt() / c).add_(eps), the previous denom still bound
                        extra = prev + 2 * size + (size if wd_tmp else 0)
                        prev = size
                    else:
                        extra = size if wd_tmp else 0
                    L.check(f"{where} ({k})", extra)
        for k, sid in list(self.grad_sid.items()):  # zero_grad(set_to_none=True)
            L.unref(sid)
        self.grad_sid = {}
        L.check("after zero_grad")

    # -- report -------------------------------------------------------------------------------------
    def report(self, dims: dict[str, int]) -> MemoryReport:
        m, s, L = self.m, self.s, self.live
        rep = MemoryReport(m.g.name, "training" if s.training else "inference", s.device, s, dict(dims))
        st = self.state
        rep.parameters, rep.buffers, rep.optimizer, rep.master = (st["parameters"], st["buffers"],
                                                                 st["optimizer"], st["master"])
        if s.training:
            if self._zero_params:
                rep.gradients = st["gradients"]
            else:
                pb = dtype_bytes(self.c["param_dtype"])
                rep.gradients = sum(math.prod(sh) * pb for k, sh in m.param_shape.items() if m.gets_grad[k]) + \
                    st["gradients"]
        rep.activations = self.activations
        rep.inputs = self.inputs_bytes
        rep.peak, rep.peak_at, rep.peak_parts = L.peak, L.peak_at, L.peak_parts
        rep.phases = self.phases
        rep.params_count, rep.trainable_count, rep.largest_layer = self.P, self.Pt, self.largest
        rep.nodes = sorted(self.node_mem.values(), key=lambda r: -r.total) if self.detail else []
        rep.kv_cache = self.kv_cache(dims) if self.detail else 0
        rep.__dict__["_trace"] = L.trace
        rep.assumptions = self.assumptions()
        return rep

    def kv_cache(self, dims) -> int:
        """Keys and values of causal attention for decoding: 2·layers·batch·context·width·bytes."""
        m, c = self.m, self.c
        total = 0
        for n in m.nodes:
            op = REGISTRY.get(n.op)
            f = getattr(op, "cache_bytes_per_token", None)
            if f is None or n.op in ("input", "output"):
                continue
            pl = c["by_id"][n.id]
            ins = pl.op_in
            per = f(n.attrs, [TensorType(t.shape, pl.out_types[0].dtype) for t in ins])
            if per:
                b, t = ins[0].shape[0], ins[0].shape[1]
                total += per * b * t
        return total

    def assumptions(self) -> list[str]:
        s, m = self.s, self.m
        dev = s.device
        out = []
        if s.training:
            if m.model_loss:
                out.append("the model's first output is a scalar: its loss; none is added")
            else:
                out.append("loss: cross-entropy of the first output (flattened to [N, classes]) against int64 "
                           "targets, computed inside autocast when there is one")
            out.append("a steady-state step: optimizer state exists; gradients start and end as None "
                       "(zero_grad(set_to_none=True))")
            impl = "foreach (multi-tensor) optimizer" if dev.optimizer_impl == "foreach" else \
                "single-tensor optimizer loop"
            if s.zero:
                impl = "DeepSpeed ZeRO-%d: model states as its estimator counts them, updated in place" % s.zero
            out.append(impl)
        kind = "CUDA" if dev.kind == "cuda" else "CPU"
        mask = "1 byte (bool)" if dev.dropout_mask_bytes == 1 else "the input's dtype"
        out.append(f"device rules: {kind}; dropout masks take {mask} per element; allocations rounded to "
                   f"{dev.alloc_round} bytes; attention runs "
                   + ("as the device picks (fused kernel; math path for dropout on the CPU)"
                      if dev.attention == "auto" else dev.attention))
        if dev.conv == "onednn":
            out.append("convolutions: oneDNN reorders (channel blocks of 16) as PyTorch's CPU backend does")
        else:
            out.append("convolutions: cuDNN workspaces are not modelled")
        if s.autocast:
            out.append(f"autocast to {s.low}: conv/linear/matmul/attention in {s.low} with cached weight copies"
                       + ("; norms and softmax in float32" if "softmax" in dev.autocast_fp32 else "")
                       + ("; 3-D pools in float32" if "max_pool/5" in dev.autocast_fp32 else ""))
        if s.checkpoint:
            out.append(f"{len(s.checkpoint)} checkpoint segment(s): torch.utils.checkpoint, non-reentrant, "
                       "early stop; segment inputs kept")
        out += getattr(m, "_notes", [])
        return out
