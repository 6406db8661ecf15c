"""The public Python API: load or parse a spec, then check, build or render its models."""
from __future__ import annotations

import os
from typing import Any

from .compiler import resolve
from .compiler.diagnostics import CompileError, Diagnostic, did_you_mean
from .compiler.elaborate import Decider, Elaborator, Scope
from .compiler.ir import Graph
from .compiler.ops import REGISTRY
from .compiler.passes.count_cost import CostReport, count_cost
from .compiler.passes.apply_plan import apply_plan
from .compiler.plans import Plan, resolve_plan
from .compiler.space import Space, explore


class Program:
    """The declarations of one spec file and everything it imports."""

    def __init__(self, resolved: resolve.Program):
        self._prog = resolved

    @property
    def file(self) -> str:
        return self._prog.root

    @property
    def models(self) -> list[str]:
        """Models declared in this file (not those it imports)."""
        return self._prog.models()

    def _model(self, model: str | None) -> str:
        if model is not None:
            return model
        own = self.models
        if len(own) == 1:
            return own[0]
        if not own:
            raise CompileError(Diagnostic("E0104", f"`{self.file}` declares no model", None,
                                          help="pass the name of an imported model"))
        raise CompileError(Diagnostic("E0104", f"`{self.file}` declares several models: choose one", None,
                                      help="models: " + ", ".join(own)))

    def check_names(self) -> list[Diagnostic]:
        """Unknown names in this file's blocks and models, all at once."""
        return resolve.check_names(self._prog, REGISTRY, files=[self.file])

    @property
    def plans(self) -> list[str]:
        return [n for n, d in self._prog.plans.items() if d.span and d.span.file == self.file]

    def plan(self, name: str) -> Plan:
        """A plan's validated directives (positions kept for diagnostics)."""
        decl = self._prog.plans.get(name)
        if decl is None:
            raise CompileError(Diagnostic("E0104", f"no plan named `{name}`", None,
                                          help=did_you_mean(name, self._prog.plans) or
                                          ("plans here: " + ", ".join(self.plans) if self.plans else None)))
        elab = Elaborator(self._prog)
        return resolve_plan(decl, lambda e: elab.eval(e, Scope("", "plan " + name, ())))

    def graph(self, model: str | None = None, *, plan: str | Plan | None = None,
              dims: dict[str, int] | None = None, args: dict[str, Any] | None = None,
              choose: dict[str, Any] | None = None, sample: int | None = None, strict: bool = True,
              decisions: dict[str, int] | None = None, relax: str | None = None, **kwargs) -> Graph:
        """Elaborate a model into the graph IR (shapes inferred, symbols kept unless bound).

        With a plan, its model, model arguments and `dims` are the defaults. In a
        search space, `choose` fixes decisions by label (a candidate as written,
        or its index) and `sample` draws the rest from a seed; with neither, a
        choice is an error unless `strict=False`, which takes first candidates.
        `decisions` fixes decisions by candidate index (what search strategies use).
        `relax="darts"` (or "gdas", "pcdarts") builds the supernet instead: every
        cell edge and op choice a mixed op over all candidates, weighted by α."""
        span = None
        if plan is not None:
            p = self.plan(plan) if isinstance(plan, str) else plan
            if model is not None and model != p.model:
                raise CompileError(Diagnostic("E0104", f"plan `{p.name}` is for `{p.model}`, not `{model}`",
                                              p.span))
            model, dims, args, span = p.model, {**p.dims(), **(dims or {})}, {**p.args, **(args or {})}, p.span
        model = self._model(model)
        el = Elaborator(self._prog, dims)
        if decisions is not None:
            if choose:
                raise ValueError("pass either `choose` or `decisions`")
            choose = decisions
        el.decider = Decider(fixed=choose, seed=sample, default=not strict, by_index=decisions is not None)
        if relax is not None and relax not in ("darts", "gdas", "pcdarts"):
            raise CompileError(Diagnostic("E0207", f"unknown relaxation `{relax}`", span,
                                          help="relaxations: darts, gdas, pcdarts"))
        el.relax = relax
        try:
            graph = el.elaborate(model, {**(args or {}), **kwargs}, span=span)
        except CompileError as e:
            # An undecided choice is most likely the one whose label was misspelt.
            if not (e.diagnostics[0].code == "E0601" and any(lbl not in el.trace for lbl in choose or {})):
                raise
            graph = None
        unknown = [lbl for lbl in (choose or {}) if lbl not in el.trace]
        if unknown:
            raise CompileError(Diagnostic("E0601", f"no choice labelled `{unknown[0]}` in `{model}`", span,
                                          help=did_you_mean(unknown[0], el.trace) or
                                          ("labels: " + ", ".join(el.trace) if el.trace else
                                           f"`{model}` has no choices")))
        graph.decisions = {lbl: d.chosen for lbl, d in el.trace.items()}
        if plan is not None:
            graph = apply_plan(graph, p)
        from .compiler.ops.stochastic import check_ema  # an EMA target must match its source

        problems = check_ema(graph)
        if problems:
            raise CompileError(problems)
        return graph

    def derive(self, model: str | None = None, decisions: dict[str, int] | None = None, *,
               choose: dict[str, Any] | None = None, sample: int | None = None, args=None, **kwargs) -> str:
        """One candidate of a space as a plain .arch text with no choices left.

        Decide by index (`decisions`), by candidate as written (`choose`) or by seed (`sample`)."""
        from .compiler.derive import derive

        model = self._model(model)
        if decisions is None:
            graph = self.graph(model, choose=choose, sample=sample, args=args, **kwargs)
            decisions = graph.decisions
        return derive(self._prog, model, decisions, {**(args or {}), **kwargs})

    def space(self, model: str | None = None, *, dims=None, args=None, **kwargs) -> Space:
        """The decisions of a search space, its exact size, and candidates that fail to check."""
        return explore(self._prog, self._model(model), {**(args or {}), **kwargs}, dims)

    def check(self, model: str | None = None, *, plan=None, dims: dict[str, int] | None = None,
              args: dict[str, Any] | None = None, **kwargs) -> CostReport:
        """Check shapes and count parameters and FLOPs; raises CompileError with diagnostics."""
        kwargs.setdefault("strict", False)
        return count_cost(self.graph(model, plan=plan, dims=dims, args=args, **kwargs))

    def source(self, model: str | None = None, *, plan=None, dims=None, args=None, **kwargs) -> str:
        """The generated PyTorch source of a model."""
        from .compiler.lower.torch import generate

        kwargs.setdefault("strict", False)  # a space's source shows its first candidates
        return generate(self.graph(model, plan=plan, dims=dims, args=args, **kwargs), os.path.basename(self.file)).source

    def build(self, model: str | None = None, *, plan=None, dims=None, args=None, allow_large: bool = False,
              **kwargs):
        """Build a model as a torch.nn.Module whose state_dict keys are the spec's paths.

        Models over `LARGE_PARAMS` parameters are refused unless `allow_large=True`:
        checking a 175B model is instant, allocating it is not."""
        from .compiler.lower.torch import build_module

        graph = self.graph(model, plan=plan, dims=dims, args=args, **kwargs)
        check_size(graph, allow_large)
        return build_module(graph, os.path.basename(self.file))

    def render(self, model: str | None = None, *, plan=None, dims=None, args=None, alphas=None, color_by=None,
               **kwargs):
        """A graphviz.Digraph of the model: one node per op, a cluster per block instance.

        `relax="darts"` draws a search space's supernet (each cell edge a mixed op over its
        candidate ops); `alphas` (α tables by name, `{"normal": tensor or nested lists}`, or
        the path of a file `graphviz.load_alphas` reads: a DARTS search's `.darts.pt`
        checkpoint, `.safetensors`, `.json`) also sets each candidate's edge width and label
        by its softmax weight. With `alphas` and no `relax`, the supernet is relaxed with
        "darts" ("pcdarts" when the tables hold β). A derived `.arch` (cells with `genotype=`)
        draws its derived cells."""
        from .compiler.lower.graphviz import check_alphas, load_alphas, render

        kwargs.setdefault("strict", False)
        if isinstance(alphas, (str, os.PathLike)):
            alphas = load_alphas(alphas)
        if alphas is not None and kwargs.get("relax") is None:
            kwargs["relax"] = "pcdarts" if any(str(k).endswith("_beta") for k in alphas) else "darts"
        graph = self.graph(model, plan=plan, dims=dims, args=args, **kwargs)
        if alphas is not None:
            check_alphas(graph, alphas)
        return render(graph, alphas=alphas, color_by=color_by)


LARGE_PARAMS = 1_000_000_000  # 4 GB of fp32 weights


def check_size(graph: Graph, allow_large: bool) -> None:
    """E0401 for a build that would allocate more than LARGE_PARAMS parameters."""
    n = count_cost(graph).params
    if n > LARGE_PARAMS and not allow_large:
        raise CompileError(Diagnostic("E0401", f"`{graph.name}` has {n:,} parameters ({4 * n / 2**30:.1f} GiB in "
                                      f"fp32): more than {LARGE_PARAMS:,} to allocate", None,
                                      help="pass --allow-large (allow_large=True) to build it anyway; "
                                      "`archc check` and `archc mem` need no weights"))


def load(path: str | os.PathLike) -> Program:
    """Read and resolve a spec file (with its imports)."""
    return Program(resolve.load_file(path))


def parse(text: str, filename: str = "<string>") -> Program:
    """Resolve spec text; imports are relative to the current directory."""
    return Program(resolve.load_text(text, filename))
