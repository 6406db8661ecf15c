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


@dataclass
class PlanDirective:
    name: str
    args: Directive
    span: Span | None


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
            plan.directives.append(PlanDirective(name, args, call.span))
    if diags:
        raise CompileError(diags)
    return plan
