"""`residual(on=SELECTOR)`: wrap each selected module as F(x) + x (the plan form of
`@residual`, LANGUAGE.md section 7).

Each selected module (a block instance, a sequence, or a single op) must take one tensor
and give one. When F(x) and x differ in shape, a projection is inserted, named as the
annotation names it: for images a 1x1 convolution with the stride that maps x's spatial
size onto F(x)'s, then batch norm (`shortcut.0`, `shortcut.1`); for features a `linear`
(`shortcut`). It sits inside the module when the module is a container (a block instance
or a sequence: `layer2.0.shortcut`), else beside it. `shortcut="downsample"` names it as
torchvision's ResNet does. An impossible projection (a rank change, a spatial size that is
not a whole multiple) is E0303; a module with several inputs or outputs is E0306.

`post_act=true`: when the module ends in an activation, the sum goes before it,
act(F'(x) + x) — the original ResNet's block (a plain VGG-style block conv-bn-relu-conv-
bn-relu becomes torchvision's BasicBlock).
"""
from __future__ import annotations

from ..diagnostics import CompileError, Diagnostic
from ..ir import Graph, Node, Value
from ..ops import REGISTRY
from ..selectors import select
from .apply_plan import plan_pass

ACTIVATIONS = ("relu", "gelu", "silu", "sigmoid", "tanh", "leaky_relu")


def _under(path: str, module: str) -> bool:
    return path == module or path.startswith(module + ".")


def _fresh(graph: Graph, prefix: str, base: str) -> str:
    taken = {n.path for n in graph.nodes()} | set(graph.containers)
    name, k = base, 0
    while any(_under(p, f"{prefix}{name}") for p in taken):
        k += 1
        name = f"{base}_{k}"
    return name


def _calls(members: list[Node], module: str):
    """The block-call chain down to the module (for `block:` selectors of what we add)."""
    for n in members:
        for i, site in enumerate(n.calls):
            if site.path == module:
                return n.calls[: i + 1]
    chains = [n.calls for n in members]
    common = chains[0]
    for c in chains[1:]:
        k = 0
        while k < min(len(common), len(c)) and common[k] == c[k]:
            k += 1
        common = common[:k]
    return common


def _add(graph: Graph, op: str, attrs: dict, inputs: list[Value], path: str, span, calls, meta) -> Value:
    o = REGISTRY[op]
    a = o.Attrs(**attrs)
    outs = o.infer(a, [v.type for v in inputs])
    node = graph.add(op, a, inputs, outs, path, span=span, calls=calls)
    node.meta.update(meta)
    return Value(node.id, 0, outs[0])


def _shortcut(graph: Graph, x: Value, y_type, where: str, name: str, span, calls, meta, d) -> Value:
    xs, ys = x.type.shape, y_type.shape
    bad = f"`residual` cannot project {x.type} onto {y_type}"
    if len(xs) != len(ys) or xs[0] != ys[0]:
        raise CompileError(Diagnostic("E0303", bad + f" around `{where or name}`", d.at("on"),
                                      help="the module must keep the rank and the batch"))
    prefix = where + "." if where else ""
    if len(xs) >= 3:
        strides = []
        for a, b in zip(xs[2:], ys[2:]):
            if not (isinstance(a, int) and isinstance(b, int) and b > 0 and a % b == 0) and a != b:
                raise CompileError(Diagnostic("E0303", bad + f": {a} is not a whole multiple of {b}", d.at("on"),
                                              help="the module may shrink spatial sizes only by whole strides"))
            strides.append(1 if a == b else a // b)
        stride = strides[0] if len(set(strides)) == 1 else tuple(strides)
        graph.containers[f"{prefix}{name}"] = "seq"
        h = _add(graph, "conv", dict(out=ys[1], kernel=1, stride=stride, bias=False), [x],
                 f"{prefix}{name}.0", span, calls, meta)
        return _add(graph, "bn", {}, [h], f"{prefix}{name}.1", span, calls, meta)
    if any(a != b for a, b in zip(xs[:-1], ys[:-1])):
        raise CompileError(Diagnostic("E0303", bad, d.at("on"), help="only the last axis may change for features"))
    return _add(graph, "linear", dict(out=ys[-1]), [x], f"{prefix}{name}", span, calls, meta)


@plan_pass("residual")
def insert_residual(graph: Graph, d, plan) -> Graph:
    a = d.args
    sel = select(graph, a.on, a.exclude, span=d.at("on"), what="residual selector")
    for module in sel.modules:
        members = [n for n in graph.nodes() if _under(n.path, module) and n.op not in ("input", "output")]
        ids = {n.id for n in members}
        ins = list(dict.fromkeys((v.node, v.port) for n in members for v in graph.in_values(n.id)
                                 if v.node not in ids))
        outs = [(n.id, k) for n in members for k in range(len(n.outputs))
                if any(u not in ids for u, _ in graph.users(n.id, k))]
        if len(ins) != 1 or len(outs) != 1:
            raise CompileError(Diagnostic(
                "E0306", f"`residual` wraps a module with one tensor input and one output; `{module}` has "
                         f"{len(ins)} input(s) and {len(outs)} output(s)", d.at("on"),
                help="select modules that map one tensor to one tensor"))
        src, port = ins[0]
        x = Value(src, port, graph.node(src).outputs[port])
        last = graph.node(outs[0][0])
        y = Value(last.id, outs[0][1], last.outputs[outs[0][1]])
        act = None
        if a.post_act and last.op in ACTIVATIONS and len(graph.in_values(last.id)) == 1 \
                and graph.in_values(last.id)[0].node in ids:
            act, y = last, graph.in_values(last.id)[0]
        container = module in graph.containers
        where = module if container else module.rpartition(".")[0]
        calls = _calls(members, module) if container else last.calls
        keys = {n.meta.get("checkpoint") for n in members}
        meta = {"checkpoint": keys.pop()} if len(keys) == 1 and None not in keys else {}
        span = last.span
        skip = x
        if x.type.shape != y.type.shape:
            skip = _shortcut(graph, x, y.type, where, _fresh(graph, where + "." if where else "", a.shortcut),
                             span, calls, meta, d)
        prefix = where + "." if where else ""
        total = _add(graph, "add", {}, [y, skip], prefix + _fresh(graph, prefix, "add"), span, calls, meta)
        if act is not None:  # the activation now reads the sum
            for u, v, key, data in list(graph.g.in_edges(act.id, keys=True, data=True)):
                graph.g.remove_edge(u, v, key)
            graph.g.add_edge(total.node, act.id, src_port=0, dst_port=0, type=total.type)
            if total.type != act.outputs[0]:  # pragma: no cover (element-wise ops keep the shape)
                raise CompileError(Diagnostic("E0301", f"`residual` changed the shape around `{module}`", d.at("on")))
        else:  # the module's users read the sum
            for u, v, key, data in list(graph.g.out_edges(y.node, keys=True, data=True)):
                if data["src_port"] == y.port and v not in ids and v != total.node and v != skip.node:
                    graph.g.remove_edge(u, v, key)
                    graph.g.add_edge(total.node, v, **{**data, "type": total.type})
    d.matched = list(sel.modules)
    return graph
