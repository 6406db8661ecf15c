"""`lora(on=SELECTOR, r, alpha, ...)`, `merge`, `unmerge`, `set_adapter`: LoRA adapters
in the graph (finetune plans).

Each selected linear (GPT-2's fused, transposed c_attn included), embedding or conv
layer keeps its node, with its parameters frozen; the adapter is a new `lora` node at
the same path right after it (`lora(y, x)`, ops/lora.py), whose parameters are the
adapter's `lora_A.<name>.weight` [r, in] and `lora_B.<name>.weight` [out, r]. Several
adapters on one layer are a chain of `lora` nodes. Because base and adapter are separate
nodes, the parameter count, the trainable count, the memory estimate and the diagram all
see both, and freezing either one is one node's `frozen` flag.

The active adapter is the first one named in the plan (as PEFT's first adapter); the
others are kept, inactive and frozen, until `set_adapter`. `merge` folds an adapter into
its layers' weights at build time; a layer whose weight is tied to another module's is
never merged (E0705): the tensor has two uses, and merging would change the other one.

Diagnostics: a layer LoRA cannot adapt (E0701), a rank above the layer's smaller side
(E0702), an adapter name already on a layer (E0703), an unknown adapter (E0704).
"""
from __future__ import annotations

from ..diagnostics import CompileError, Diagnostic, did_you_mean
from ..ir import Graph, Node, Value
from ..lower.torch import _access
from ..ops import REGISTRY
from ..ops.lora import LoraAttrs, dims
from ..selectors import select
from .apply_plan import plan_pass

ADAPTABLE = ("linear", "embedding", "conv")


def _why_not(n: Node, dora: bool) -> str | None:
    """Why LoRA cannot adapt node `n` (None if it can)."""
    if n.op not in ADAPTABLE:
        return f"LoRA adapts linear, embedding and conv layers, not `{n.op}`"
    if n.op == "conv":
        a = n.attrs
        if a.groups != 1:
            return f"LoRA adapts convolutions with groups=1, not groups={a.groups}"
        dil = a.dilation if isinstance(a.dilation, tuple) else (a.dilation,)
        if any(d != 1 for d in dil):
            return f"LoRA adapts undilated convolutions, not dilation={a.dilation}"
    if dora and n.op != "linear":
        return f"DoRA adapts linear layers only, not `{n.op}`"
    return None


def _feeds_output(graph: Graph, n: Node) -> bool:
    outs = set(graph.outputs)
    return any(v in outs for v, _ in graph.users(n.id))


def _lora_chain(graph: Graph, base: Node) -> list[Node]:
    """The `lora` nodes already chained after a base node, in order."""
    chain, cur = [], base
    while True:
        nxt = [graph.node(v) for v, port in graph.users(cur.id) if port == 0]
        nxt = [m for m in nxt if m.op == "lora" and m.path == base.path]
        if len(nxt) != 1:
            return chain
        chain.append(nxt[0])
        cur = nxt[0]


def _tie_targets(graph: Graph) -> set[str]:
    """`path.param` of every parameter that another module ties to."""
    out = set()
    for n in graph.nodes():
        if n.op in ("input", "output"):
            continue
        try:
            for _, (target, _) in REGISTRY[n.op].tied(n.attrs, graph.in_types(n.id)).items():
                out.add(target)
        except Exception:  # noqa: BLE001 (an op that cannot say has no ties)
            pass
    return out


def _active_names(plan, d) -> set[str]:
    """The active adapters when directive `d` runs: the last `set_adapter` before it, else
    the name of the plan's first `lora`."""
    active = None
    for other in plan.directives if plan is not None else []:
        if other is d:
            break
        if other.name == "set_adapter":
            active = {t.strip() for t in other.args.name.split(",") if t.strip()}
    if active is not None:
        return active
    first = next((o for o in (plan.directives if plan is not None else []) if o.name == "lora"), d)
    return {first.args.name}


def _pattern(graph: Graph, entries, d, arg: str) -> list[tuple[set[int], object]]:
    out = []
    for sel, value in entries:
        out.append((select(graph, sel, span=d.at(arg), what=f"{arg} selector").nodes, value))
    return out


def _targets(graph: Graph, a, d) -> list[Node]:
    real = [n for n in graph.nodes() if n.op not in ("input", "output", "lora")]
    if a.on.strip() == "all-linear":
        nodes = [n for n in real if n.op == "linear" and not _feeds_output(graph, n)]
        if a.exclude:
            drop = select(graph, a.exclude, span=d.at("exclude"), what="lora exclude").nodes
            nodes = [n for n in nodes if n.id not in drop]
        if not nodes:
            raise CompileError(Diagnostic("E0701", "`all-linear` finds no linear layer to adapt", d.at("on"),
                                          help="the head (a linear layer giving a model output) is left out"))
        return nodes
    sel = select(graph, a.on, a.exclude, span=d.at("on"), what="lora selector")
    named = set(sel.modules)
    out, skipped = [], []
    for n in real:
        if n.id not in sel.nodes:
            continue
        why = _why_not(n, a.dora)
        if why is None:
            out.append(n)
        elif n.path in named or a.on.strip().startswith("op:"):
            raise CompileError(Diagnostic("E0701", f"LoRA cannot adapt `{n.path}` ({n.op})", d.at("on"),
                                          label=why, help="select linear, embedding or conv layers "
                                          "(a selected block or sequence adapts those inside it)"))
        else:
            skipped.append(n)
    if not out:
        what = skipped[0] if skipped else None
        raise CompileError(Diagnostic("E0701", f"`{a.on}` selects no layer LoRA can adapt", d.at("on"),
                                      help=(_why_not(what, a.dora) if what else
                                            "LoRA adapts linear, embedding and conv layers")))
    return out


@plan_pass("lora")
def insert_lora(graph: Graph, d, plan) -> Graph:
    a = d.args
    targets = _targets(graph, a, d)
    ranks = _pattern(graph, a.rank_pattern, d, "rank_pattern")
    alphas = _pattern(graph, a.alpha_pattern, d, "alpha_pattern")
    tied_to = _tie_targets(graph)
    active = a.name in _active_names(plan, d)
    matched: dict[str, None] = {}
    for base in targets:
        r, r_at = a.r, "r"
        for nodes, value in ranks:
            if base.id in nodes:
                r, r_at = value, "rank_pattern"
        alpha = a.alpha
        for nodes, value in alphas:
            if base.id in nodes:
                alpha = value
        ins = graph.in_values(base.id)
        x = ins[0]
        kind = base.op
        num, kernel = 0, ()
        if base.op == "linear" and base.attrs.transposed:
            kind = "transposed"
        if base.op == "embedding":
            num = base.attrs.num
        if base.op == "conv":
            kernel = tuple(REGISTRY["conv"].params(base.attrs, [x.type])["weight"][2:])
        chain = _lora_chain(graph, base)
        if any(m.attrs.adapter == a.name for m in chain):
            raise CompileError(Diagnostic("E0703", f"`{base.path}` already has an adapter named `{a.name}`",
                                          d.at("name") if "name" in d.spans else d.span,
                                          help="give this adapter another name: `name=\"task2\"`"))
        tail = chain[-1] if chain else base
        tied = bool(base.op == "linear" and base.attrs.tie) or f"{base.path}.weight" in tied_to
        attrs = LoraAttrs(r=r, alpha=alpha, adapter=a.name, dropout=a.dropout, init=a.init, rslora=a.rslora,
                          dora=a.dora, active=active, tied=tied, base=kind, num=num, kernel=kernel,
                          site=_access(base.path))
        y = Value(tail.id, 0, tail.outputs[0])
        n_in, n_out = dims(attrs, [y.type, x.type])
        if r > min(n_in, n_out):
            raise CompileError(Diagnostic(
                "E0702", f"rank {r} is larger than `{base.path}` allows ({n_in} -> {n_out})", d.at(r_at),
                help=f"a rank above min(in, out) = {min(n_in, n_out)} adds parameters and no expressiveness"))
        moved = list(graph.g.out_edges(tail.id, keys=True, data=True))
        node = graph.add("lora", attrs, [y, x], [tail.outputs[0]], base.path, span=base.span, calls=base.calls,
                         shared=base.shared)
        for u, v, key, data in moved:
            graph.g.remove_edge(u, v, key)
            graph.g.add_edge(node.id, v, **data)
        node.meta["lora"] = True
        node.meta["frozen"] = not active
        if base.meta.get("checkpoint"):
            node.meta["checkpoint"] = base.meta["checkpoint"]
        base.meta["frozen"] = True  # the adapted layer's own weights do not train
        matched[base.path] = None
    d.matched = list(matched)
    return graph


def _adapters(graph: Graph, d, name_arg: str = "name") -> tuple[list[Node], list[str]]:
    """The `lora` nodes of the adapters a directive names (comma-separated), within `on`."""
    names = [t.strip() for t in getattr(d.args, name_arg).split(",") if t.strip()]
    loras = [n for n in graph.nodes() if n.op == "lora"]
    have = sorted({n.attrs.adapter for n in loras})
    for name in names:
        if name not in have:
            raise CompileError(Diagnostic("E0704", f"no adapter named `{name}`", d.at(name_arg),
                                          help=did_you_mean(name, have) or
                                          ("adapters: " + ", ".join(have) if have else
                                           "add one first with `lora(on=..., name=...)`")))
    on = getattr(d.args, "on", "*")
    within = select(graph, on, span=d.at("on"), what=f"{d.name} selector").nodes if on != "*" else None
    picked = [n for n in loras if n.attrs.adapter in names and (within is None or n.id in within)]
    if not picked:
        raise CompileError(Diagnostic("E0704", f"`{on}` holds no adapter named {' or '.join(names)}", d.at("on")))
    return picked, names


def _set(node: Node, **update) -> None:
    node.attrs = node.attrs.model_copy(update=update)
    node.meta["frozen"] = not node.attrs.active or node.attrs.merged


@plan_pass("merge")
def merge(graph: Graph, d, plan) -> Graph:
    picked, _ = _adapters(graph, d)
    for n in picked:
        if n.attrs.tied:
            raise CompileError(Diagnostic(
                "E0705", f"cannot merge adapter `{n.attrs.adapter}` into `{n.path}`: its weight is tied to "
                         "another module's", d.span,
                help="the tied tensor has two uses and merging would change both; keep the adapter unmerged "
                     "or leave the tied layer out with `on=`"))
    for n in picked:
        _set(n, merged=True)
    d.matched = list(dict.fromkeys(n.path for n in picked))
    return graph


@plan_pass("unmerge")
def unmerge(graph: Graph, d, plan) -> Graph:
    picked, _ = _adapters(graph, d)
    for n in picked:
        _set(n, merged=False)
    d.matched = list(dict.fromkeys(n.path for n in picked))
    return graph


@plan_pass("set_adapter")
def set_adapter(graph: Graph, d, plan) -> Graph:
    _, names = _adapters(graph, d)
    touched = []
    for n in graph.nodes():
        if n.op == "lora":
            _set(n, active=n.attrs.adapter in names)
            if n.attrs.active:
                touched.append(n.path)
    d.matched = list(dict.fromkeys(touched))
    return graph
