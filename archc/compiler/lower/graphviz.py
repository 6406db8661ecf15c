"""The Graphviz diagram of a graph: one node per op, one cluster per module container.

Hierarchy comes from data, not nesting: a node belongs to the deepest
container (block instance or labelled sequence, from `graph.containers` and the
node's call chain) whose path is a dotted prefix of the node's path. Graphviz
node names are the IR node ids, so the same graph always gives the same source.
Never imports torch.
"""
from __future__ import annotations

import html
import math
import re
from typing import Callable

import graphviz

from ..ir import Graph, Node, TensorType
from ..ops import REGISTRY
from .report import human

FONT = "Helvetica"
# Attributes that would only clutter a box; the tooltip still has every attribute.
_HIDDEN = {"padding", "bias", "eps", "momentum", "affine", "ceil_mode", "count_include_pad",
           "output_padding", "name"}
_ABBREV = {"stride": "s", "dilation": "d", "groups": "g"}
_CLUSTER_FILL = ("#f4f7fb", "#e8eef7", "#dde6f3", "#d2ddef")


def render(graph: Graph, *, color_by: Callable[[Node], str | None] | None = None) -> graphviz.Digraph:
    """A graphviz.Digraph of `graph`, laid out top to bottom.

    `color_by(node)` may return a fill colour for an op node (any Graphviz
    colour: "#ffcc00", "red", "0.1 0.5 1.0"), or None to keep the default.
    """
    dot = graphviz.Digraph(name=graph.name)
    dot.attr(rankdir="TB", fontname=FONT, fontsize="16", label=graph.name, labelloc="t",
             ranksep="0.28", nodesep="0.3", newrank="true")
    dot.attr("node", fontname=FONT, fontsize="11", shape="box", style="rounded,filled",
             fillcolor="white", color="#4a5a70", margin="0.12,0.04", height="0.3")
    dot.attr("edge", fontname=FONT, fontsize="8", fontcolor="#5a5a5a", color="#7a7a7a",
             arrowsize="0.6")

    nodes = graph.nodes()
    kinds = _clusters(graph, nodes)
    params = {n.id: _params(graph, n) for n in nodes}

    # The cluster tree: each container's parent is its longest proper prefix that is a container.
    members: dict[str, list] = {"": []}  # cluster path -> ordered items: node ids and child paths
    totals: dict[str, int] = {}
    for n in nodes:
        home = _home(n, kinds)
        chain = _ancestors(home, kinds)  # outermost first, ending with home
        parent = ""
        for c in chain:
            if c not in members:
                members[c] = []
                members[parent].append(c)
            totals[c] = totals.get(c, 0) + params[n.id]
            parent = c
        members[home].append(n.id)

    def fill(target: graphviz.Digraph, path: str, depth: int) -> None:
        for item in members[path]:
            if isinstance(item, int):
                _node(target, graph, graph.node(item), params[item], color_by)
                continue
            sub = graphviz.Digraph(name="cluster_" + item)
            sub.attr(label=_cluster_label(item, kinds[item], totals[item]), labeljust="l",
                     fontname=FONT, fontsize="10", fontcolor="#33415c", margin="10")
            if kinds[item].startswith("block:"):
                sub.attr(style="rounded,filled", color="#8fa3c0",
                         fillcolor=_CLUSTER_FILL[depth % len(_CLUSTER_FILL)])
            else:
                sub.attr(style="rounded,dashed", color="#9a9a9a", fillcolor="none")
            fill(sub, item, depth + 1)
            target.subgraph(sub)

    fill(dot, "", 0)

    # Edges last, at the top level, so no edge statement declares a node inside a cluster.
    for n in nodes:
        for port, v in enumerate(graph.in_values(n.id)):
            # The first input is the main data path: keep it straight, let side inputs bend.
            extra = {"weight": "3" if port == 0 else "1"}
            if len(graph.node(v.node).outputs) > 1:  # which output of a split, say
                extra.update(taillabel=str(v.port), labelfontsize="8", labelfontcolor="#a05a00")
            dot.edge(str(v.node), str(n.id), label=_type(v.type), **extra)
    return dot


# -- nodes -----------------------------------------------------------------------

def _node(target: graphviz.Digraph, graph: Graph, n: Node, params: int,
          color_by: Callable[[Node], str | None] | None) -> None:
    name = str(n.id)
    colour = color_by(n) if color_by is not None else None
    if n.op in ("input", "output"):
        t = n.outputs[0] if n.op == "input" else (graph.in_types(n.id) or [None])[0]
        label = f"<<b>{_esc(n.op)}</b> {_esc(n.attrs.name)}<br/>" \
                f"<font point-size=\"9\">{_esc(_type(t)) if t is not None else ''}</font>>"
        target.node(name, label=label, shape="invhouse" if n.op == "input" else "house",
                    style="filled", fillcolor=colour or "#dbeafe", color="#3b6ea8",
                    tooltip=f"{n.op} {n.attrs.name}: {_type(t) if t is not None else ''}")
        return

    ins = graph.in_types(n.id)
    weighted = params > 0 or n.shared or _has_buffers(n, ins)
    head = f"<b>{_esc(n.op)}</b>" if weighted else _esc(n.op)
    short = _short_attrs(n, ins)
    lines = [head + (" " + _esc(short) if short else "")]
    leaf = n.path.rsplit(".", 1)[-1]
    if weighted or not (leaf.isdigit() or re.fullmatch(re.escape(n.op) + r"_\d+", leaf)):
        lines.append(f"<font point-size=\"9\" color=\"#555555\">{_esc(leaf)}</font>")
    if n.shared:
        lines.append("<font point-size=\"8\" color=\"#a05a00\">&#8635; shares weights</font>")
    tags = [k for k, v in sorted(n.meta.items()) if v is True]
    if tags:
        lines.append("<font point-size=\"8\" color=\"#6a3d9a\">"
                     + _esc(" ".join("@" + t for t in tags)) + "</font>")
    tip = [n.path, f"{n.op}({_full_attrs(n)})", "out: " + ", ".join(_type(t) for t in n.outputs)]
    if params:
        tip.append(f"params: {params:,}")
    attrs = dict(label="<" + "<br/>".join(lines) + ">", tooltip="\\n".join(tip))
    if weighted:
        attrs.update(fillcolor=colour or "#fff7e0")
    else:
        attrs.update(fontsize="9", fontcolor="#444444", color="#9a9a9a", height="0.22",
                     fillcolor=colour or "#f2f2f2")
    if n.shared:
        attrs.update(style="rounded,filled,dashed", color="#a05a00", penwidth="1.4")
    target.node(name, **attrs)


def _short_attrs(n: Node, ins: list[TensorType]) -> str:
    """`conv 64, 3x3, s2`: required attributes by value, others only when not default."""
    fields = type(n.attrs).model_fields
    op = REGISTRY.get(n.op)
    skip = set(getattr(op, "tensor_attrs", ()))
    rank = ins[0].rank - 2 if ins and ins[0].rank >= 3 else 1
    parts = []
    for f, info in fields.items():
        if f in skip or f in _HIDDEN:
            continue
        v = getattr(n.attrs, f)
        if not info.is_required() and v == info.default:
            continue
        if f == "kernel":
            parts.append("x".join(map(str, v if isinstance(v, tuple) else (v,) * rank)))
        elif f in _ABBREV and not isinstance(v, bool) and v is not None:
            parts.append(_ABBREV[f] + ("x".join(map(str, v)) if isinstance(v, tuple) else str(v)))
        elif isinstance(v, bool):
            parts.append(f if v else "no " + f)
        elif info.is_required():
            parts.append(_value(v))
        else:
            parts.append(f"{f}={_value(v)}")
    return ", ".join(parts)


def _full_attrs(n: Node) -> str:
    return ", ".join(f"{f}={_value(getattr(n.attrs, f))}" for f in type(n.attrs).model_fields)


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (tuple, list)):
        return "(" + ", ".join(_value(x) for x in v) + ")"
    return str(v)


def _params(graph: Graph, n: Node) -> int:
    op = REGISTRY.get(n.op)
    if op is None or n.shared or n.op in ("input", "output"):
        return 0
    try:
        return sum(math.prod(s) for s in op.params(n.attrs, graph.in_types(n.id)).values())
    except Exception:  # a diagram never fails on a node it cannot cost
        return 0


def _has_buffers(n: Node, ins) -> bool:
    op = REGISTRY.get(n.op)
    try:
        return bool(op and op.buffers(n.attrs, ins))
    except Exception:
        return False


def _type(t: TensorType | None) -> str:
    return "" if t is None else str(t)


def _esc(s) -> str:
    return html.escape(str(s), quote=False)


# -- clusters --------------------------------------------------------------------

def _clusters(graph: Graph, nodes: list[Node]) -> dict[str, str]:
    """Container path -> "seq" | "block:Name", without unlabelled sequences (`seq_0`)."""
    kinds = {}
    for path, kind in graph.containers.items():
        if path and not (kind == "seq" and re.fullmatch(r"seq_\d+", path.rsplit(".", 1)[-1])):
            kinds[path] = kind
    for n in nodes:
        for c in n.calls:
            if c.path:
                kinds.setdefault(c.path, "block:" + c.block)
    return kinds


def _within(path: str, prefix: str) -> bool:
    return prefix == "" or path == prefix or path.startswith(prefix + ".")


def _home(n: Node, kinds: dict[str, str]) -> str:
    """The deepest cluster a node is drawn in ("" for the top level)."""
    parts = n.path.split(".")
    home = ""
    for i in range(len(parts) - 1, 0, -1):
        p = ".".join(parts[:i])
        if p in kinds:
            home = p
            break
    # A node reusing a module from outside its block instance is drawn where it runs.
    inner = n.calls[-1].path if n.calls else ""
    if inner and not _within(home, inner):
        home = inner
    return home


def _ancestors(path: str, kinds: dict[str, str]) -> list[str]:
    if not path:
        return []
    parts = path.split(".")
    return [p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if p in kinds]


def _cluster_label(path: str, kind: str, params: int) -> str:
    label = f"<<b>{_esc(path)}</b>"
    if kind.startswith("block:"):
        label += f" : {_esc(kind[6:])}"
    if params:
        label += f" <font color=\"#66708a\" point-size=\"9\">({human(params)} params)</font>"
    return label + ">"
