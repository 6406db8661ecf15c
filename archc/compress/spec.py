"""Writing a graph back as a plain `.arch` spec (a pruned network's new widths).

The spec is rebuilt from the IR, not patched: pruning changes widths anywhere,
and two instances of one block may come out different. Every module keeps its
path, so the sliced weights load by name:

- each block instance becomes an instance of a generated block; instances whose
  bodies come out the same share one (`BasicBlock` when a block has one variant,
  `BasicBlock_v1`, `BasicBlock_v2`... when pruning made several);
- a sequence is written as a sequence (`layer1: [BasicBlock * 2]`), its children
  numbered as before; a block instance or op keeps its label, or is labelled when
  its automatic name would differ;
- values read once by the next statement are chained with `->`.

The model keeps its name and inputs; its hyperparameters are baked in as
numbers. No torch here.
"""
from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field

from ..compiler.diagnostics import CompileError, Diagnostic
from ..compiler.dims import Sym
from ..compiler.ir import Graph, Node
from ..compiler.ops import REGISTRY

RESERVED = {"import", "let", "block", "model", "train", "finetune", "compress", "search", "for", "in", "if", "else",
            "return", "input", "output", "assert", "and", "or", "not", "true", "false", "none", "range", "len",
            "min", "max", "abs", "choice", "cell"}
_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "matmul": "@"}


class SpecError(Exception):
    pass


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, Sym):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, float):
        r = repr(v)
        return r if ("e" in r or "." in r or "inf" in r or "nan" in r) else r + ".0"
    return str(v)


def _op_call(node: Node, skip_tensor_attrs=True) -> str:
    """`conv(32, 3, padding=1, bias=false)`: required fields positionally, the rest when not default."""
    op = REGISTRY[node.op]
    fields = op.Attrs.model_fields
    args, kwargs, positional = [], [], True
    for name, f in fields.items():
        if name in op.tensor_attrs:
            continue
        v = getattr(node.attrs, name)
        if f.is_required() and positional:
            args.append(_value(v))
            continue
        positional = False
        if not f.is_required() and v == f.default:
            continue
        kwargs.append(f"{name}={_value(v)}")
    inner = ", ".join(args + kwargs)
    return node.op if not inner else f"{node.op}({inner})"


@dataclass
class _Item:
    """One thing in a scope: an op node, or a child container (block instance or sequence)."""

    leaf: str
    node: Node | None = None
    path: str = ""
    kind: str = ""  # "op" | "block" | "seq"
    order: int = 0
    inputs: list = field(default_factory=list)  # (node, port) values read from outside
    outputs: list = field(default_factory=list)  # (node, port) values used outside


class _Writer:
    def __init__(self, graph: Graph):
        self.g = graph
        self.nodes = [n for n in graph.nodes()]
        self.order = {n.id: i for i, n in enumerate(self.nodes)}
        self.blocks: dict[str, str] = {}  # body text -> block name
        self.block_decls: list[str] = []
        self.variants: dict[str, int] = {}
        self.taken_names = set(REGISTRY) | RESERVED | {graph.name}

    # -- structure -----------------------------------------------------------------
    def _members(self, prefix: str) -> list[Node]:
        p = prefix + "." if prefix else ""
        return [n for n in self.nodes if n.op not in ("input", "output") and (not prefix or n.path.startswith(p))]

    def _io(self, members: list[Node]) -> tuple[list, list]:
        ids = {n.id for n in members}
        ins, outs = [], []
        for n in members:
            for v in self.g.in_values(n.id):
                key = (v.node, v.port)
                if v.node not in ids and key not in ins:
                    ins.append(key)
            for port in range(len(n.outputs)):
                if any(u not in ids for u, _ in self.g.users(n.id, port)):
                    outs.append((n.id, port))
        return ins, outs

    def _items(self, prefix: str) -> list[_Item]:
        """The direct children of a scope, in graph order."""
        depth = len(prefix.split(".")) if prefix else 0
        found: dict[str, _Item] = {}
        for n in self._members(prefix):
            parts = n.path.split(".")
            if len(parts) <= depth:
                raise SpecError(f"`{n.path}` sits at its container's own path")
            leaf = parts[depth]
            child = ".".join(parts[:depth + 1])
            if len(parts) == depth + 1 and child not in self.g.containers:
                it = _Item(leaf, n, child, "op", self.order[n.id])
                it.inputs = [(v.node, v.port) for v in self.g.in_values(n.id)]
                it.outputs = [(n.id, p) for p in range(len(n.outputs))]
                found[f"{child}#{n.id}"] = it
                continue
            kind = self.g.containers.get(child)
            if kind is None:
                raise SpecError(f"`{child}` is neither a module nor a block instance or sequence")
            if child not in found:
                found[child] = _Item(leaf, None, child, "seq" if kind == "seq" else
                                     "block" if kind.startswith("block:") else kind, self.order[n.id])
        items = sorted(found.values(), key=lambda it: it.order)
        for it in items:
            if it.node is None:
                if it.kind not in ("seq", "block"):
                    raise SpecError(f"`{it.path}` is a `{it.kind}` container: derive the search space first")
                it.inputs, it.outputs = self._io(self._members(it.path))
        return items

    # -- naming ------------------------------------------------------------------------
    def _block_name(self, path: str, body: str) -> str:
        base = self.g.containers[path].split(":", 1)[1]
        if body in self.blocks:
            return self.blocks[body]
        k = self.variants.get(base, 0) + 1
        self.variants[base] = k
        name = base if k == 1 and base not in self.taken_names else f"{base}_v{k}"
        while name in self.taken_names:
            k += 1
            name = f"{base}_v{k}"
        self.taken_names.add(name)
        self.blocks[body] = name
        return name

    # -- emitting ----------------------------------------------------------------------
    def stage(self, it: _Item, label: str | None) -> str:
        """The stage text of an item (without its inputs)."""
        if it.kind == "op":
            n = it.node
            text = _op_call(n)
            if REGISTRY[n.op].tensor_attrs:
                extra = it.inputs[REGISTRY[n.op].arity or 1:]
                if extra:
                    raise SpecError(f"`{n.path}` takes a tensor attribute; write it by hand")
        elif it.kind == "block":
            text = self.block(it)
        else:
            text = self.sequence(it)
        return f"{label}: {text}" if label else text

    def sequence(self, it: _Item) -> str:
        kids = self._items(it.path)
        prev = it.inputs
        stages = []
        for i, k in enumerate(kids):
            if k.leaf != str(i):
                raise SpecError(f"`{k.path}` in sequence `{it.path}` is not its child {i}")
            if k.inputs != prev:
                raise SpecError(f"the children of sequence `{it.path}` do not form a chain")
            prev = k.outputs
            stages.append(self.stage(k, None))
        if prev != it.outputs:
            raise SpecError(f"sequence `{it.path}` is used in the middle")
        merged: list[list] = []
        for s in stages:
            if merged and merged[-1][0] == s:
                merged[-1][1] += 1
            else:
                merged.append([s, 1])
        return "[" + ", ".join(s if n == 1 else f"{s} * {n}" for s, n in merged) + "]"

    def block(self, it: _Item) -> str:
        params = [f"x{i}" for i in range(len(it.inputs))]
        names = dict(zip(it.inputs, params))
        body, results = self.body(it.path, names, set(params))
        ret = results[0] if len(results) == 1 else "(" + ", ".join(results) + ")"
        lines = [f"    {s}" for s in body] + [f"    return {ret}"]
        text = "(" + ", ".join(params) + ") {\n" + "\n".join(lines) + "\n}\n"
        name = self._block_name(it.path, text)
        decl = f"block {name}{text}"
        if decl not in self.block_decls:
            self.block_decls.append(decl)
        return name

    def body(self, prefix: str, names: dict, used: set) -> tuple[list[str], list[str]]:
        """Statements of a scope; `names` maps values to the variables holding them.
        Returns the statements and the variables of the scope's outputs."""
        items = self._items(prefix)
        counters: dict[str, int] = {}
        claimed: set[str] = set()
        lines: list[str] = []
        users = {}
        for it in items:
            for key in it.inputs:
                users[key] = users.get(key, 0) + 1
        ids = {n.id for n in self._members(prefix)}
        outside = set()
        for n in self._members(prefix):
            for port in range(len(n.outputs)):
                if any(u not in ids for u, _ in self.g.users(n.id, port)):
                    outside.add((n.id, port))
        chain: list | None = None  # [head text, [stages], output keys]

        def var(base: str) -> str:
            base = re.sub(r"\W", "_", base)
            if not base or base[0].isdigit():
                base = "h_" + base
            name = base
            k = 1
            while name in used or name in self.taken_names or keyword.iskeyword(name):
                k += 1
                name = f"{base}_{k}"
            used.add(name)
            return name

        def flush():
            nonlocal chain
            if chain is None:
                return
            head, stages, outs, leaf = chain
            expr = head if not stages else (f"({head})" if " " in head and not head.startswith("(") else head) + \
                " -> " + " -> ".join(stages)
            targets = [var(leaf if len(outs) == 1 else f"{leaf}_{i}") for i in range(len(outs))]
            for key, t in zip(outs, targets):
                names[key] = t
            lines.append(f"{', '.join(targets)} = {expr}")
            chain = None

        def label_for(it: _Item) -> str | None:
            """A label when the automatic name would not be the path's own."""
            if it.kind == "seq":
                base = "seq"
            elif it.kind == "block":
                base = None  # decided once the block's name is known
            else:
                base = it.node.op
            if base is None:
                return it.leaf
            k = counters.get(base, 0)
            while f"{base}_{k}" in claimed:
                k += 1
            auto = f"{base}_{k}"
            if auto == it.leaf:
                counters[base] = k + 1
                claimed.add(auto)
                return None
            claimed.add(it.leaf)
            return it.leaf

        for it in items:
            if it.kind == "op" and it.node.shared:
                raise SpecError(f"`{it.path}` reuses a module; write the reuse by hand")
            lab = label_for(it) if it.kind == "op" else None
            if it.kind == "op" and it.node.op in {**_INFIX, "neg": 0, "scalar": 0} and lab is None:
                flush()
                args = [names[k] for k in it.inputs]
                n = it.node
                if n.op in _INFIX:
                    expr = f"{args[0]} {_INFIX[n.op]} {args[1]}"
                elif n.op == "neg":
                    expr = f"-{args[0]}"
                else:
                    expr = _scalar(args[0], n.attrs)
                chain = [expr, [], it.outputs, it.leaf]
                continue
            if it.kind == "block":
                text = self.block(it)
                blk = text
                k = counters.get(blk, 0)
                while f"{blk}_{k}" in claimed:
                    k += 1
                if f"{blk}_{k}" == it.leaf:
                    counters[blk] = k + 1
                    claimed.add(it.leaf)
                    st = text
                else:
                    claimed.add(it.leaf)
                    st = f"{it.leaf}: {text}"
            else:
                st = self.stage(it, lab if it.kind == "op" else label_for(it))
            if chain is not None and len(chain[2]) == 1 and it.inputs == chain[2] and users.get(chain[2][0]) == 1 \
                    and chain[2][0] not in outside:
                chain[1].append(st)
                chain[2] = it.outputs
                chain[3] = it.leaf
                continue
            flush()
            if not it.inputs:
                raise SpecError(f"`{it.path}` takes no tensor input")
            args = [names[k] for k in it.inputs]
            head = args[0] if len(args) == 1 else "(" + ", ".join(args) + ")"
            chain = [head, [st], it.outputs, it.leaf]
        flush()
        results = [names[k] for k in self._io(self._members(prefix))[1]] if prefix else []
        return lines, results

    def write(self, header: str = "") -> str:
        names: dict = {}
        used: set = set()
        head = []
        for i in self.g.inputs:
            n = self.g.node(i)
            name = n.attrs.name
            used.add(name)
            names[(i, 0)] = name
            t = n.outputs[0]
            head.append(f"    input {name}: {t.dtype}[{', '.join(str(d) for d in t.shape)}]")
        body, _ = self.body("", names, used)
        outs = []
        for o in self.g.outputs:
            v = self.g.in_values(o)[0]
            outs.append(f"    output {self.g.node(o).attrs.name} = {names[(v.node, v.port)]}")
        model = f"model {self.g.name}() {{\n" + "\n".join(head + [f"    {s}" for s in body] + outs) + "\n}\n"
        return header + "\n\n".join(self.block_decls + [model])


def _scalar(x: str, a) -> str:
    v = _value(a.value)
    if a.value < 0:
        v = f"({v})"
    return {"add": f"{x} + {v}", "sub": f"{x} - {v}", "rsub": f"{v} - {x}", "mul": f"{x} * {v}",
            "div": f"{x} / {v}", "rdiv": f"{v} / {x}", "pow": f"{x} ** {v}"}[a.op]


def write_spec(graph: Graph, header: str = "", span=None) -> str:
    """The graph as `.arch` text in the canonical layout (`archc fmt`'s); CompileError E0805 when
    its structure cannot be written (a search space's relaxed choices, a sequence that is not a chain)."""
    from ..grammar.parser import parse
    from ..grammar.printer import print_file

    w = _Writer(graph)
    try:
        text = w.write()
    except (SpecError, KeyError) as e:
        raise CompileError(Diagnostic("E0805", f"cannot write the compressed spec: {e}", span,
                                      help="the weights are still written; build the network from the original "
                                      "spec with the plan instead")) from None
    tree = parse(text, "<compressed>")
    out = print_file(tree)
    return header + out


__all__ = ["write_spec"]
