"""Search spaces: the decisions of a model with choices, the exact size of the
space, and a check of every candidate.

A space is explored by elaborating the model under partial decisions (the
rest take their first candidate). The decisions met under an assignment that
were not met before are the ones it opens, so nesting (a choice inside a
chosen block, the extra copies of a depth choice, a choice behind an `if` on a
chosen value) is found without knowing the spec's structure, and the size is

    size(A, known) = prod over decisions d opened by A of
                     sum over candidates v of d of size(A + {d: v}, known + opened)

which takes one elaboration per (decision, candidate) in the decision tree,
never one per architecture. Siblings are assumed independent: what a decision
opens does not depend on another sibling's value.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .diagnostics import CompileError, Diagnostic, did_you_mean
from .elaborate import Decider, Decision, Elaborator
from .resolve import Program

MAX_RUNS = 20_000


@dataclass
class Space:
    model: str
    decisions: dict[str, Decision] = field(default_factory=dict)
    size: int = 1
    failures: list[tuple[dict[str, int], list[Diagnostic]]] = field(default_factory=list)
    runs: int = 0

    @property
    def is_space(self) -> bool:
        return bool(self.decisions)


class _Explorer:
    def __init__(self, prog: Program, model: str, args, dims):
        self.prog, self.model, self.args, self.dims = prog, model, args or {}, dims or {}
        self.cache: dict[frozenset, tuple[dict[str, Decision], list[Diagnostic] | None]] = {}
        self.space = Space(model)

    def run(self, assign: dict[str, int]):
        key = frozenset(assign.items())
        if key not in self.cache:
            if len(self.cache) >= MAX_RUNS:
                raise CompileError(Diagnostic("E0401", f"the space of `{self.model}` needs more than {MAX_RUNS} "
                                              "elaborations to explore", None,
                                              help="split the space or use fewer nested choices"))
            el = Elaborator(self.prog, self.dims)
            el.decider = Decider(fixed=assign, default=True, by_index=True)
            err = None
            try:
                el.elaborate(self.model, dict(self.args))
            except CompileError as e:
                err = e.diagnostics
                if any(d.code in ("E0601", "E0602") for d in err):
                    raise
            self.cache[key] = (el.trace, err)
            self.space.runs += 1
            for label, d in el.trace.items():
                known = self.space.decisions.setdefault(label, d)
                known.outs.update(d.outs)
            if err:
                self.space.failures.append((dict(assign), err))
        return self.cache[key]

    def size(self, assign: dict[str, int], known: frozenset) -> int:
        trace, _ = self.run(assign)
        # A decision that exists under a parent decision belongs to the parent's subtree.
        opened = [lbl for lbl in trace if lbl not in assign and lbl not in known
                  and (trace[lbl].parent is None or trace[lbl].parent in assign)]
        inner = known | set(opened)
        total = 1
        for lbl in opened:
            n = len(trace[lbl].candidates)
            if trace[lbl].leaf:  # its candidates open nothing: no need to elaborate each
                total *= n
                continue
            total *= sum(self.size({**assign, lbl: v}, inner) for v in range(n))
        return total


def explore(prog: Program, model: str, args: dict[str, Any] | None = None,
            dims: dict[str, int] | None = None) -> Space:
    """Decisions, exact size and per-candidate failures of a model's space."""
    ex = _Explorer(prog, model, args, dims)
    ex.space.size = ex.size({}, frozenset())
    return ex.space


def enumerate_space(prog: Program, model: str, args=None, dims=None, limit: int = 100_000) -> list[dict[str, int]]:
    """Every complete assignment, by brute force (for tests on small spaces)."""
    ex = _Explorer(prog, model, args, dims)
    out: list[dict[str, int]] = []

    def walk(assign: dict[str, int]) -> None:
        trace, _ = ex.run(assign)
        free = next((lbl for lbl in trace if lbl not in assign), None)
        if free is None:
            out.append(assign)
            if len(out) > limit:
                raise OverflowError("space too large to enumerate")
            return
        for v in range(len(trace[free].candidates)):
            walk({**assign, free: v})

    walk({})
    return out


def check_space(space: Space) -> list[Diagnostic]:
    """Diagnostics for a space: candidates whose shapes differ, and decisions that fail."""
    diags: list[Diagnostic] = []
    for d in space.decisions.values():
        shapes = set(d.outs.values())
        if len(shapes) > 1:
            detail = "; ".join(f"`{d.candidates[i]}` gives {t}" for i, t in sorted(d.outs.items()))
            diags.append(Diagnostic("E0603", f"the candidates of choice `{d.label}` produce different shapes",
                                    d.span, label=detail,
                                    help="candidates of an op choice must produce the same output shape"))
    seen: set[tuple] = set()
    for assign, errs in space.failures:
        for e in errs:
            key = (e.code, e.span and (e.span.line, e.span.column))
            if key in seen:
                continue
            seen.add(key)
            if assign:
                chosen = ", ".join(f"{lbl}={space.decisions[lbl].candidates[v]}" for lbl, v in assign.items())
                e.notes.append(f"when {chosen} (other choices at their first candidate)")
            else:
                e.notes.append("with every choice at its first candidate")
            diags.append(e)
    return diags


def unknown_labels(space: Space, fixed: dict[str, Any]) -> list[Diagnostic]:
    return [Diagnostic("E0601", f"no choice labelled `{lbl}` in `{space.model}`", None,
                       help=did_you_mean(lbl, space.decisions) or
                       "labels: " + ", ".join(space.decisions))
            for lbl in fixed if lbl not in space.decisions]
