"""Plans (`train`, `finetune`, `compress`, `search`): validated directives.

Each directive is a pydantic model registered for the plan kinds that accept
it; a plan's calls are checked against them with positions (unknown directive
E0501, bad argument E0502). Passes read the validated directives; they never
look at the text.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ..grammar import ast as A
from .diagnostics import CompileError, Diagnostic, Span, did_you_mean

PLAN_KINDS = ("train", "finetune", "compress", "search")


class Directive(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


# kind -> directive name -> model
DIRECTIVES: dict[str, dict[str, type[Directive]]] = {k: {} for k in PLAN_KINDS}


def directive(name: str, kinds=PLAN_KINDS):
    """Register a directive model under `name` for the given plan kinds."""

    def deco(cls: type[Directive]) -> type[Directive]:
        for k in (kinds,) if isinstance(kinds, str) else kinds:
            DIRECTIVES[k][name] = cls
        return cls

    return deco


@directive("dims")
class Dims(Directive):
    """Bind symbolic dimensions: `dims(B=8, T=1024)`."""

    model_config = ConfigDict(extra="allow", frozen=True)

    def values(self) -> dict[str, int]:
        return dict(self.model_extra or {})


@directive("precision", ("train", "finetune", "search"))
class Precision(Directive):
    mode: Literal["fp32", "fp16", "bf16", "fp16-mixed", "bf16-mixed"] = "fp32"


@directive("optimizer", ("train", "finetune", "search"))
class Optimizer(Directive):
    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)


@directive("accumulate", ("train", "finetune"))
class Accumulate(Directive):
    steps: int

    @field_validator("steps")
    @classmethod
    def _positive(cls, v):
        if v < 1:
            raise ValueError("must be at least 1")
        return v


@directive("checkpoint", ("train", "finetune"))
class Checkpoint(Directive):
    on: str
    exclude: str | None = None


@directive("freeze", ("finetune", "train"))
class Freeze(Directive):
    """Parameters of the selected modules get no gradient: `freeze("*")`."""

    on: str = "*"
    exclude: str | None = None


@directive("unfreeze", ("finetune", "train"))
class Unfreeze(Directive):
    on: str
    exclude: str | None = None


@directive("shard", ("train", "finetune"))
class Shard(Directive):
    strategy: Literal["none", "ddp", "zero1", "zero2", "zero3"] = "none"
    gpus: int = 1

    @field_validator("gpus")
    @classmethod
    def _positive(cls, v):
        if v < 1:
            raise ValueError("must be at least 1")
        return v


@directive("device", ("train", "finetune", "search", "compress"))
class Device(Directive):
    name: str
    memory: str | int | None = None  # override the device's memory: "24GiB", "80GB", or bytes
    attention: Literal["auto", "fused", "composite"] = "auto"  # how attention runs (memory estimates)



# -- search plans (read by archc.search) --------------------------------------------

SEARCH_STRATEGIES = ("random", "grid", "evolution", "tpe", "nsga2", "rl", "darts")


def _at_least_one(cls, v):
    if v is not None and v < 1:
        raise ValueError("must be at least 1")
    return v


@directive("strategy", "search")
class Strategy(Directive):
    """`strategy("tpe", trials=30)`: how candidates are proposed, and how many complete
    trials the study holds when done (all workers and resumed runs together).

    `population` (evolution, nsga2), `sample` (evolution's tournament size),
    `startup` (tpe: random trials first) and `lr` (rl: the controller's step)."""

    name: Literal["random", "grid", "evolution", "tpe", "nsga2", "rl", "darts"]
    trials: int | None = None  # default 20; `grid`: the whole space
    population: int | None = None
    sample: int | None = None
    startup: int | None = None
    lr: float | None = None

    _positive = field_validator("trials", "population", "sample", "startup")(classmethod(_at_least_one))

    @field_validator("lr")
    @classmethod
    def _lr_positive(cls, v):
        if v is not None and v <= 0:
            raise ValueError("must be positive")
        return v


@directive("objective", "search")
class Objective(Directive):
    """`objective("accuracy", "max")`: a metric to optimize (accuracy, params, flops, memory,
    latency); the direction defaults to max for accuracy and min for the rest."""

    name: str
    direction: Literal["min", "max", "minimize", "maximize"] | None = None


@directive("constraint", "search")
class Constraint(Directive):
    """`constraint("params < 1M")`: candidates that break it are rejected before training."""

    expr: str


@directive("data", "search")
class Data(Directive):
    """`data("digits")` or `data("module:function", ...)`: the data candidates train on.
    `val`, `test`: fractions held out when archc splits the data; `seed` fixes the split;
    other arguments go to the user's function."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    val: float = 0.15
    test: float = 0.15
    seed: int = 0

    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


@directive("storage", "search")
class Storage(Directive):
    """`storage("sqlite:///search.db")`: any Optuna storage URL (PostgreSQL to share a study)."""

    url: str


@directive("budget", "search")
class Budget(Directive):
    """`budget(epochs=2, batch=64)`: how long each candidate trains (epochs and/or optimizer
    steps, whichever ends first), its batch size, and early stopping's patience."""

    epochs: int | None = None
    steps: int | None = None
    batch: int = 64
    patience: int | None = None

    _positive = field_validator("epochs", "steps", "batch", "patience")(classmethod(_at_least_one))


@directive("seed", "search")
class Seed(Directive):
    """`seed(0)`: seeds the strategy and every candidate's training."""

    value: int


@directive("pruner", "search")
class Pruner(Directive):
    """`pruner("median", warmup=1)`: stop candidates whose intermediate validation accuracy
    is poor. `warmup`: evaluations before a trial may be pruned; `startup`: trials that
    complete before pruning starts; `percentile` for the percentile pruner."""

    name: Literal["none", "median", "percentile", "halving", "hyperband"]
    warmup: int = 0
    startup: int = 5
    percentile: float = 25.0

    @field_validator("warmup", "startup")
    @classmethod
    def _non_negative(cls, v):
        if v < 0:
            raise ValueError("must not be negative")
        return v


@dataclass
class PlanDirective:
    name: str
    args: Directive
    span: Span | None
    spans: dict[str, Span] = field(default_factory=dict)  # argument name -> where it is written

    def at(self, arg: str) -> Span | None:
        """Where an argument is written (the whole directive if it is not)."""
        return self.spans.get(arg) or self.span


@dataclass
class Plan:
    kind: str
    name: str
    model: str
    args: dict[str, Any]
    directives: list[PlanDirective] = field(default_factory=list)
    span: Span | None = None

    def all(self, name: str) -> list[PlanDirective]:
        return [d for d in self.directives if d.name == name]

    def one(self, name: str) -> PlanDirective | None:
        found = self.all(name)
        return found[-1] if found else None

    def dims(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.all("dims"):
            out.update(d.args.values())
        return out


def resolve_plan(decl: A.PlanDecl, evaluate) -> Plan:
    """Validate a plan's directives; `evaluate(expr)` computes an argument's value."""
    if decl.args:
        raise CompileError(Diagnostic("E0205", "a plan passes model arguments by name", decl.args[0].span,
                                      help=f"write `for {decl.model}(name=value)`"))
    plan = Plan(decl.kind, decl.name, decl.model, {k.name: evaluate(k.value) for k in decl.kwargs}, span=decl.span)
    allowed = DIRECTIVES[decl.kind]
    diags: list[Diagnostic] = []
    for call in decl.directives:
        name = call.func.id
        model = allowed.get(name)
        if model is None:
            diags.append(Diagnostic("E0501", f"`{decl.kind}` plans have no directive `{name}`", call.func.span,
                                    help=did_you_mean(name, allowed) or "directives: " + ", ".join(sorted(allowed))))
            continue
        fields = list(model.model_fields)
        if len(call.args) > len(fields):
            diags.append(Diagnostic("E0502", f"`{name}` takes at most {len(fields)} positional argument(s)",
                                    call.args[len(fields)].span if len(call.args) > len(fields) else call.span,
                                    help="its arguments: " + ", ".join(fields)))
            continue
        values = {f: evaluate(a) for f, a in zip(fields, call.args)}
        spans = {f: a.span for f, a in zip(fields, call.args)}
        for k in call.kwargs:
            if k.name not in model.model_fields and model.model_config.get("extra") != "allow":
                diags.append(Diagnostic("E0502", f"`{name}` has no argument `{k.name}`", k.span,
                                        help=did_you_mean(k.name, fields) or "its arguments: " + ", ".join(fields)))
                break
            values[k.name] = evaluate(k.value)
            spans[k.name] = k.span
        else:
            try:
                args = model(**values)
            except ValidationError as e:
                err = e.errors()[0]
                loc = str(err["loc"][0]) if err["loc"] else ""
                msg = f"`{name}` needs `{loc}`" if err["type"] == "missing" else \
                    f"invalid `{loc}` for `{name}`: {err['msg']}"
                diags.append(Diagnostic("E0502", msg, spans.get(loc, call.span),
                                        help="its arguments: " + ", ".join(fields) if fields else None))
                continue
            if isinstance(args, Dims):
                bad = [k for k, v in args.values().items() if not isinstance(v, int) or isinstance(v, bool) or v <= 0]
                if bad:
                    diags.append(Diagnostic("E0502", f"dimension `{bad[0]}` must be a positive integer",
                                            spans.get(bad[0], call.span)))
                    continue
            plan.directives.append(PlanDirective(name, args, call.span, spans))
    if diags:
        raise CompileError(diags)
    return plan
