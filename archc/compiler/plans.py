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



# -- fine-tuning (passes/insert_lora.py, insert_residual.py; runtime/sft.py) --------------

def _adapter_name(v: str) -> str:
    if not v.isidentifier():
        raise ValueError("must be an identifier (it becomes a state_dict key component)")
    return v


@directive("lora", "finetune")
class Lora(Directive):
    """`lora(on="h.*.attn.c_attn", r=8, alpha=16)`: a LoRA adapter on each selected linear
    (fused qkv included), embedding or conv layer; the layers' own weights are frozen.
    `on="all-linear"`: every linear layer but those that give a model output (the head).
    `rank_pattern=[["**.c_proj", 4]]` / `alpha_pattern`: other ranks / alphas where a
    selector matches (the last match wins). `name`: several adapters may share a base;
    the first named in a plan is the active one (`set_adapter` changes it)."""

    on: str
    r: int = 8
    alpha: float = 8
    dropout: float = 0.0
    init: bool | Literal["gaussian"] = True
    rslora: bool = False
    dora: bool = False
    name: str = "default"
    exclude: str | None = None
    rank_pattern: list[tuple[str, int]] = []
    alpha_pattern: list[tuple[str, float]] = []

    @field_validator("r")
    @classmethod
    def _rank(cls, v):
        if v < 1:
            raise ValueError("the rank must be at least 1")
        return v

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v):
        if v <= 0:
            raise ValueError("must be positive")
        return v

    @field_validator("dropout")
    @classmethod
    def _dropout(cls, v):
        if not 0 <= v < 1:
            raise ValueError("must be in [0, 1)")
        return v

    @field_validator("rank_pattern")
    @classmethod
    def _ranks(cls, v):
        if any(r < 1 for _, r in v):
            raise ValueError("ranks must be at least 1")
        return v

    _name = field_validator("name")(classmethod(lambda cls, v: _adapter_name(v)))


@directive("merge", "finetune")
class Merge(Directive):
    """`merge("default")`: the adapter is folded into its layers' weights when the model is
    built (no adapter computation, its parameters frozen); `on=` limits it to some layers."""

    name: str = "default"
    on: str = "*"


@directive("unmerge", "finetune")
class Unmerge(Directive):
    """`unmerge("default")`: undo an earlier `merge` of the plan."""

    name: str = "default"
    on: str = "*"


@directive("set_adapter", "finetune")
class SetAdapter(Directive):
    """`set_adapter("task2")` (or `"a, b"`): the adapters that run and train; the others are
    kept, frozen (PEFT's `set_adapter`)."""

    name: str


@directive("residual", ("finetune", "train"))
class Residual(Directive):
    """`residual(on="block:PlainBlock")`: each selected module computes F(x) + x, with a
    projection named `shortcut` when shapes differ (as `@residual`). `post_act=true` adds
    before the module's closing activation, act(F'(x) + x), as ResNet's blocks do;
    `shortcut=` names the projection (`"downsample"` for torchvision's names)."""

    on: str
    exclude: str | None = None
    post_act: bool = False
    shortcut: str = "shortcut"

    @field_validator("shortcut")
    @classmethod
    def _ident(cls, v):
        if not v.isidentifier():
            raise ValueError("must be an identifier (it becomes a module name)")
        return v


@directive("sft", "finetune")
class Sft(Directive):
    """`sft(template="alpaca", mask_prompt=true)`: supervised fine-tuning data: records of
    (instruction, input, output) become token ids and labels, the prompt's labels masked
    with -100 (archc.runtime.sft.SFTCollator). `template` is "alpaca", "plain" or a format
    string with {instruction}, {input} (and {output}: where the response starts)."""

    template: str = "alpaca"
    mask_prompt: bool = True
    max_len: int | None = None
    eos: bool = True  # end each response with the tokenizer's end-of-sequence id

    @field_validator("template")
    @classmethod
    def _template(cls, v):
        if v not in ("alpaca", "plain") and "{instruction}" not in v:
            raise ValueError('"alpaca", "plain", or a format string with {instruction}')
        return v

    _max_len = field_validator("max_len")(classmethod(lambda cls, v: _at_least_one(cls, v)))


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
    `startup` (tpe: random trials first) and `lr` (rl: the controller's step).

    `strategy("darts", order=2, arch_lr=3e-4, rule="darts", relax="darts")` trains one
    supernet instead (archc.search.darts): `order` 1 (first-order) or 2 (the unrolled
    gradient), `arch_lr` α's Adam step, `rule` how α becomes one architecture (a rule of
    archc.search.derive_rules: darts, pcdarts, raw, nb201), `relax` the relaxation
    (darts, gdas, pcdarts). These four are DARTS's only; `trials` and the sampling
    strategies' settings are not DARTS's."""

    name: Literal["random", "grid", "evolution", "tpe", "nsga2", "rl", "darts"]
    trials: int | None = None  # default 20; `grid`: the whole space
    population: int | None = None
    sample: int | None = None
    startup: int | None = None
    lr: float | None = None
    # DARTS's (name="darts" only)
    order: Literal[1, 2] | None = None
    arch_lr: float | None = None
    rule: str | None = None
    relax: Literal["darts", "gdas", "pcdarts"] | None = None

    _positive = field_validator("trials", "population", "sample", "startup")(classmethod(_at_least_one))

    @field_validator("lr", "arch_lr")
    @classmethod
    def _lr_positive(cls, v):
        if v is not None and v <= 0:
            raise ValueError("must be positive")
        return v

    @field_validator("rule")
    @classmethod
    def _known_rule(cls, v):
        if v is None:
            return v
        from ..search.derive_rules import RULES  # no torch; rules may be registered by users

        if v not in RULES:
            raise ValueError(f"unknown derivation rule `{v}`; rules: " + ", ".join(RULES))
        return v

    @field_validator("trials", "population", "sample", "startup", "lr", "order", "arch_lr", "rule", "relax")
    @classmethod
    def _whose(cls, v, info):
        """DARTS's settings only with "darts"; the sampling strategies' settings not with it."""
        name = info.data.get("name")
        if v is None or name is None:
            return v
        if info.field_name in DARTS_SETTINGS and name != "darts":
            raise ValueError(f"only `darts` takes `{info.field_name}`, not `{name}`")
        if info.field_name not in DARTS_SETTINGS and name == "darts":
            raise ValueError("`darts` trains one supernet and takes no "
                             f"`{info.field_name}`; its settings: " + ", ".join(DARTS_SETTINGS))
        return v


DARTS_SETTINGS = ("order", "arch_lr", "rule", "relax")


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


@directive("data", ("search", "train"))
class Data(Directive):
    """`data("digits")` or `data("module:function", ...)`: the data candidates (or, in a `train`
    plan, the model) train on.
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


@directive("budget", ("search", "train"))
class Budget(Directive):
    """`budget(epochs=2, batch=64)`: how long each candidate (in a `train` plan, the model)
    trains (epochs and/or optimizer steps, whichever ends first), its batch size, and early
    stopping's patience."""

    epochs: int | None = None
    steps: int | None = None
    batch: int = 64
    patience: int | None = None

    _positive = field_validator("epochs", "steps", "batch", "patience")(classmethod(_at_least_one))


@directive("seed", ("search", "train"))
class Seed(Directive):
    """`seed(0)`: seeds the strategy and every candidate's training (a `train` plan: the run)."""

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


# -- compress plans (read by archc.compress) -----------------------------------------


@directive("prune", "compress")
class Prune(Directive):
    """`prune(on="op:conv", amount=0.5, structured=true, exclude="conv1")`: remove the lowest-ranked
    `amount` of the channels (or heads) of the selected layers, group by group of coupled channels
    (scope "layer") or ranked across groups ("global"); `structured=false` masks single weights
    instead. `criterion`: l1 | l2 magnitude, bn_scale, taylor. An amount outside [0, 1) is E0801."""

    on: str = "op:conv,op:linear"
    amount: float = 0.5
    structured: bool = True
    criterion: Literal["l1", "l2", "bn_scale", "taylor"] = "l2"
    exclude: str | None = None
    scope: Literal["layer", "global"] = "layer"


@directive("quantize", "compress")
class Quantize(Directive):
    """`quantize(mode="dynamic", dtype="int8", on="op:linear")`: dynamic (weights int8, activations
    quantized on the fly), static (post-training, calibrated on `calibrate` examples of the plan's
    data) or qat (quantization-aware fine-tuning for `epochs`). `granularity`: one scale per tensor
    or per output channel. `on`: which nodes (default: every node the mode has a kernel for);
    selecting an op with no quantized kernel is E0802."""

    mode: Literal["dynamic", "static", "qat"] = "dynamic"
    dtype: Literal["int8", "int4"] = "int8"
    on: str | None = None
    granularity: Literal["tensor", "channel"] = "channel"
    calibrate: int = 256
    exclude: str | None = None
    epochs: int = 1

    _positive = field_validator("calibrate", "epochs")(classmethod(_at_least_one))


@directive("distill", "compress")
class Distill(Directive):
    """`distill(teacher=ResNet152(), temperature=4.0, soft_weight=0.9, hard_weight=0.1)`: train the
    model against a teacher (a model of this file or its imports, called with its arguments, or
    "file.arch:Model"), Hinton's loss: soft_weight · T² · KL(teacher ‖ student at temperature T)
    + hard_weight · cross-entropy. `alpha` is shorthand for soft_weight=alpha, hard_weight=1-alpha.
    `features=[["student.path", "teacher.path"], ...]` adds a mean-squared error between those
    nodes' outputs (through a learned projection when widths differ), weighted by `feature_weight`.
    `weights`: a safetensors file of the teacher's trained weights (else it is trained first)."""

    teacher: Any
    temperature: float = 4.0
    soft_weight: float | None = None
    hard_weight: float | None = None
    alpha: float | None = None
    features: list | None = None
    feature_weight: float = 1.0
    weights: str | None = None

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v):
        if v <= 0:
            raise ValueError("must be positive")
        return v

    @field_validator("soft_weight", "hard_weight", "feature_weight")
    @classmethod
    def _weight(cls, v):
        if v is not None and v < 0:
            raise ValueError("must not be negative")
        return v

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v):
        if v is not None and not 0 <= v <= 1:
            raise ValueError("must be in [0, 1]")
        return v

    def loss_weights(self) -> tuple[float, float]:
        """(soft, hard): explicit weights win; else alpha; else 0.9 and 0.1."""
        if self.soft_weight is not None or self.hard_weight is not None:
            soft = self.soft_weight if self.soft_weight is not None else 1.0 - (self.hard_weight or 0.0)
            hard = self.hard_weight if self.hard_weight is not None else 1.0 - soft
            return soft, hard
        a = 0.9 if self.alpha is None else self.alpha
        return a, 1.0 - a


@directive("data", "compress")
class CompressData(Data):
    """`data("digits")`: what compress plans train, fine-tune, calibrate and measure accuracy on
    (the held-out `test` split); the same arguments as a search plan's `data`."""


@directive("budget", "compress")
class CompressBudget(Directive):
    """`budget(epochs=10, tune=3, batch=64, lr=3e-3, seed=0)`: how long a compress plan trains
    the model (when no weights are given) and a distilled student (`epochs`), how long it
    fine-tunes after pruning (`tune`, 0 for none), the batch, the learning rate and the seed."""

    epochs: int | None = None
    steps: int | None = None
    tune: int = 0
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0

    _positive = field_validator("epochs", "steps", "batch")(classmethod(_at_least_one))

    @field_validator("tune")
    @classmethod
    def _non_negative(cls, v):
        if v < 0:
            raise ValueError("must not be negative")
        return v


# -- train plans (`archc train`: archc.runtime.objectives, archc.runtime.ensemble) ----------
# They also take data, budget and seed (above) and precision, optimizer, accumulate, checkpoint.


@directive("augment", "train")
class Augment(Directive):
    """`augment(pretext="rotate")`: how the data pipeline makes the inputs a model declares
    beyond the data's own (docs/language.md): views `view1`, `view2`... are random affine maps
    (rotation ±`rotate` degrees, `scale` range, ±`shift` pixels), intensity `jitter`, a cut-out
    square of `erase` pixels with probability `erase_p` and Gaussian `noise`; `pretext`
    "rotate" (RotNet) or "jigsaw" (`grid` x `grid` tiles) supplies `view`, `tiles`, `pretext`."""

    pretext: Literal["none", "rotate", "jigsaw"] = "none"
    rotate: float = 15.0
    scale: tuple[float, float] = (0.8, 1.1)
    shift: float = 1.0
    jitter: float = 0.3
    erase: int = 3
    erase_p: float = 0.5
    noise: float = 0.05
    grid: int = 2

    @field_validator("rotate", "shift", "jitter", "noise", "erase")
    @classmethod
    def _non_negative(cls, v):
        if v < 0:
            raise ValueError("must not be negative")
        return v

    @field_validator("erase_p")
    @classmethod
    def _probability(cls, v):
        if not 0 <= v <= 1:
            raise ValueError("must be in [0, 1]")
        return v

    @field_validator("scale")
    @classmethod
    def _scale(cls, v):
        if not 0 < v[0] <= v[1]:
            raise ValueError("must be a range (low, high) of positive numbers")
        return v

    @field_validator("grid")
    @classmethod
    def _grid(cls, v):
        if v not in (2,):
            raise ValueError("the jigsaw grid is 2 (24 permutations of 2 x 2 tiles)")
        return v


@directive("evaluate", "train")
class Evaluate(Directive):
    """`evaluate(every=50, monitor="loss", mode="min")`: evaluate on the validation split every
    `every` optimizer steps (default: after every epoch); `monitor` is the metric early
    stopping (`budget(patience=...)`) and the best checkpoint follow (default: "loss", minimized,
    for a model with a `loss` output; "accuracy", maximized, for a classifier)."""

    every: int | None = None
    monitor: str | None = None
    mode: Literal["min", "max"] | None = None

    _positive = field_validator("every")(classmethod(_at_least_one))


@directive("save", "train")
class Save(Directive):
    """`save("runs/simclr.ckpt", weights="runs/simclr.safetensors")`: where `archc train` writes
    its resumable checkpoint (after every epoch; `--resume` continues from it) and the final
    weights (safetensors, keyed by module path). Defaults: SPEC_DIR/STEM.PLAN.ckpt and
    SPEC_DIR/STEM.PLAN.safetensors."""

    path: str | None = None
    weights: str | None = None


@directive("members", "train")
class Members(Directive):
    """`members("bagging")`: how the members of the model's `ensemble` train (archc.runtime.ensemble):
    "independent" (each on the whole training split), "bagging" (each on its own bootstrap
    resample) or "boosting" (SAMME, members in sequence on reweighted examples; `shrinkage`
    scales their weights). With `ensemble(..., mode="stack")` the meta-learner then trains for
    `meta_epochs` at `meta_lr` on the members' predictions for the validation split."""

    method: Literal["independent", "bagging", "boosting"] = "independent"
    shrinkage: float = 1.0
    meta_epochs: int = 100
    meta_lr: float = 1e-2

    _positive = field_validator("meta_epochs")(classmethod(_at_least_one))

    @field_validator("shrinkage", "meta_lr")
    @classmethod
    def _positive_float(cls, v):
        if v <= 0:
            raise ValueError("must be positive")
        return v


@dataclass
class PlanDirective:
    name: str
    args: Directive
    span: Span | None
    spans: dict[str, Span] = field(default_factory=dict)  # argument name -> where it is written
    matched: list[str] | None = None  # what a graph-rewriting directive applied to (`archc check --plan`)

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
