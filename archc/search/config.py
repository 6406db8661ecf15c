"""A `search` plan, checked and resolved into a `SearchConfig`. Never imports torch or optuna.

Everything that can be known from the spec alone is checked here, with the
directive's position: the plan's model must be a search space (E0520),
objectives and constraint metrics must exist (E0521), constraints must parse
and be decidable before training (E0522), the storage URL must be usable
(E0523, as far as can be told without connecting), the strategy must fit the
objectives (E0524), and the data must name something loadable (E0525). `archc
check` runs the same checks; `archc search` adds what needs the storage or the
data itself.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..compiler.diagnostics import CompileError, Diagnostic, Span, did_you_mean
from ..compiler.dims import Sym

# metric -> default direction
METRICS: dict[str, str] = {"accuracy": "max", "params": "min", "flops": "min", "memory": "min", "latency": "min"}
UNITS = {"accuracy": "a fraction (0.97 or 97%)", "params": "a count", "flops": "a count",
         "memory": "bytes", "latency": "milliseconds"}
GRAPH_METRICS = ("params", "flops", "memory")  # known from the graph alone
DEFAULT_TRIALS = 20
GRID_LIMIT = 5_000
BUILTIN_DATA = ("digits",)

_COUNT = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_BYTES = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_TIME = {"US": 1e-3, "MS": 1.0, "S": 1000.0}  # to milliseconds
_OPS = ("<=", ">=", "==", "!=", "<", ">")
_CONSTRAINT = re.compile(r"^\s*([A-Za-z_]\w*)\s*(<=|>=|==|!=|<|>)\s*([0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][+-]?[0-9]+)?)"
                         r"\s*([A-Za-z%]*)\s*$")


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str  # "max" | "min"
    span: Span | None = None

    @property
    def optuna_direction(self) -> str:
        return "maximize" if self.direction == "max" else "minimize"


@dataclass(frozen=True)
class Constraint:
    """`metric op value`, with `value` in the metric's unit (count, bytes, ms, fraction)."""

    metric: str
    op: str
    value: float
    text: str
    span: Span | None = None

    def holds(self, v: float) -> bool:
        return {"<": v < self.value, "<=": v <= self.value, ">": v > self.value, ">=": v >= self.value,
                "==": v == self.value, "!=": v != self.value}[self.op]


def parse_constraint(text: str, span: Span | None = None) -> Constraint:
    """Parse `"params < 1M"`; raises CompileError (E0521 unknown metric, E0522 bad text or unit)."""
    m = _CONSTRAINT.match(text)
    if not m:
        raise CompileError(Diagnostic(
            "E0522", f"cannot read the constraint `{text}`", span,
            help="write `METRIC OP NUMBER[UNIT]`, e.g. \"params < 1M\", \"memory <= 8GiB\", \"latency < 5ms\""))
    metric, op, num, unit = m.group(1), m.group(2), float(m.group(3).replace("_", "")), m.group(4)
    if metric not in METRICS:
        raise CompileError(Diagnostic("E0521", f"unknown metric `{metric}` in constraint `{text}`", span,
                                      help=did_you_mean(metric, METRICS) or "metrics: " + ", ".join(METRICS)))
    if metric == "accuracy":
        raise CompileError(Diagnostic(
            "E0522", f"the constraint `{text}` cannot be decided before training", span,
            help="constraints reject candidates before they train; make accuracy an objective instead"))
    u = unit.upper()
    scale = None
    if metric in ("params", "flops"):
        scale = _COUNT.get(u)
    elif metric == "memory":
        scale = _BYTES.get(u) if u else 1
        if u in ("K", "M", "G", "T"):
            scale = None
    elif metric == "latency":
        scale = _TIME.get(u) if u else 1.0
    if scale is None:
        raise CompileError(Diagnostic(
            "E0522", f"`{unit}` is not a unit for `{metric}` in constraint `{text}`", span,
            help=f"`{metric}` is {UNITS[metric]}" + {
                "params": ": use K, M or B (10^3, 10^6, 10^9)", "flops": ": use K, M, B or G",
                "memory": ": use B, KB, MB, GB or KiB, MiB, GiB", "latency": ": use us, ms or s"}[metric]))
    return Constraint(metric, op, num * scale, text, span)


@dataclass
class SearchConfig:
    """A checked `search` plan: what `archc.search.run_search` needs."""

    spec: Path  # the spec file (absolute)
    plan: str
    kind_span: Span | None
    model: str
    args: dict[str, Any]
    dims: dict[str, int]
    strategy: str
    strategy_span: Span | None
    trials: int
    options: dict[str, Any]  # population, sample, startup, lr; darts: order, arch_lr, rule, relax
    objectives: list[Objective]
    constraints: list[Constraint]
    data: str | None
    data_args: dict[str, Any]  # val, test, seed and the loader's own kwargs
    data_span: Span | None
    storage: str
    storage_span: Span | None
    epochs: int | None
    steps: int | None
    batch: int
    patience: int | None
    seed: int
    pruner: dict[str, Any] | None
    optimizer: dict[str, Any]
    precision: str
    decisions: dict[str, list[str]]  # label -> candidates as written
    space_size: int
    plan_obj: Any = None  # the validated Plan (the memory pass reads its precision, optimizer, device)
    fingerprint: str = ""
    study_name: str = ""
    notes: list[str] = field(default_factory=list)
    option_spans: dict[str, Span] = field(default_factory=dict)  # strategy argument -> where it is written

    @property
    def directions(self) -> list[str]:
        return [o.optuna_direction for o in self.objectives]

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    def needs(self, metric: str) -> bool:
        return any(o.name == metric for o in self.objectives) or any(c.metric == metric for c in self.constraints)


def default_storage(spec: Path) -> str:
    """A SQLite file next to the spec: `<dir>/<stem>.search.db`."""
    return "sqlite:///" + str(spec.parent / f"{spec.stem}.search.db")


def _sqlite_path(url: str) -> str | None:
    m = re.match(r"^sqlite(\+\w+)?://(/?)(.*)$", url)
    if not m:
        return None
    return m.group(3) if m.group(2) else ""


def resolve_storage(url: str, spec: Path) -> str:
    """A relative SQLite path is relative to the spec's directory."""
    path = _sqlite_path(url)
    if path and not os.path.isabs(path) and path != ":memory:" and not path.startswith("file:"):
        prefix = url[: len(url) - len(path)]
        return prefix + str((spec.parent / path).resolve())
    return url


def check_storage(url: str, span: Span | None) -> list[Diagnostic]:
    """What can be told about a storage URL without connecting to it."""
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if not m:
        return [Diagnostic("E0523", f"`{url}` is not a storage URL", span,
                           help="write an Optuna storage URL: \"sqlite:///search.db\" or "
                                "\"postgresql://user@host/db\"")]
    dialect = m.group(1).split("+")[0].lower()
    known = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")
    if dialect not in known:
        return [Diagnostic("E0523", f"unknown storage `{dialect}` in `{url}`", span,
                           help=did_you_mean(dialect, known) or "storages: sqlite, postgresql, mysql")]
    if dialect == "sqlite":
        path = _sqlite_path(url)
        if not path or path == ":memory:":
            return [Diagnostic("E0523", "an in-memory database cannot keep a search between runs", span,
                               help="name a file: \"sqlite:///search.db\"")]
        folder = os.path.dirname(path) or "."
        if not os.path.isdir(folder):
            return [Diagnostic("E0523", f"cannot open storage `{url}`: the folder `{folder}` does not exist",
                               span, help="create the folder, or name a file in an existing one")]
    return []


def _data_problem(name: str) -> str | None:
    if name in BUILTIN_DATA:
        return None
    module, sep, fn = name.partition(":")
    ok = sep and fn.isidentifier() and all(p.isidentifier() for p in module.split("."))
    return None if ok else f"unknown data `{name}`"


def _fingerprint(cfg: SearchConfig) -> str:
    """What makes two runs the same study: everything a trial's values depend on."""
    key = {"model": cfg.model, "args": repr(sorted(cfg.args.items())), "dims": cfg.dims,
           "objectives": [(o.name, o.direction) for o in cfg.objectives], "data": cfg.data,
           "data_args": repr(sorted(cfg.data_args.items())), "epochs": cfg.epochs, "steps": cfg.steps,
           "batch": cfg.batch, "patience": cfg.patience, "seed": cfg.seed, "optimizer": cfg.optimizer,
           "precision": cfg.precision, "space": cfg.decisions}
    if cfg.strategy == "darts":  # one supernet: its settings change every value
        key["darts"] = {k: cfg.options.get(k) for k in ("order", "arch_lr", "relax")}
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _check_strategy(cfg: SearchConfig, diags: list[Diagnostic]) -> None:
    if cfg.strategy in ("rl",) and cfg.multi:
        diags.append(Diagnostic("E0524", f"strategy `{cfg.strategy}` optimizes one objective, this plan has "
                                f"{len(cfg.objectives)}", cfg.strategy_span,
                                help="use `nsga2` (or `tpe`, `random`, `grid`, `evolution`) for several "
                                     "objectives, or keep one"))
    if cfg.pruner and cfg.pruner["name"] != "none":
        if cfg.multi:
            diags.append(Diagnostic("E0524", "pruning needs a single objective", cfg.pruner["span"],
                                    help="Optuna's pruners compare one intermediate value; remove `pruner(...)`"))
        elif cfg.objectives[0].name != "accuracy":
            diags.append(Diagnostic("E0524", "pruning follows the validation accuracy while training, but "
                                    "the objective is not `accuracy`", cfg.pruner["span"],
                                    help="remove `pruner(...)`, or optimize accuracy"))
    if cfg.strategy == "grid" and cfg.space_size > GRID_LIMIT:
        diags.append(Diagnostic("E0524", f"`grid` would visit all {cfg.space_size:,} candidates (at most "
                                f"{GRID_LIMIT:,})", cfg.strategy_span,
                                help="use `random`, `tpe` or `evolution` on a space this large"))


def _check_darts(program, cfg: SearchConfig, diags: list[Diagnostic], *, trials_flag: bool = False,
                 storage_given: bool = False) -> None:
    """What DARTS cannot do, and a space it cannot relax (no torch: the supernet's graph only)."""
    for o in cfg.objectives:
        if o.name != "accuracy":
            diags.append(Diagnostic("E0524", f"`darts` optimizes the validation accuracy only; the plan also asks "
                                    f"for `{o.name}`", o.span or cfg.strategy_span,
                                    help="remove the other objectives, or use `nsga2` for several"))
    for c in cfg.constraints:
        diags.append(Diagnostic("E0524", f"`darts` trains one supernet: the constraint `{c.text}` has no "
                                "candidates to reject", c.span or cfg.strategy_span,
                                help="remove it, or use a sampling strategy (tpe, evolution, nsga2...)"))
    if cfg.pruner and cfg.pruner["name"] != "none":
        diags.append(Diagnostic("E0524", "`darts` trains one supernet: there are no trials to prune",
                                cfg.pruner["span"], help="remove `pruner(...)`"))
    if diags:
        return
    relax = cfg.options.get("relax", "darts")
    try:
        graph = program.graph(cfg.model, dims=cfg.dims, args=cfg.args, relax=relax)
    except CompileError as e:
        d = e.diagnostics[0] if e.diagnostics else None
        if d is not None and d.code == "E0601":  # a choice among values: a relaxation mixes ops only
            diags.append(Diagnostic("E0524", f"`darts` relaxes op choices and cells only: {d.message}",
                                    cfg.strategy_span,
                                    notes=[f"the choice is at {d.span}"] if d.span else [],
                                    help="fix that value in the model, or search it with a sampling strategy "
                                         "(tpe, random, evolution...)"))
        else:
            diags += e.diagnostics
        return
    if not any(n.op == "arch_param" for n in graph.nodes()):
        diags.append(Diagnostic("E0524", f"`{cfg.model}` has nothing for `darts` to relax", cfg.strategy_span,
                                help="`darts` needs op choices or `cell(...)`; use a sampling strategy"))
        return
    if cfg.options.get("rule") == "nb201":
        from .derive_rules import cell_layouts

        try:
            layouts = cell_layouts(program, cfg.model, args=cfg.args, dims=cfg.dims, relaxed=graph)
        except ValueError as e:
            diags.append(Diagnostic("E0524", str(e), cfg.strategy_span))
            return
        keeps = [lay for lay in layouts.values() if lay.keep is not None]
        if keeps:
            diags.append(Diagnostic("E0524", f"rule `nb201` keeps every edge, but the cells of group "
                                    f"`{keeps[0].group}` keep {keeps[0].keep} inputs per node",
                                    cfg.option_spans.get("rule", cfg.strategy_span),
                                    help="use `darts` (the default for such cells), `pcdarts` or `raw`"))
    if trials_flag:
        cfg.notes.append("`darts` trains one supernet: --trials is ignored")
    if storage_given:
        cfg.notes.append("`darts` keeps its progress in its checkpoint (STEM.PLAN.darts.pt): the storage is not used")
    if cfg.patience:
        cfg.notes.append("`darts` trains for the whole budget: budget(patience=...) is ignored")


def load_config(program, plan: str, *, storage: str | None = None, trials: int | None = None,
                spec: str | os.PathLike | None = None) -> SearchConfig:
    """Check plan `plan` of `program` (an archc.Program) and resolve it; raises CompileError.

    `storage` and `trials` override the plan's (command-line flags)."""
    p = program.plan(plan)
    if p.kind != "search":
        raise CompileError(Diagnostic("E0501", f"`{plan}` is a `{p.kind}` plan, not a `search` plan", p.span,
                                      help="search plans are declared `search NAME for MODEL() { ... }`"))
    spec_path = Path(spec or program.file).resolve()
    diags: list[Diagnostic] = []

    def one(name):
        d = p.one(name)
        return (d.args, d.span) if d else (None, None)

    strat, strat_span = one("strategy")
    if strat is None:
        raise CompileError(Diagnostic("E0524", f"search plan `{plan}` has no strategy", p.span,
                                      help="add e.g. `strategy(\"tpe\", trials=30)`; strategies: random, grid, "
                                           "evolution, tpe, nsga2, rl, darts"))
    objectives: list[Objective] = []
    for d in p.all("objective"):
        name = d.args.name
        if name not in METRICS:
            diags.append(Diagnostic("E0521", f"unknown objective `{name}`", d.span,
                                    help=did_you_mean(name, METRICS) or "objectives: " + ", ".join(METRICS)))
            continue
        if any(o.name == name for o in objectives):
            diags.append(Diagnostic("E0521", f"objective `{name}` is given twice", d.span))
            continue
        direction = {"minimize": "min", "maximize": "max"}.get(d.args.direction, d.args.direction)
        objectives.append(Objective(name, direction or METRICS[name], d.span))
    if not p.all("objective"):
        objectives.append(Objective("accuracy", "max", p.span))
    constraints = []
    for d in p.all("constraint"):
        try:
            constraints.append(parse_constraint(d.args.expr, d.span))
        except CompileError as e:
            diags += e.diagnostics
    data, data_span = one("data")
    data_args: dict[str, Any] = {}
    if data is not None:
        problem = _data_problem(data.name)
        if problem:
            diags.append(Diagnostic("E0525", problem, data_span,
                                    help="built in: " + ", ".join(BUILTIN_DATA) +
                                         "; a loader of your own is written \"module:function\""))
        elif data.name in BUILTIN_DATA and data.kwargs():
            diags.append(Diagnostic("E0525", f"`{data.name}` takes no argument `{next(iter(data.kwargs()))}`",
                                    data_span, help="it takes val, test and seed"))
        data_args = {"val": data.val, "test": data.test, "seed": data.seed, **data.kwargs()}
    elif any(o.name == "accuracy" for o in objectives):
        diags.append(Diagnostic("E0525", "objective `accuracy` needs data to train and evaluate on",
                                next((o.span for o in objectives if o.name == "accuracy"), p.span),
                                help="add `data(\"digits\")` or `data(\"module:function\")`"))
    st, st_span = one("storage")
    url = storage or (st.url if st else None)
    url_span = None if storage else st_span
    url = resolve_storage(url, spec_path) if url else default_storage(spec_path)
    diags += check_storage(url, url_span)
    budget, _ = one("budget")
    seed, _ = one("seed")
    pruner, pruner_span = one("pruner")
    opt, _ = one("optimizer")
    prec, _ = one("precision")

    # the space: its decisions, and every metric a constraint or objective needs, on its first candidate
    dims = p.dims()
    try:
        space = program.space(p.model, dims=dims, args=p.args)
    except CompileError as e:
        raise CompileError(e.diagnostics + diags)
    if not space.is_space:
        diags.insert(0, Diagnostic("E0520", f"`{p.model}` has no choices: there is nothing to search", p.span,
                                   help="write `choice(...)` or `cell(...)` in the model, or use a `train` plan"))
    else:
        graph = program.graph(p.model, dims=dims, args=p.args, strict=False)
        values = graph_metrics(graph, dims, plan=p, batch=budget.batch if budget else 64)
        for c in constraints:
            if c.metric in GRAPH_METRICS and values.get(c.metric) is None:
                diags.append(Diagnostic("E0522", f"the constraint `{c.text}` cannot be evaluated: "
                                        f"{values.get(c.metric + '_why')}", c.span,
                                        help="bind the sizes it depends on with `dims(...)` in the plan"))
        for o in objectives:
            if o.name in GRAPH_METRICS and values.get(o.name) is None:
                diags.append(Diagnostic("E0522", f"the objective `{o.name}` cannot be evaluated: "
                                        f"{values.get(o.name + '_why')}", o.span,
                                        help="bind the sizes it depends on with `dims(...)` in the plan"))
    if diags:
        raise CompileError(diags)
    n_trials = trials or strat.trials
    if strat.name == "grid":
        n_trials = min(n_trials or space.size, space.size)
    cfg = SearchConfig(
        spec=spec_path, plan=plan, kind_span=p.span, model=p.model, args=dict(p.args), dims=dims,
        strategy=strat.name, strategy_span=strat_span, trials=n_trials or DEFAULT_TRIALS,
        options={k: getattr(strat, k) for k in ("population", "sample", "startup", "lr", "order", "arch_lr", "rule",
                                                "relax") if getattr(strat, k)},
        option_spans=dict(p.one("strategy").spans),
        objectives=objectives, constraints=constraints, data=data.name if data else None, data_args=data_args,
        data_span=data_span, storage=url, storage_span=url_span,
        epochs=budget.epochs if budget else None, steps=budget.steps if budget else None,
        batch=budget.batch if budget else 64, patience=budget.patience if budget else None,
        seed=seed.value if seed else 0,
        pruner={"name": pruner.name, "warmup": pruner.warmup, "startup": pruner.startup,
                "percentile": pruner.percentile, "span": pruner_span} if pruner else None,
        optimizer=opt.model_dump() if opt else {}, precision=prec.mode if prec else "fp32",
        decisions={lbl: list(d.candidates) for lbl, d in space.decisions.items()}, space_size=space.size,
        plan_obj=p)
    if cfg.epochs is None and cfg.steps is None:
        cfg.epochs = 1
    _check_strategy(cfg, diags)
    if cfg.strategy == "darts":
        _check_darts(program, cfg, diags, trials_flag=trials is not None, storage_given=bool(storage or st))
    if diags:
        raise CompileError(diags)
    cfg.fingerprint = _fingerprint(cfg)
    cfg.study_name = f"{spec_path.stem}.{plan}-{cfg.fingerprint}"
    if strat.name == "grid" and trials and trials > space.size:
        cfg.notes.append(f"the grid has {space.size} candidates: running {space.size} trials, not {trials}")
    return cfg


def check_search_plan(program, plan: str) -> list[Diagnostic]:
    """Diagnostics of a `search` plan (empty for other kinds); what `archc check` reports."""
    if program.plan(plan).kind != "search":
        return []
    try:
        load_config(program, plan)
    except CompileError as e:
        return e.diagnostics
    return []


def memory_bytes(graph, params: int, plan=None, dims: dict[str, int] | None = None) -> tuple[Any, str]:
    """Memory a candidate needs: the peak of one training step from the memory pass
    (archc.compiler.passes.estimate_memory: the plan's precision, optimizer and device,
    `dims` binding the batch), or its parameters' float32 bytes where that pass cannot
    tell. Returns (bytes, what was measured)."""
    try:
        from ..compiler.passes.estimate_memory import estimate_memory
    except ImportError:  # pragma: no cover - the pass ships with archc
        return params * 4, "parameter bytes"
    try:
        rep = estimate_memory(graph, plan, dims=dims, training=True, solve=False)
    except CompileError as e:
        if e.diagnostics and e.diagnostics[0].code == "E0213":  # a size it needs is not bound
            return None, e.diagnostics[0].message
        raise
    except Exception as e:  # never let an estimate stop a search: say what was measured instead
        return params * 4, f"parameter bytes (the memory estimate failed: {type(e).__name__}: {e})"
    return rep.peak, "peak memory of a training step"


def _bind(v, dims: dict[str, int]):
    if isinstance(v, Sym):
        v = v.subs({"B": 1, **dims})
    if isinstance(v, Sym):
        return None, "it depends on " + ", ".join(f"`{s}`" for s in sorted(v.symbols()))
    return v, None


def graph_metrics(graph, dims: dict[str, int] | None = None, *, plan=None, batch: int = 64) -> dict[str, Any]:
    """params, flops (of one example unless dims bind B) and memory (of a training step on
    `batch` examples unless dims bind B) of an elaborated candidate."""
    from ..compiler.passes.count_cost import count_cost

    dims = dims or {}
    cost = count_cost(graph)
    out: dict[str, Any] = {"params": cost.params}
    out["flops"], out["flops_why"] = _bind(cost.flops, dims)
    mem_dims = {"B": batch, **dims}
    mem, what = memory_bytes(graph, cost.params, plan, mem_dims)
    if mem is None:
        out["memory"], out["memory_why"] = None, what
    else:
        out["memory"], out["memory_why"] = _bind(mem, mem_dims)
        out["memory_kind"] = what
    return out
