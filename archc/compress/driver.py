"""Running a `compress` plan: `archc compress SPEC --plan NAME`.

The model starts from `--weights` (safetensors, keyed by module path) or, when the
plan has data and a budget, is trained from scratch on the plan's data (with the
teacher when the plan distills). The directives then run in the order written:

- `distill(...)`: the student trains against the teacher (archc.runtime.train.distill);
- `prune(structured=true)`: channels and heads go group-wise; the network is rebuilt from
  the smaller graph, the weights sliced; `budget(tune=N)` fine-tunes it N epochs
  (against the teacher when there is one);
- `prune(structured=false)`: masks zero single weights; fine-tuned with the masks on,
  then made permanent (the zeros stay: a dense file is no smaller, which the table shows);
- `quantize(...)`: dynamic, static (calibrated on `calibrate` training examples) or QAT
  (fine-tuned `epochs`); it must come last.

After each step the network is measured (a column of the table): parameters, FLOPs of
one example, bytes of its saved weights (the safetensors bytes of its live tensors),
CPU latency (the fastest of 30 forward passes on one thread at `batch`), accuracy on the held-out `test` split.
The compressed spec (archc.compress.spec) and the weights are written atomically; the
original spec and weights are never overwritten unless `in_place`.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..compiler.diagnostics import CompileError, Diagnostic
from ..compiler.dims import Sym
from ..compiler.ir import Graph, Value
from ..compiler.lower.torch import build_module
from ..compiler.ops import REGISTRY
from ..compiler.passes.count_cost import count_cost
from .check import CompressConfig, resolve_compress_plan
from .size import count_parameters, measure_latency, nonzero_parameters, to_bytes


class UsageError(Exception):
    """A command-line mistake (exit status 2)."""


@dataclass
class Stage:
    name: str
    params: int
    nonzero: int
    flops: Any
    bytes: int
    latency: float | None
    accuracy: float | None
    notes: list[str] = field(default_factory=list)


@dataclass
class CompressResult:
    model: str
    plan: str
    stages: list[Stage] = field(default_factory=list)
    spec_text: str = ""
    spec_path: Path | None = None
    weights_path: Path | None = None
    quantized: list = field(default_factory=list)
    left_float: list = field(default_factory=list)
    pruned_groups: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    engine: str = ""
    batch: int = 1

    def to_json(self) -> dict:
        return {"model": self.model, "plan": self.plan, "batch": self.batch,
                "stages": [{"name": s.name, "params": s.params, "nonzero": s.nonzero,
                            "flops": s.flops if isinstance(s.flops, int) else str(s.flops), "bytes": s.bytes,
                            "latency_ms": None if s.latency is None else round(s.latency * 1e3, 4),
                            "accuracy": s.accuracy} for s in self.stages],
                "quantized": [list(q) for q in self.quantized], "left_float": [list(q) for q in self.left_float],
                "pruned_groups": self.pruned_groups, "engine": self.engine, "notes": self.notes,
                "spec": str(self.spec_path) if self.spec_path else None,
                "weights": str(self.weights_path) if self.weights_path else None}


# -- helpers -----------------------------------------------------------------------------

def _load_weights(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        state = load_file(path)
    except (OSError, Exception) as e:  # noqa: BLE001 - safetensors raises its own error types
        raise UsageError(f"cannot read weights {path}: {e}") from e
    if any(k.endswith((".qdata", ".int")) for k in state):
        raise UsageError(f"{path} holds quantized weights: start from the float weights")
    return state


def _flops(graph: Graph, dims: dict) -> Any:
    f = count_cost(graph).flops
    if isinstance(f, Sym):
        f = f.subs({"B": 1, **dims})
    return f


def _example(graph: Graph, batch: int, dims: dict, data) -> tuple[torch.Tensor, ...]:
    if data is not None and data.test is not None and len(graph.inputs) == 1:
        xs = []
        for b in data.test:
            xs.append(b[0])
            if sum(len(x) for x in xs) >= batch:
                break
        return (torch.cat(xs)[:batch],)
    out = []
    for i in graph.inputs:
        t = graph.node(i).outputs[0]
        shape = []
        for k, d in enumerate(t.shape):
            if isinstance(d, Sym):
                d = d.subs({"B": batch, **dims})
            if isinstance(d, Sym):
                raise UsageError(f"input `{graph.node(i).path}` has the unbound size `{d}`: bind it with --dim "
                                 "or the plan's dims(...)")
            shape.append(int(d))
        out.append(torch.zeros(shape, dtype=torch.long) if t.dtype.startswith("int") else torch.randn(shape))
    return tuple(out)


def with_features(graph: Graph, paths: list[str]) -> tuple[Graph, list[int]]:
    """A copy of the graph that also outputs the named nodes (or the last output of a named
    block or sequence); returns it and those outputs' indices."""
    g = copy.deepcopy(graph)
    idx = []
    base = len(g.outputs)
    taken = {g.node(o).attrs.name for o in g.outputs}
    for k, path in enumerate(paths):
        nodes = [n for n in g.nodes() if n.op not in ("input", "output") and (n.path == path or
                                                                            n.path.startswith(path + "."))]
        if not nodes:
            raise CompileError(Diagnostic("E0805", f"no node `{path}` to distill features from", None))
        members = {n.id for n in nodes}
        src = next((n for n in reversed(nodes) if any(u not in members for u, _ in g.users(n.id))), nodes[-1])
        name = f"feature_{k}"
        while name in taken:
            name += "_"
        taken.add(name)
        g.add("output", REGISTRY["output"].Attrs(name=name), [Value(src.id, 0, src.outputs[0])], [], name)
        idx.append(base + k)
    return g, idx


def _train_config(budget, progress: bool, epochs: int | None = None, description: str = "train"):
    from ..runtime.train import TrainConfig

    b = budget.args if budget is not None else None
    ep = epochs if epochs is not None else (b.epochs if b else None)
    steps = None if epochs is not None else (b.steps if b else None)
    if ep is None and steps is None:
        ep = 1
    return TrainConfig(epochs=ep, steps=steps, lr=b.lr if b else 3e-3, weight_decay=b.weight_decay if b else 0.0,
                       seed=b.seed if b else 0, progress=progress, description=description)


# -- the run -------------------------------------------------------------------------------

def run_compress(prog, plan_name: str, *, weights: str | None = None, spec_out: str | None = None,
                 weights_out: str | None = None, in_place: bool = False, progress: bool = False,
                 batch: int = 1, write: bool = True, dims: dict | None = None, log=None) -> CompressResult:
    """Run a compress plan; see the module docstring. Raises CompileError (exit 1) or UsageError (exit 2)."""
    from ..runtime.data import DataError, load_data
    from ..runtime.train import evaluate, fit
    from ..runtime.train.distill import distill as run_distill

    say = log or (lambda msg: None)
    cfg: CompressConfig = resolve_compress_plan(prog, plan_name, dims=dims)
    plan = cfg.plan
    dims = {**plan.dims(), **(dims or {})}
    budget = plan.one("budget")
    spec_file = Path(prog.file)
    stem = spec_file.name[:-5] if spec_file.name.endswith(".arch") else spec_file.name
    spec_path = Path(spec_out) if spec_out else spec_file.with_name(f"{stem}.{plan.name}.arch")
    weights_path = Path(weights_out) if weights_out else spec_path.with_suffix(".safetensors")
    if in_place:
        spec_path = spec_file
        weights_path = Path(weights) if weights else weights_path
    else:
        protected = {spec_file.resolve()} | ({Path(weights).resolve()} if weights else set())
        for p in (spec_path, weights_path):
            if p.resolve() in protected:
                raise UsageError(f"{p} is the original; pass --in-place to overwrite it, or choose another -o")
    result = CompressResult(plan.model, plan.name, spec_path=spec_path, weights_path=weights_path, batch=batch)

    data = None
    if cfg.data:
        try:
            data = load_data(cfg.data, batch=budget.args.batch if budget else 64,
                             search_path=[str(spec_file.parent)], **cfg.data_args)
        except DataError as e:
            d = plan.one("data")
            raise CompileError(Diagnostic("E0804", f"the plan's data cannot be loaded: {e}", d.span if d else plan.span))
    graph = prog.graph(plan=plan, dims=dims, strict=False)
    example = _example(graph, batch, dims, data)

    def accuracy(model) -> float | None:
        if data is None or data.test is None:
            return None
        return evaluate(model, data.test).get("accuracy")

    def measure(name: str, model, g: Graph, tensors=None, schemes=None, int4=False, notes=()) -> Stage:
        from .quantize import live_tensors

        if tensors is None:
            tensors, schemes = live_tensors(model)
        nbytes = len(to_bytes(tensors, schemes, int4=int4))
        model.eval() if not isinstance(model, torch.fx.GraphModule) else None
        st = Stage(name, count_parameters(tensors), nonzero_parameters(tensors), _flops(g, dims), nbytes,
                   measure_latency(model, example), accuracy(model), list(notes))
        say(f"{name}: {st.params:,} parameters, accuracy {st.accuracy}")
        result.stages.append(st)
        return st

    # the teacher
    teacher = None
    distills = plan.all("distill")
    if cfg.teacher is not None:
        t = cfg.teacher
        tgraph = t.program.graph(t.model, args=t.args, dims=dims, strict=False)
        torch.manual_seed(budget.args.seed if budget else 0)
        teacher = build_module(tgraph, os.path.basename(t.program.file))
        if t.weights:
            wp = t.weights if os.path.isabs(t.weights) else str(spec_file.parent / t.weights)
            teacher.load_state_dict(_load_weights(wp))
        else:
            say("training the teacher")
            fit(teacher, data.train, data.val, _train_config(budget, progress, description="teacher"))
        teacher.eval()
        measure("teacher", teacher, tgraph)

    # the model as given, or trained
    torch.manual_seed(budget.args.seed if budget else 0)
    model = build_module(graph, spec_file.name)
    trained_with_teacher = False
    if weights:
        model.load_state_dict(_load_weights(weights))
        measure("float", model, graph)
    elif data is not None and budget is not None:
        if distills:
            trained_with_teacher = True  # the first distill directive trains it from scratch
        else:
            say("training the model")
            fit(model, data.train, data.val, _train_config(budget, progress))
            measure("float", model, graph)
    else:
        result.notes.append("no weights and no data/budget to train on: the network is measured untrained")
        measure("float (untrained)", model, graph)

    final_tensors, final_schemes, int4 = None, None, False
    final_model = model
    for d in plan.directives:
        a = d.args
        if d.name == "distill":
            soft, hard = a.loss_weights()
            feats, fidx = a.features or [], []
            student_graph = graph
            if feats:
                student_graph, s_idx = with_features(graph, [p[0] for p in feats])
                tg2, t_idx = with_features(tgraph, [p[1] for p in feats])
                student = build_module(student_graph)
                student.load_state_dict(model.state_dict())
                tfeat = build_module(tg2)
                tfeat.load_state_dict(teacher.state_dict())
                tfeat.eval()
                fidx = list(zip(s_idx, t_idx))
            else:
                student, tfeat = model, teacher
            say("distilling" + (" (from scratch)" if trained_with_teacher else ""))
            run_distill(student, tfeat, data.train, data.val, _train_config(budget, progress, description="distill"),
                        temperature=a.temperature, soft_weight=soft, hard_weight=hard, features=fidx,
                        feature_weight=a.feature_weight)
            if feats:
                model.load_state_dict(student.state_dict())
            trained_with_teacher = False
            final_model = model
            measure("distilled", model, graph, notes=[f"T={a.temperature}, soft {soft}, hard {hard}"])
        elif d.name == "prune":
            from .prune import make_permanent, prune_structured, prune_unstructured, selected_nodes, weight_params

            grads = None
            if a.criterion == "taylor":
                grads = _gradients(model, data)
            if a.structured:
                res = prune_structured(graph, model.state_dict(), on=a.on, exclude=a.exclude, amount=a.amount,
                                       scope=a.scope, criterion=a.criterion, grads=grads, span=d.span)
                graph = res.graph
                model = build_module(graph, spec_file.name)
                model.load_state_dict(res.state_dict)
                result.pruned_groups += res.groups
                if budget is not None and budget.args.tune and data is not None:
                    say(f"fine-tuning {budget.args.tune} epoch(s) after pruning")
                    _finetune(model, teacher, data, budget, progress, distills)
                final_model = model
                measure("pruned", model, graph, notes=[f"{a.amount:.0%} of the channels per "
                                                        f"{'group' if a.scope == 'layer' else 'network'}, {a.criterion}"])
            else:
                sel, ex = selected_nodes(graph, a.on, a.exclude, d.at("on"))
                params = weight_params(graph, sel - ex)
                zeroed = prune_unstructured(model, params, a.amount, a.scope)
                measure("masked", model, graph, notes=[f"{zeroed:,} weights masked: masks are buffers, no saving"])
                if budget is not None and budget.args.tune and data is not None:
                    _finetune(model, teacher, data, budget, progress, distills)
                make_permanent(model)
                final_model = model
                measure("sparse", model, graph, notes=["masks folded into the weights; zeros are stored densely"])
        elif d.name == "quantize":
            from .quantize import quantize_dynamic, quantize_pt2e

            model.eval()
            if a.mode == "dynamic":
                q = quantize_dynamic(model, graph, on=a.on, exclude=a.exclude, dtype=a.dtype, granularity=a.granularity)
            else:
                ex_in = tuple(x[:2] if x.shape[0] >= 2 else torch.cat([x, x]) for x in example)

                def calibrate(m, n=a.calibrate):
                    seen = 0
                    for b in data.train:
                        m(b[0])
                        seen += len(b[0])
                        if seen >= n:
                            break

                def train_qat(m):
                    from ..runtime.train import fit as fit_

                    fit_(m, data.train, data.val, _train_config(budget, progress, epochs=a.epochs, description="qat")
                         .but(lr=(budget.args.lr if budget else 3e-3) / 10))

                q = quantize_pt2e(model, graph, ex_in, mode=a.mode, on=a.on, exclude=a.exclude,
                                  granularity=a.granularity, calibrate=calibrate if a.mode == "static" else None,
                                  train=train_qat if a.mode == "qat" else None)
            result.quantized, result.left_float, result.engine = q.quantized, q.left, q.engine
            result.notes += q.notes
            int4 = a.dtype == "int4"
            final_model, final_tensors, final_schemes = q.model, q.tensors, q.schemes
            measure("quantized", q.model, graph, q.tensors, q.schemes, int4=int4,
                    notes=[f"{a.mode} {a.dtype}, per {a.granularity}"])

    # outputs
    from ..cli import write_atomic
    from .quantize import live_tensors
    from .spec import write_spec

    header = (f"# Written by `archc compress` from {spec_file.name} (plan {plan.name}): model {plan.model} "
              f"with its compressed widths.\n# Weights: {weights_path.name}"
              + (" (quantized: see its metadata)" if result.quantized else "") + "\n")
    result.spec_text = write_spec(graph, header, span=plan.span)
    if final_tensors is None:
        final_tensors, final_schemes = live_tensors(final_model)
    blob = to_bytes(final_tensors, final_schemes, int4=int4,
                    metadata={"model": plan.model, "plan": plan.name, "spec": spec_path.name,
                              "quantized": [list(q) for q in result.quantized]})
    if write:
        write_atomic(spec_path, result.spec_text)
        write_atomic(weights_path, blob)
        result.stages[-1].bytes = weights_path.stat().st_size
    return result


def _gradients(model, data) -> dict[str, torch.Tensor]:
    """Accumulated gradients of the loss over a few training batches (the taylor criterion)."""
    from ..runtime.train import cross_entropy, primary_output

    model.train()
    model.zero_grad(set_to_none=True)
    for i, (x, y) in enumerate(data.train):
        loss = cross_entropy(primary_output(model, model(x)), y)
        loss.backward()
        if i >= 7:
            break
    names = dict(model.named_parameters())
    grads = {k: p.grad.detach().clone() for k, p in names.items() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.eval()
    return grads


def _finetune(model, teacher, data, budget, progress, distills) -> None:
    from ..runtime.train import fit
    from ..runtime.train.distill import distill as run_distill

    cfg = _train_config(budget, progress, epochs=budget.args.tune, description="fine-tune")
    if teacher is not None and distills:
        a = distills[-1].args
        soft, hard = a.loss_weights()
        run_distill(model, teacher, data.train, data.val, cfg, temperature=a.temperature, soft_weight=soft,
                    hard_weight=hard)
    else:
        fit(model, data.train, data.val, cfg)
