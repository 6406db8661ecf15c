"""From a supernet's architecture parameters to one architecture: named, swappable rules.

A relaxed search (DARTS and its kin) ends with α tables, one per decision group
(`arch.normal`, `arch.reduce`: one row per cell edge, one column per op). A
*derivation rule* turns them into the discrete decisions of the same space, so
the result can be built (`Program.graph(model, decisions=...)`), checked, or
written back as a plain `.arch` file:

    from archc.search.derive_rules import derive, derive_arch

    result = derive(prog, "DartsSearch", dict(net.named_arch_parameters()), rule="darts")
    result.decisions       # {"normal.node0.inputs": 1, "normal.node0.edge0": 3, ...}
    print(result.summary())  # Genotype(normal=[('sep_conv_3x3', 0), ...], reduce=[...])
    text = derive_arch(prog, "DartsSearch", result)   # .arch text, no choices left

Rules (`RULES`, add one with `@rule("name")`):

- `darts`   the reference DARTS rule: w = softmax(α) per edge over all ops,
            zero included; each node keeps its top-K incoming edges ranked by
            their best non-zero op weight, and on each the best non-zero op.
            Cells with keep="all" keep every edge (best non-zero op on each).
- `pcdarts` `darts` with PC-DARTS's edge normalisation: an edge's op weights
            are multiplied by softmax(β) over its node's edges before ranking.
- `raw`     the ranking other tools use: `darts` on the raw α (no softmax),
            edges ranked by their largest non-zero α.
- `nb201`   NAS-Bench-201's: argmax of α on every edge, zero allowed (cells
            with keep="all" only).

A rule is `fn(layout, alpha, beta) -> genotype`: `alpha` the table as nested
lists (rows x ops), `beta` the node-edge weights' table or None, and the result
one list per intermediate node of `(input index, α column)` pairs. Never
imports torch: tables may be tensors (read with `.tolist()`) or nested lists.
"""
from __future__ import annotations

import copy
import itertools
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Genotype = list[list[tuple[int, int]]]  # per node: (input index, α column)
Rule = Callable[["CellLayout", list, "list | None"], Genotype]

RULES: dict[str, Rule] = {}


def rule(name: str):
    """Register a derivation rule under `name` (replacing one of the same name)."""

    def deco(fn: Rule) -> Rule:
        RULES[name] = fn
        return fn

    return deco


def get_rule(name: str | Rule) -> Rule:
    if callable(name):
        return name
    if name not in RULES:
        raise ValueError(f"unknown derivation rule `{name}`; rules: {', '.join(RULES)}")
    return RULES[name]


# -- what a cell group looks like ------------------------------------------------------

def ident(label: str) -> str:
    """The name of a group's α table (the elaborator's: non-word characters become `_`)."""
    return re.sub(r"\W", "_", label)


@dataclass
class CellLayout:
    """A decision group of cells: its α table's rows and columns, and its decisions' labels."""

    group: str  # the cells' `group` ("normal")
    inputs: int  # the cell's input states
    nodes: int  # intermediate nodes
    keep: int | None  # inputs kept per node; None: keep="all"
    ops: list[str]  # α columns: the ops by name
    zero: list[bool]  # which columns are `zero`
    discrete: list[int] = field(default_factory=list)  # edge decision's candidate index -> α column

    @property
    def table(self) -> str:
        return ident(self.group)

    @property
    def beta_table(self) -> str:
        return ident(self.group + ".beta")

    def rows(self) -> list[tuple[int, int]]:
        """(node, input) of each α row, in the table's order."""
        return [(j, i) for j in range(self.nodes) for i in range(self.inputs + j)]

    def start(self, j: int) -> int:
        """The first row of node j."""
        return j * self.inputs + j * (j - 1) // 2

    def nonzero(self) -> list[int]:
        return [k for k, z in enumerate(self.zero) if not z]


def _op_name(cand: str) -> str:
    """`nor_conv_3x3(affine=True)` -> `nor_conv_3x3`; `sep_conv(3)` stays as it is."""
    m = re.fullmatch(r"(\w+)\((.*)\)", cand)
    if m and all(re.fullmatch(r"\s*\w+\s*=.*", part) for part in m.group(2).split(",")):
        return m.group(1)
    return cand


def cell_layouts(program, model: str | None = None, *, args: dict | None = None, dims: dict | None = None,
                 relaxed=None, relax: str = "darts") -> dict[str, CellLayout]:
    """The layout of every cell group of a space, by group. `relaxed` is the supernet's graph
    if it is at hand (else it is elaborated); it tells where `zero` sits among the ops."""
    from ..compiler.elaborate import Decider, Elaborator

    args = dict(args or {})
    model = program._model(model)
    if relaxed is None:
        relaxed = program.graph(model, dims=dims, args=args, relax=relax)
    el = Elaborator(program._prog, dims)  # the decisions, with their candidates as written
    el.decider = Decider(default=True)
    el.elaborate(model, args)
    trace = el.trace

    # zero columns and table sizes from the supernet
    zero_cols: dict[str, list[bool]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for n in relaxed.nodes():
        if n.op == "arch_param":
            sizes[n.path.split(".", 1)[1]] = (n.attrs.rows, n.attrs.cols)
        elif n.op == "mixed":
            ins = relaxed.in_values(n.id)
            table = relaxed.node(ins[0].node).path.split(".", 1)[1]
            if table not in zero_cols:
                zero_cols[table] = [relaxed.node(v.node).op == "zero" for v in ins[1:]]

    groups: dict[str, dict[str, Any]] = {}
    for label in trace:
        m = re.fullmatch(r"(.+)\.node(\d+)\.(inputs|edge(\d+))", label)
        if not m:
            continue
        g = groups.setdefault(m.group(1), {"nodes": 0, "keep": None, "edge": None})
        g["nodes"] = max(g["nodes"], int(m.group(2)) + 1)
        if m.group(3) == "inputs":
            g["keep"] = len(trace[label].candidates[0].split("+"))
        elif g["edge"] is None:
            g["edge"] = trace[label].candidates
    out: dict[str, CellLayout] = {}
    for group, g in groups.items():
        table = ident(group)
        if table not in sizes or table not in zero_cols:
            raise ValueError(f"the supernet has no α table for cell group `{group}`")
        rows, cols = sizes[table]
        nodes = g["nodes"]
        inputs = (rows - nodes * (nodes - 1) // 2) // nodes
        zero = zero_cols[table]
        keep = g["keep"]
        disc = [k for k in range(cols) if keep is None or not zero[k]]
        names = ["zero"] * cols
        for cand, k in zip(g["edge"], disc):
            names[k] = _op_name(cand)
        out[group] = CellLayout(group, inputs, nodes, keep, names, zero, disc)
    return out


# -- the rules ---------------------------------------------------------------------------

def _softmax(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def _best(row: list[float], cols: list[int]) -> int:
    """The column of the largest weight among `cols`; the first on ties."""
    best = cols[0]
    for k in cols[1:]:
        if row[k] > row[best]:
            best = k
    return best


def _topk(layout: CellLayout, w: list[list[float]]) -> Genotype:
    """Per node: the top-K edges by their best non-zero weight, each with its best non-zero op."""
    nz = layout.nonzero()
    if not nz:
        raise ValueError(f"cell group `{layout.group}` has only `zero` ops")
    out: Genotype = []
    for j in range(layout.nodes):
        start, n = layout.start(j), layout.inputs + j
        rows = w[start:start + n]
        ranked = sorted(range(n), key=lambda i: -max(rows[i][k] for k in nz))
        kept = ranked[:layout.keep] if layout.keep is not None else list(range(n))
        out.append([(i, _best(rows[i], nz)) for i in kept])
    return out


@rule("darts")
def darts_rule(layout: CellLayout, alpha: list, beta=None) -> Genotype:
    """DARTS: softmax over all ops (zero included), top-K edges by best non-zero weight."""
    return _topk(layout, [_softmax(r) for r in alpha])


@rule("pcdarts")
def pcdarts_rule(layout: CellLayout, alpha: list, beta=None) -> Genotype:
    """PC-DARTS: as `darts`, each edge's weights scaled by softmax(β) over its node's edges."""
    w = [_softmax(r) for r in alpha]
    if beta is not None:
        flat = [b[0] if isinstance(b, (list, tuple)) else b for b in beta]
        for j in range(layout.nodes):
            start, n = layout.start(j), layout.inputs + j
            for i, e in enumerate(_softmax(flat[start:start + n])):
                w[start + i] = [v * e for v in w[start + i]]
    return _topk(layout, w)


@rule("raw")
def raw_rule(layout: CellLayout, alpha: list, beta=None) -> Genotype:
    """Rank edges and ops by the raw α (no softmax), zero excluded."""
    return _topk(layout, [list(r) for r in alpha])


@rule("nb201")
def nb201_rule(layout: CellLayout, alpha: list, beta=None) -> Genotype:
    """NAS-Bench-201: the argmax of every edge, zero allowed."""
    if layout.keep is not None:
        raise ValueError(f"rule `nb201` keeps every edge, but cell group `{layout.group}` keeps {layout.keep} "
                         "inputs per node; use `darts`")
    cols = list(range(len(layout.ops)))
    return [[(i, _best(alpha[layout.start(j) + i], cols)) for i in range(layout.inputs + j)]
            for j in range(layout.nodes)]


# -- tables -> decisions -------------------------------------------------------------------

def _table(t) -> list:
    if hasattr(t, "detach"):
        t = t.detach().cpu()
    if hasattr(t, "tolist"):
        t = t.tolist()
    return [list(r) if isinstance(r, (list, tuple)) else r for r in t]


@dataclass
class Derived:
    """A derived architecture: its decisions, and its genotype by group."""

    rule: str
    decisions: dict[str, int]
    genotypes: dict[str, list[list[tuple[str, int]]]]  # group -> per node [(op, input)]
    columns: dict[str, Genotype]  # group -> per node [(input, α column)]
    layouts: dict[str, CellLayout]

    def summary(self) -> str:
        """The genotype as the reference code prints it: DARTS's `Genotype(normal=[...],
        normal_concat=[2, 3, 4, 5], ...)` for cells that keep K inputs, NAS-Bench-201's
        `|op~0|+|op~0|op~1|` for cells that keep all of them."""
        parts, others = [], []
        for group, g in self.genotypes.items():
            lay = self.layouts[group]
            if lay.keep is None:
                others.append(f"{group}: " + "+".join("|" + "|".join(f"{op}~{i}" for op, i in node) + "|"
                                                      for node in g))
                continue
            flat = ", ".join(f"({op!r}, {i})" for node in g for op, i in node)
            concat = list(range(lay.inputs, lay.inputs + lay.nodes))
            parts.append(f"{group}=[{flat}], {group}_concat={concat}")
        text = f"Genotype({', '.join(parts)})" if parts else ""
        return "\n".join([text] * bool(text) + others)


def derive(program, model: str | None, alphas: Mapping[str, Any], rule: str | Rule = "darts", *,
           args: dict | None = None, dims: dict | None = None,
           layouts: dict[str, CellLayout] | None = None, relaxed=None) -> Derived:
    """Decisions for `model` from its α tables (`{"normal": tensor, "reduce": ..., "normal_beta": ...}`,
    as `Supernet.named_arch_parameters()` gives them; an `arch.` prefix is allowed) by `rule`.

    Tables of op choices outside cells (one row each) take their argmax."""
    fn = get_rule(rule)
    name = rule if isinstance(rule, str) else getattr(rule, "__name__", "custom")
    tables = {k.removeprefix("arch."): _table(v) for k, v in alphas.items()}
    if layouts is None:
        layouts = cell_layouts(program, model, args=args, dims=dims, relaxed=relaxed)
    decisions: dict[str, int] = {}
    genotypes: dict[str, list] = {}
    columns: dict[str, Genotype] = {}
    used = set()
    for group, lay in layouts.items():
        if lay.table not in tables:
            raise ValueError(f"no α table `{lay.table}` for cell group `{group}`; tables: {', '.join(tables)}")
        alpha = tables[lay.table]
        used |= {lay.table, lay.beta_table}
        n_rows = len(lay.rows())
        if len(alpha) != n_rows or any(len(r) != len(lay.ops) for r in alpha):
            raise ValueError(f"α table `{lay.table}` should be {n_rows} x {len(lay.ops)}")
        geno = fn(lay, alpha, tables.get(lay.beta_table))
        columns[group] = geno
        genotypes[group] = [[(lay.ops[k], i) for i, k in node] for node in geno]
        decisions.update(to_decisions(lay, geno))
    choices = [t for t in tables if t not in used and len(tables[t]) == 1]
    if choices:  # relaxed op choices outside cells: their argmax, under their label
        labels = {ident(lbl): lbl for lbl in program.graph(model, args=args, dims=dims, strict=False).decisions}
        for table in choices:
            t = tables[table][0]
            decisions[labels.get(table, table)] = _best(t, list(range(len(t))))
    return Derived(name, decisions, genotypes, columns, layouts)


def to_decisions(layout: CellLayout, genotype: Genotype) -> dict[str, int]:
    """The decisions (label -> candidate index) of a genotype of one cell group."""
    out: dict[str, int] = {}
    g = layout.group
    for j, node in enumerate(genotype):
        n_in = layout.inputs + j
        chosen = sorted(i for i, _ in node)
        if layout.keep is not None:
            combos = list(itertools.combinations(range(n_in), layout.keep))
            if tuple(chosen) not in combos:
                raise ValueError(f"node {j} of `{g}` must keep {layout.keep} distinct inputs, got {chosen}")
            out[f"{g}.node{j}.inputs"] = combos.index(tuple(chosen))
        elif chosen != list(range(n_in)):
            raise ValueError(f"node {j} of `{g}` keeps every input, got {chosen}")
        for i, k in node:
            if k not in layout.discrete:
                raise ValueError(f"`{layout.ops[k]}` on edge {i} of node {j} of `{g}` is not a candidate "
                                 "(`zero` is not one where nodes keep K inputs)")
            out[f"{g}.node{j}.edge{i}"] = layout.discrete.index(k)
    return out


# -- writing the result back as .arch text -----------------------------------------------------

def derive_arch(program, model: str | None, derived: Derived | dict[str, int], *, args: dict | None = None) -> str:
    """The derived architecture as a plain `.arch` file, self-contained.

    `Program.derive` resolves `choice(...)`; a `cell(...)` it leaves as it is is
    given a `genotype=` argument here (per group: `genotype=G1 if GROUP == "normal"
    else G2`), written with the cell's own `ops` (the op as written in the `ops`
    list, or `OPS[k]`), so every module keeps its path. A model imported by the
    program's file (`import std.darts` and a plan for `DartsSearch`) is derived
    from the file that declares it; `args` become the model's defaults, so the
    file builds the searched network as it is."""
    from .. import api
    from ..grammar import ast as A
    from ..grammar.parser import parse

    if isinstance(derived, dict):
        decisions, genotypes = derived, None
    else:
        decisions, genotypes = derived.decisions, derived.columns
    model = program._model(model)
    home = program._prog.blocks[model].span.file
    source = program if home == program.file else api.load(home)
    text = source.derive(model, decisions, args=args)
    tree = parse(text, filename=home)
    args = dict(args or {})
    left = _bake_args(tree, model, args)
    if home != program.file:  # relative imports of the model's file: make them absolute
        for d in tree.decls:
            if isinstance(d, A.Import) and not d.is_std and not os.path.isabs(d.target):
                d.target = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(home)), d.target))
    calls = _cell_calls(tree)
    if calls and genotypes is None:
        raise ValueError("the space has cells: pass the `Derived` result, not bare decisions")
    lets = {name: d.value for name, d in source._prog.lets.items()}  # imported ones too
    lets.update({d.name: d.value for d in tree.decls if isinstance(d, A.Let)})
    taken = set(lets) | set(source._prog.blocks) | {d.name for d in tree.decls if isinstance(d, A.BlockDecl)}
    new_lets: list = []
    for call in calls:
        kw = {k.name: k for k in call.kwargs}
        if "group" not in kw:
            raise ValueError("cannot write a cell without `group=` back as .arch (each instance is its own group)")
        ops = kw["ops"].value if "ops" in kw else None
        items = ops.items if isinstance(ops, A.ListExpr) else (
            lets[ops.id].items if isinstance(ops, A.Name) and isinstance(lets.get(ops.id), A.ListExpr) else None)
        # a genotype that refers to the block's own variables (an inline `ops` list, a parameter)
        # is written in place; one over a file-level `let` list gets a `let` of its own
        local = not (isinstance(ops, A.Name) and isinstance(lets.get(ops.id), A.ListExpr))

        def op_ast(k):
            if items is not None:
                return copy.deepcopy(items[k])
            return A.Index(copy.deepcopy(ops), A.Num(k, text=str(k)))

        def literal(geno: Genotype):
            return A.ListExpr([A.ListExpr([A.ListExpr([op_ast(k), A.Num(i, text=str(i))]) for i, k in node])
                               for node in geno])

        def named(g: str):
            if local:  # the ops use the block's own variables: write the genotype in place
                return literal(genotypes[g])
            name = "GENOTYPE_" + ident(g).upper()
            while name in taken:
                name += "_"
            taken.add(name)
            new_lets.append(A.Let(name, literal(genotypes[g])))
            return A.Name(name)

        groups = list(genotypes)
        values = {g: named(g) for g in groups}
        expr = values[groups[-1]]
        for g in reversed(groups[:-1]):
            test = A.BinOp("==", copy.deepcopy(kw["group"].value), A.Str(g))
            expr = A.Cond(values[g], test, expr)
        call.kwargs = call.kwargs + [A.Kwarg("genotype", expr)]
    first = next((i for i, d in enumerate(tree.decls) if isinstance(d, A.BlockDecl)), len(tree.decls))
    tree.decls[first:first] = new_lets
    from ..grammar.printer import print_file

    out = print_file(tree)
    if not isinstance(derived, dict):
        head = [f"# Cells derived from the supernet's α by the `{derived.rule}` rule:"]
        head += ["#   " + line for line in derived.summary().splitlines()]
        first, sep, rest = out.partition("\n")
        out = (first + sep + "\n".join(head) + "\n" + rest) if first.startswith("#") else \
            "\n".join(head) + "\n" + out
    if left:
        note = "# Build it with " + ", ".join(f"{k}={v!r}" for k, v in left.items()) + " (not writable as defaults)"
        first, sep, rest = out.partition("\n")
        out = first + sep + note + "\n" + rest
    check = api.parse(out, filename=home)
    leftover = check.graph(model, args=left, strict=False).decisions
    if leftover:
        raise ValueError(f"the derived file still has undecided choices: {', '.join(list(leftover)[:4])}")
    return out


def _literal(v):
    """The AST of a plain value, or None."""
    from ..grammar import ast as A

    if isinstance(v, bool) or v is None:
        return A.Const(v)
    if isinstance(v, (int, float)):
        return A.Num(v, text=repr(v))
    if isinstance(v, str):
        return A.Str(v)
    if isinstance(v, (list, tuple)):
        items = [_literal(x) for x in v]
        return None if any(i is None for i in items) else A.ListExpr(items)
    return None


def _bake_args(tree, model: str, args: dict) -> dict:
    """Write `args` as the model's parameter defaults; returns those that could not be written."""
    from ..grammar import ast as A

    decl = next((d for d in tree.decls if isinstance(d, A.BlockDecl) and d.name == model), None)
    left = {}
    for k, v in args.items():
        p = next((p for p in decl.params if p.name == k), None) if decl else None
        lit = _literal(v)
        if p is None or lit is None:
            left[k] = v
            continue
        p.default = lit
    return left


def _cell_calls(tree) -> list:
    from dataclasses import fields

    from ..grammar import ast as A

    found = []

    def walk(n):
        if isinstance(n, list):
            for x in n:
                walk(x)
            return
        if not isinstance(n, A.Node):
            return
        if isinstance(n, A.Call) and isinstance(n.func, A.Name) and n.func.id == "cell" and \
                not any(k.name == "genotype" for k in n.kwargs):
            found.append(n)
        for f in fields(n):
            if f.name != "span":
                walk(getattr(n, f.name))

    walk([d for d in tree.decls if not isinstance(d, A.Import)])
    return found
