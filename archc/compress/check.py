"""A `compress` plan's diagnostics and its resolved settings. No torch: `archc check` runs this.

    E0801  a pruning amount outside [0, 1)
    E0802  quantizing an op that has no quantized kernel (for the plan's mode)
    E0803  a teacher whose output shape differs from the student's
    E0804  a plan that needs data (distillation, static or QAT quantization, the taylor
           criterion, fine-tuning) and has none, or names data that cannot be loaded
    E0805  any other setting that cannot work (a teacher that is not a model, a feature
           node that does not exist, int4 outside dynamic mode, nothing left to prune)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..compiler.diagnostics import CompileError, Diagnostic, did_you_mean
from ..compiler.elaborate import OpRef
from ..compiler.selectors import select

# What each mode has a kernel for: dynamic int8 runs linear layers (torchao) and recurrent
# ones (torch's dynamic quantized LSTM/GRU/RNN); static and QAT run 2-D convolutions and linear
# layers (PT2E with the x86 quantizer). Everything else stays in float.
KERNELS = {
    "dynamic": ("linear", "lstm", "gru", "rnn"),
    "static": ("conv", "linear"),
    "qat": ("conv", "linear"),
}
BUILTIN_DATA = ("digits",)


@dataclass
class Teacher:
    program: Any  # archc.api.Program holding the teacher's model
    model: str
    args: dict
    weights: str | None = None


@dataclass
class CompressConfig:
    plan: Any  # archc.compiler.plans.Plan
    data: str | None = None
    data_args: dict = field(default_factory=dict)
    teacher: Teacher | None = None


def _data_problem(name: str) -> str | None:
    if name in BUILTIN_DATA:
        return None
    module, sep, fn = name.partition(":")
    ok = sep and fn.isidentifier() and all(p.isidentifier() for p in module.split("."))
    return None if ok else f"unknown data `{name}`"


def quantizable(graph, nid: int, mode: str) -> bool:
    n = graph.node(nid)
    if n.op not in KERNELS[mode]:
        return False
    if n.op == "conv" and mode != "dynamic":
        return graph.in_types(nid)[0].rank == 4  # the x86 quantizer's patterns are 2-D convolutions
    return True


def _teacher(program, d, diags) -> Teacher | None:
    """The teacher a `distill` names: a model call `T(args)` or "file.arch:Model"."""
    from .. import api

    t = d.args.teacher
    span = d.at("teacher")
    if isinstance(t, OpRef) and getattr(t.callee, "kind", None) == "model":
        if t.args:
            diags.append(Diagnostic("E0805", "a teacher model takes its arguments by name", span,
                                    help=f"write `{t.callee.name}(name=value)`"))
            return None
        return Teacher(program, t.callee.name, {k: v for k, v, _ in t.kwargs}, d.args.weights)
    if isinstance(t, str) and t.endswith(".arch") or isinstance(t, str) and ".arch:" in t:
        path, _, model = t.partition(":")
        base = os.path.dirname(program.file) if program.file and os.path.exists(program.file) else "."
        full = path if os.path.isabs(path) else os.path.join(base, path)
        try:
            prog = api.load(full)
        except CompileError as e:
            diags.append(Diagnostic("E0805", f"cannot load the teacher `{t}`: {e.diagnostics[0].message}", span))
            return None
        except OSError as e:
            diags.append(Diagnostic("E0805", f"cannot read the teacher `{path}`: {e.strerror or e}", span))
            return None
        return Teacher(prog, model or None, {}, d.args.weights)
    what = getattr(getattr(t, "callee", None), "name", None)
    diags.append(Diagnostic("E0805", "the teacher must be a model" + (f", not `{what}`" if what else ""), span,
                            help="name a model with its arguments: `teacher=ResNet152()`, or a spec: "
                            "`teacher=\"big.arch:Model\"`"))
    return None


def resolve_compress_plan(program, plan_name: str, *, dims: dict | None = None) -> CompressConfig:
    """Validate a compress plan; raise CompileError with every problem found."""
    plan = program.plan(plan_name)
    if plan.kind != "compress":
        raise CompileError(Diagnostic("E0805", f"`{plan_name}` is a `{plan.kind}` plan, not a `compress` plan",
                                      plan.span, help="`archc compress` runs compress plans"))
    diags: list[Diagnostic] = []
    cfg = CompressConfig(plan)
    graph = program.graph(plan=plan, dims=dims, strict=False)
    data = plan.one("data")
    if data is not None:
        problem = _data_problem(data.args.name)
        if problem:
            diags.append(Diagnostic("E0804", problem, data.at("name"),
                                    help="built in: digits; a loader of your own is written \"module:function\""))
        elif data.args.name in BUILTIN_DATA and data.args.kwargs():
            diags.append(Diagnostic("E0804", f"`{data.args.name}` takes no argument `{next(iter(data.args.kwargs()))}`",
                                    data.span, help="it takes val, test and seed"))
        cfg.data = data.args.name
        cfg.data_args = {"val": data.args.val, "test": data.args.test, "seed": data.args.seed, **data.args.kwargs()}

    def needs_data(d, why: str) -> None:
        if data is None:
            diags.append(Diagnostic("E0804", f"{why} needs data, and plan `{plan.name}` has none", d.span,
                                    help="add `data(\"digits\")` or `data(\"module:function\")` to the plan"))

    budget = plan.one("budget")
    seen_quantize = None
    for d in plan.directives:
        a = d.args
        if d.name in ("prune", "distill", "quantize") and seen_quantize is not None:
            diags.append(Diagnostic("E0805", f"`{d.name}` after `quantize`: quantization comes last", d.span,
                                    help="prune and distill the float network, then quantize it"))
            continue
        if d.name == "quantize":
            seen_quantize = d
        if d.name == "prune":
            if not 0 <= a.amount < 1:
                diags.append(Diagnostic("E0801", f"pruning amount {a.amount} is outside [0, 1)", d.at("amount"),
                                        help="the fraction of channels (or weights) to remove: 0.5 removes half"))
                continue
            try:
                sel = select(graph, a.on, a.exclude, span=d.at("on"), what="prune selector")
                if a.exclude:
                    select(graph, a.exclude, span=d.at("exclude"), what="prune exclude")
            except CompileError as e:
                diags += e.diagnostics
                continue
            if a.criterion == "taylor":
                needs_data(d, "the taylor criterion (gradients on the plan's data)")
            if a.structured:
                from ..compiler.passes.prune_groups import analyze

                ex = select(graph, a.exclude, what="prune exclude").nodes if a.exclude else set()
                an = analyze(graph)
                if not an.prunable(sel.nodes, ex):
                    why = "; ".join(f"`{p}`: {w}" for p, w in list(an.notes.items())[:3])
                    diags.append(Diagnostic("E0805", f"nothing to prune: no channel of `{a.on}` is free to go",
                                            d.at("on"), help=why or "the selected layers' widths are fixed"))
        elif d.name == "quantize":
            kernels = KERNELS[a.mode]
            if a.dtype == "int4" and a.mode != "dynamic":
                diags.append(Diagnostic("E0805", f"int4 is weight-only here: it has no {a.mode} kernel",
                                        d.at("dtype"), help="use mode=\"dynamic\" for int4 weights, or dtype=\"int8\""))
                continue
            bad = False
            for term in [t.strip() for t in (a.on or "").split(",") if t.strip()]:
                if term.startswith("op:") and term[3:] not in kernels:
                    diags.append(Diagnostic(
                        "E0802", f"`{term[3:]}` has no {a.dtype} kernel in {a.mode} mode", d.at("on"),
                        help="quantizable here: " + ", ".join(f"`op:{k}`" for k in kernels)
                        + ("; batch norm folds into the convolution before it" if term == "op:bn" else "")))
                    bad = True
            if bad:
                continue
            try:
                sel = select(graph, a.on or "*", a.exclude, span=d.at("on"), what="quantize selector")
            except CompileError as e:
                diags += e.diagnostics
                continue
            if not any(quantizable(graph, nid, a.mode) for nid in sel.nodes):
                diags.append(Diagnostic("E0802", f"`{a.on or '*'}` selects no layer with a {a.dtype} kernel in "
                                        f"{a.mode} mode", d.at("on") if a.on else d.span,
                                        help="quantizable here: " + ", ".join(f"`op:{k}`" for k in kernels)))
            if a.mode == "static":
                needs_data(d, "static quantization (calibration)")
            elif a.mode == "qat":
                needs_data(d, "quantization-aware training")
        elif d.name == "distill":
            needs_data(d, "distillation")
            teacher = _teacher(program, d, diags)
            if teacher is None:
                continue
            try:
                tg = teacher.program.graph(teacher.model, args=teacher.args, dims=plan.dims() | (dims or {}),
                                           strict=False)
            except CompileError as e:
                diags.append(Diagnostic("E0805", f"the teacher does not build: {e.diagnostics[0].message}",
                                        d.at("teacher")))
                continue
            s_out = [graph.in_types(o)[0] for o in graph.outputs]
            t_out = [tg.in_types(o)[0] for o in tg.outputs]
            if s_out[0].shape != t_out[0].shape:
                diags.append(Diagnostic("E0803", f"the teacher's output is {t_out[0]} but the student's is {s_out[0]}",
                                        d.at("teacher"), help="distillation compares the two outputs class by "
                                        "class: give both models the same number of classes"))
                continue
            for pair in a.features or []:
                if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
                    diags.append(Diagnostic("E0805", "`features` lists [student path, teacher path] pairs",
                                            d.at("features")))
                    break
                for path, g, who in ((pair[0], graph, "student"), (pair[1], tg, "teacher")):
                    paths = {n.path for n in g.nodes()} | set(g.containers)
                    if path not in paths:
                        diags.append(Diagnostic("E0805", f"the {who} has no node `{path}`", d.at("features"),
                                                help=did_you_mean(path, sorted(paths)) or None))
            cfg.teacher = teacher
    if budget is not None and budget.args.tune and data is None:
        needs_data(budget, "fine-tuning")
    if diags:
        raise CompileError(diags)
    return cfg


def check_compress_plan(program, plan_name: str) -> list[Diagnostic]:
    """Diagnostics of a `compress` plan (empty for other kinds); what `archc check` reports."""
    if program.plan(plan_name).kind != "compress":
        return []
    try:
        resolve_compress_plan(program, plan_name)
    except CompileError as e:
        return e.diagnostics
    return []
