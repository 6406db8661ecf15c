"""Writing one candidate of a search space back as a plain `.arch` file.

Each `choice(...)` is replaced by the candidate it took. A choice inside a
block whose instances decided differently (an unlabelled choice is named by
its path, so each instance has its own) makes one copy of the block per
distinct set of decisions (`Blk_v1`, `Blk_v2`); call sites are renamed, and a
repetition whose copies differ is spelled out inside its sequence, so every
module keeps its path and the derived file builds the same network.
"""
from __future__ import annotations

import copy
import re
from dataclasses import fields

from ..grammar import ast as A
from .diagnostics import CompileError, Diagnostic
from .elaborate import Decider, Elaborator
from .resolve import Program


def _transform(node, fn):
    """Rebuild `node` bottom-up; `fn(node)` returns a replacement or None."""
    if isinstance(node, list):
        out = []
        for x in node:
            y = _transform(x, fn)
            out.extend(y if isinstance(y, _Splice) else [y])
        return out
    if not isinstance(node, A.Node):
        return node
    for f in fields(node):
        if f.name == "span":
            continue
        v = getattr(node, f.name)
        if isinstance(v, (A.Node, list)):
            setattr(node, f.name, _transform(v, fn))
    new = fn(node)
    return node if new is None else new


class _Splice(list):
    """Several items that replace one item of a list."""


def _names(node) -> set[str]:
    out: set[str] = set()

    def visit(n):
        if isinstance(n, A.Name):
            out.add(n.id)
        elif isinstance(n, A.PlanDecl):
            return n
        return None

    _transform(copy.deepcopy(node), visit)
    return out


def derive(prog: Program, model: str, decisions: dict[str, int], args=None, dims=None) -> str:
    """The spec of one candidate: `decisions` maps labels to candidate indices."""
    from ..grammar.printer import print_file

    el = Elaborator(prog, dims)
    el.decider = Decider(fixed=decisions, by_index=True)
    el.elaborate(model, dict(args or {}))

    chosen: dict[int, set[int]] = {}
    nodes: dict[int, A.Call] = {}
    for node, _prefix, idx in el.encounters:
        chosen.setdefault(id(node), set()).add(idx)
        nodes[id(node)] = node
    varying = {nid for nid, c in chosen.items() if len(c) > 1}
    for decl in prog.blocks.values():  # choices never reached count too
        for call in _all_choices(decl):
            nodes.setdefault(id(call), call)

    root = next(f for f in prog.files.values() if f.path == prog.root)
    root_decls = {d.name: d for d in root.decls if isinstance(d, (A.Let, A.BlockDecl))}

    # Blocks holding a choice that varies: one variant per distinct decision vector.
    variants: dict[str, dict[tuple, str]] = {}  # block -> decision vector -> variant name
    instance_variant: dict[str, str] = {}  # instance path -> variant block name
    block_choices: dict[str, list[int]] = {}
    for name, decl in prog.blocks.items():
        inside = [nid for nid in varying if _contains(decl, nodes[nid])]
        if inside:
            block_choices[name] = inside
    for path, (block, _span) in el.instances.items():
        if block not in block_choices:
            continue
        if block not in root_decls:
            raise CompileError(Diagnostic("E0601", f"cannot derive: block `{block}` is imported and its choices "
                                          "differ between instances", None,
                                          help="copy the block into the space's own file"))
        vec = tuple(next(i for n, p, i in el.encounters if id(n) == nid and p == path)
                    for nid in block_choices[block])
        table = variants.setdefault(block, {})
        table.setdefault(vec, f"{block}_v{len(table) + 1}")
        instance_variant[path] = table[vec]

    def pick(vec_of):
        def fn(n):
            if isinstance(n, A.Call) and id(n) in nodes:
                return copy.deepcopy(n.args[vec_of(id(n))])
            return None
        return fn

    def uniform(nid):  # a choice never reached (a branch not taken) keeps its first candidate
        return next(iter(chosen[nid])) if nid in chosen else 0

    # Call sites of varying blocks: rename, or spell out repetitions.
    by_span: dict = {}
    for path, (block, span) in el.instances.items():
        if path in instance_variant:
            by_span.setdefault(span, []).append((path, instance_variant[path]))

    pending: dict = {}  # repetitions whose copies differ, until their sequence spells them out
    stage_spans: set = set()  # call sites that are pipeline stages (a label may stand before them)
    for decl in root.decls:
        _walk(decl, lambda n: stage_spans.update(s.span for s in n.stages) if isinstance(n, A.Pipeline) else None)

    def rename_calls(n):
        if isinstance(n, A.ListExpr):
            items = []
            for item in n.items:
                call = item.left if isinstance(item, A.BinOp) and item.op == "*" else item
                sites = by_span.get(call.span)
                if sites and isinstance(item, A.BinOp) and call.span in pending:
                    items.extend(_callee(copy.deepcopy(call), v) for _, v in sites)
                    pending.pop(call.span)
                else:
                    items.append(item)
            n.items = items
            return None
        sites = by_span.get(n.span) if isinstance(n, (A.Call, A.Name)) else None
        if sites:
            names = {v for _, v in sites}
            if len(names) > 1:
                pending[n.span] = n
                return None
            path = sites[0][0]
            leaf = path.rsplit(".", 1)[-1]
            unlabelled = re.fullmatch(rf"{re.escape(_block_name(n))}_\d+", leaf)
            renamed = _callee(n, names.pop())
            if unlabelled and n.span in stage_spans:  # a stage keeps its unlabelled path under a label
                return A.Labelled(leaf, renamed, span=n.span)
            return renamed
        return None

    out_decls = [copy.deepcopy(d) for d in root.decls if isinstance(d, A.Import)]
    keep = _reachable(prog, model, root_decls)
    for d in root.decls:
        if not isinstance(d, (A.Let, A.BlockDecl)) or d.name not in keep:
            continue
        if d.name in variants:
            for vec, vname in variants[d.name].items():
                vd = copy.deepcopy(d)
                vd.name = vname
                lookup = dict(zip(block_choices[d.name], vec))
                # copies were deep-copied: map choice nodes by position in a parallel walk
                _replace_parallel(d, vd, nodes, lambda nid: lookup.get(nid, uniform(nid)))
                out_decls.append(_transform(vd, rename_calls))
            continue
        nd = copy.deepcopy(d)
        _replace_parallel(d, nd, nodes, uniform)
        out_decls.append(_transform(nd, rename_calls))
    if pending:
        span = next(iter(pending))
        raise CompileError(Diagnostic("E0601", "cannot derive: a repetition whose copies decided differently "
                                      "must be written inside a sequence", span,
                                      help="write `name: [Block(...) * N]`"))
    header = "# Derived by archc from {} (model {}): one candidate of the space, no choices left.\n".format(
        root.path, model)
    return header + print_file(A.File(out_decls, path=root.path))


def _all_choices(decl) -> list[A.Call]:
    found: list[A.Call] = []
    _walk(decl, lambda n: found.append(n) if isinstance(n, A.Call) and isinstance(n.func, A.Name)
          and n.func.id == "choice" else None)
    return found


def _block_name(n) -> str:
    return n.func.id if isinstance(n, A.Call) and isinstance(n.func, A.Name) else getattr(n, "id", "")


def _callee(n, name: str):
    if isinstance(n, A.Call) and isinstance(n.func, A.Name):
        n.func = A.Name(name, span=n.func.span)
        return n
    if isinstance(n, A.Name):
        return A.Name(name, span=n.span)
    return n


def _contains(tree, target) -> bool:
    found = []

    def fn(n):
        if n is target:
            found.append(n)
        return None

    _walk(tree, fn)
    return bool(found)


def _walk(node, fn) -> None:
    if isinstance(node, list):
        for x in node:
            _walk(x, fn)
        return
    if not isinstance(node, A.Node):
        return
    fn(node)
    for f in fields(node):
        if f.name != "span":
            _walk(getattr(node, f.name), fn)


def _replace_parallel(orig, copied, nodes: dict[int, A.Call], index_of) -> None:
    """Replace, in `copied` (a deep copy of `orig`), each choice call by its chosen candidate."""
    pairs: list[tuple] = []

    def collect(o, c):
        if isinstance(o, list):
            for i, (x, y) in enumerate(zip(o, c)):
                if isinstance(x, A.Node) and id(x) in nodes:
                    pairs.append((c, i, x))
                collect(x, y)
            return
        if not isinstance(o, A.Node):
            return
        for f in fields(o):
            if f.name == "span":
                continue
            x, y = getattr(o, f.name), getattr(c, f.name)
            if isinstance(x, A.Node) and id(x) in nodes:
                pairs.append((c, f.name, x))
            collect(x, y)

    collect(orig, copied)
    # innermost first, so a candidate containing a choice is already resolved when copied
    for holder, key, node in reversed(pairs):
        idx = index_of(id(node))
        if idx is None:
            continue
        cand = getattr(holder, key) if isinstance(key, str) else holder[key]
        new = copy.deepcopy(cand.args[idx])
        if isinstance(key, str):
            setattr(holder, key, new)
        else:
            holder[key] = new


def _reachable(prog: Program, model: str, root_decls: dict) -> set[str]:
    keep: set[str] = set()
    todo = [model]
    while todo:
        name = todo.pop()
        if name in keep or name not in root_decls:
            continue
        keep.add(name)
        todo.extend(_names(root_decls[name]))
    return keep
