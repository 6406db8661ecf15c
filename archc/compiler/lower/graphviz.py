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
from typing import Any, Callable, Mapping

import graphviz

from ..ir import Graph, Node, TensorType
from ..ops import REGISTRY
from .report import human

FONT = "Helvetica"
# Attributes that would only clutter a box; the tooltip still has every attribute.
_HIDDEN = {"padding", "bias", "eps", "momentum", "affine", "ceil_mode", "count_include_pad",
           "output_padding", "name", "site"}
_ABBREV = {"stride": "s", "dilation": "d", "groups": "g"}
_CLUSTER_FILL = ("#f4f7fb", "#e8eef7", "#dde6f3", "#d2ddef")


# Graphs with more op nodes than this are folded unless told otherwise (ViT-B/16 has 143).
FOLD_ABOVE = 120


def render(graph: Graph, *, color_by: Callable[[Node], str | None] | None = None,
           alphas: Mapping[str, Any] | None = None, fold: bool | None = None,
           streams: bool | None = None) -> graphviz.Digraph:
    """A graphviz.Digraph of `graph`, laid out top to bottom.

    `color_by(node)` may return a fill colour for an op node (any Graphviz
    colour: "#ffcc00", "red", "0.1 0.5 1.0"), or None to keep the default.

    `alphas` (a supernet's architecture parameters by table name, as
    `net.named_arch_parameters()` gives them: `{"normal": tensor, ...}`; tensors
    or nested lists) draws each candidate's edge into its mixed op with a width
    and a label from its softmax weight (PC-DARTS's edges into a node, from softmax(β)).

    `fold=True` draws each run of consecutive identical block instances in a
    sequence (the same block with the same ops, attributes, shapes and inner
    wiring, as `h.0` .. `h.47` of GPT-2 XL) once: the first instance, labelled
    "× N". The others are left out; edges into or out of them are drawn to and
    from the matching node of the first, and the links from one copy to the
    next are dropped. `fold=None` (the default) folds graphs of more than
    FOLD_ABOVE op nodes; `fold=False` draws every node.

    `streams=True` draws one dashed cluster per model input around the top-level nodes
    and clusters that only that input reaches (a two-stream network's towers); what
    several inputs reach (the fusion) stays outside. `streams=None` (the default) does
    so for models with more than one input.
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

    if fold is None:
        fold = sum(n.op not in ("input", "output") for n in nodes) > FOLD_ABOVE
    folded = _fold(graph, members, kinds) if fold else _Folded()

    def fill(target: graphviz.Digraph, path: str, depth: int) -> None:
        for item in members[path]:
            if isinstance(item, int):
                _node(target, graph, graph.node(item), params[item], color_by)
                continue
            if item in folded.hidden:
                continue
            sub = graphviz.Digraph(name="cluster_" + item)
            sub.attr(label=_cluster_label(item, kinds[item], totals[item], folded.runs.get(item)), labeljust="l",
                     fontname=FONT, fontsize="10", fontcolor="#33415c", margin="10")
            if kinds[item].startswith("block:"):
                sub.attr(style="rounded,filled", color="#8fa3c0",
                         fillcolor=_CLUSTER_FILL[depth % len(_CLUSTER_FILL)])
            else:
                sub.attr(style="rounded,dashed", color="#9a9a9a", fillcolor="none")
            fill(sub, item, depth + 1)
            target.subgraph(sub)

    if streams is None:
        streams = len(graph.inputs) > 1
    if not streams:
        fill(dot, "", 0)
    else:  # one cluster per input stream around the top-level items it alone reaches
        from ..passes.stream_costs import reaching_inputs

        reach = reaching_inputs(graph)

        def under(item) -> set:
            if isinstance(item, int):
                return set(reach[item])
            return set().union(*(under(i) for i in members[item])) if members[item] else set()

        top, by_stream = list(members[""]), {}
        for item in top:
            r = under(item)
            if len(r) == 1:
                by_stream.setdefault(r.pop(), []).append(item)
        members["#rest"] = [i for i in top if not any(i in v for v in by_stream.values())]
        for name, items in by_stream.items():
            members["#" + name] = items
            sub = graphviz.Digraph(name="cluster_stream_" + _ident(name))
            sub.attr(label=f"<<b>stream {_esc(name)}</b>>", labeljust="l", fontname=FONT, fontsize="12",
                     fontcolor="#3b6ea8", style="rounded,dashed", color="#3b6ea8", penwidth="1.4", margin="14")
            fill(sub, "#" + name, 0)
            dot.subgraph(sub)
        fill(dot, "#rest", 0)

    # Edges last, at the top level, so no edge statement declares a node inside a cluster.
    tables = {k.removeprefix("arch."): _rows(v) for k, v in (alphas or {}).items()}
    drawn: set = set()
    for n in nodes:
        ins = graph.in_values(n.id)
        weights = _edge_weights(graph, n, ins, tables) if tables else None
        for port, v in enumerate(ins):
            src, dst = v.node, n.id
            if folded.rep:
                ends = folded.edge(v.node, n.id)
                if ends is None or (*ends, port, v.port) in drawn:
                    continue  # from one folded copy to the next, or drawn already
                drawn.add((*ends, port, v.port))
                src, dst = ends
            # The first input is the main data path: keep it straight, let side inputs bend.
            extra = {"weight": "3" if port == 0 else "1"}
            if len(graph.node(v.node).outputs) > 1:  # which output of a split, say
                extra.update(taillabel=str(v.port), labelfontsize="8", labelfontcolor="#a05a00")
            label = _type(v.type)
            if weights is not None:
                if port == 0:
                    extra.update(style="dotted", color="#b0b0b0")
                else:
                    w = weights[port - 1]
                    extra.update(penwidth=f"{0.3 + 6 * w:.2f}", color=f"0.6 {0.25 + 0.75 * w:.2f} 0.55")
                    label = f"{w:.2f}"
            dot.edge(str(src), str(dst), label=label, **extra)
    return dot


def arch_tables(graph: Graph) -> dict[str, tuple[int, int]]:
    """The α (and β) tables of a relaxed graph: name (`normal`, `normal_beta`) -> (rows, columns)."""
    return {n.path.split(".", 1)[-1]: (n.attrs.rows, n.attrs.cols) for n in graph.nodes() if n.op == "arch_param"}


class AlphasError(ValueError):
    """An α file that cannot be read, or whose tables do not fit the supernet."""


def load_alphas(path) -> dict[str, list]:
    """α tables by name (nested lists) from a file:

    - a checkpoint of a DARTS search (`STEM.PLAN.darts.pt`: its model's `arch.*` entries),
      a state_dict, or a dict of tensors saved with torch.save (`.pt`, `.pth`, `.ckpt`,
      `.bin`); torch is imported for these only, and they are read with weights_only=True;
    - `.safetensors` (read through numpy, no torch);
    - `.json`: `{"normal": [[...], ...], ...}`, or what `archc search --json` prints
      for a DARTS plan (its best row's `alphas`).
    """
    import json
    import os

    name = os.fspath(path)
    if not os.path.exists(name):
        raise AlphasError(f"no such file: {name}")
    ext = os.path.splitext(name)[1].lower()
    if ext == ".json":
        try:
            data = json.loads(open(name, encoding="utf-8").read())
        except (OSError, ValueError) as e:
            raise AlphasError(f"cannot read {name}: {e}") from None
        if isinstance(data, dict) and isinstance(data.get("best"), list) and data["best"]:
            data = data["best"][0].get("alphas", {})
    elif ext == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError:  # pragma: no cover - safetensors ships with archc's runtime
            raise AlphasError("reading .safetensors needs the `safetensors` package") from None
        try:
            data = load_file(name)
        except Exception as e:
            raise AlphasError(f"cannot read {name}: {e}") from None
    else:
        import pickle

        import torch  # only for torch files

        try:
            data = torch.load(name, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise AlphasError(f"cannot read {name} as a torch file of tensors: {first}") from None
        if isinstance(data, dict) and isinstance(data.get("model"), dict):  # a DARTS search's checkpoint
            data = data["model"]
    if not isinstance(data, dict):
        raise AlphasError(f"{name} holds no tables by name")
    if any(str(k).startswith("arch.") for k in data):  # a supernet's state_dict: its α and β only
        data = {k: v for k, v in data.items() if str(k).startswith("arch.")}
    out = {}
    for k, v in data.items():
        try:
            out[str(k).removeprefix("arch.")] = _rows(v)
        except TypeError:
            raise AlphasError(f"`{k}` in {name} is not a table of numbers") from None
    if not out:
        raise AlphasError(f"{name} holds no α tables")
    return out


def check_alphas(graph: Graph, alphas: Mapping[str, Any]) -> None:
    """AlphasError unless every table of `alphas` is one of the supernet's, of its size."""
    tables = arch_tables(graph)
    if not tables:
        raise AlphasError(f"`{graph.name}` has no architecture parameters: draw its supernet (relax=\"darts\")")
    for k, v in alphas.items():
        name = k.removeprefix("arch.")
        if name not in tables:
            raise AlphasError(f"the supernet has no table `{name}`; its tables: " + ", ".join(
                f"{t} ({r} x {c})" for t, (r, c) in tables.items()))
        rows = _rows(v)
        r, c = tables[name]
        if len(rows) != r or any(len(x) != c for x in rows):
            got = f"{len(rows)} x {len(rows[0]) if rows else 0}"
            raise AlphasError(f"table `{name}` is {got}, the supernet's is {r} x {c}: α of another network?")


def _rows(t) -> list:
    """A table of architecture parameters as nested lists (a tensor, an array or lists)."""
    if hasattr(t, "detach"):
        t = t.detach().cpu()
    if hasattr(t, "tolist"):
        t = t.tolist()
    return [list(r) if isinstance(r, (list, tuple)) else [r] for r in t]


def _softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [x / sum(e) for x in e]


def _edge_weights(graph: Graph, n: Node, ins, tables: dict) -> list[float] | None:
    """The softmax weights a mixed op (or PC-DARTS's weighted sum) gives its inputs after the first."""
    if n.op not in ("mixed", "weighted_sum") or not ins:
        return None
    table = tables.get(graph.node(ins[0].node).path.split(".", 1)[-1])
    if table is None:
        return None
    if n.op == "mixed":
        row = table[n.attrs.row] if n.attrs.row < len(table) else None
        return _softmax(row) if row and len(row) == len(ins) - 1 else None
    col = [r[0] for r in table[n.attrs.start:n.attrs.start + len(ins) - 1]]
    return _softmax(col) if len(col) == len(ins) - 1 else None


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
    # flags that are exactly True (@frozen, @lora), and checkpoint segments (their key is a name)
    tags = [k for k, v in sorted(n.meta.items()) if v is True or (k == "checkpoint" and v)]
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


def _cluster_label(path: str, kind: str, params: int, run: tuple[int, str] | None = None) -> str:
    """`path : Block (params)`; for a folded run of N copies, `first … last : Block × N (params each)`."""
    if run is None:
        label = f"<<b>{_esc(path)}</b>"
    else:
        label = f"<<b>{_esc(path)} &#8230; {_esc(run[1].rsplit('.', 1)[-1])}</b>"
    if kind.startswith("block:"):
        label += f" : {_esc(kind[6:])}"
    if run is not None:
        label += f" <b><font color=\"#a0421e\">&#215; {run[0]}</font></b>"
    if params:
        each = " each" if run is not None else ""
        label += f" <font color=\"#66708a\" point-size=\"9\">({human(params)} params{each})</font>"
    return label + ">"


# -- folding ---------------------------------------------------------------------

class _Folded:
    """Which copies of repeated blocks are left out of a folded diagram."""

    def __init__(self):
        self.rep: dict[int, int] = {}  # node of a left-out copy -> the same node in the first copy
        self.copy: dict[int, dict[str, int]] = {}  # node -> {run (its first copy's path): copy index}
        self.runs: dict[str, tuple[int, str]] = {}  # first copy's path -> (copies, last copy's path)
        self.hidden: set[str] = set()  # cluster paths of the left-out copies

    def edge(self, u: int, v: int) -> tuple[int, int] | None:
        """Where an edge u -> v is drawn: both ends moved into first copies (runs nest), or
        None for a link from one copy of a run to another."""
        while True:
            cu, cv = self.copy.get(u, {}), self.copy.get(v, {})
            if any(cv.get(run, k) != k for run, k in cu.items()):
                return None
            nu, nv = self.rep.get(u, u), self.rep.get(v, v)
            if (nu, nv) == (u, v):
                return u, v
            u, v = nu, nv


def _fold(graph: Graph, members: dict[str, list], kinds: dict[str, str]) -> _Folded:
    """Runs of consecutive identical block instances among the children of each sequence."""
    out = _Folded()

    def ids(path: str) -> list[int]:  # the nodes drawn inside a cluster, in drawing order
        got = []
        for item in members[path]:
            got.extend([item] if isinstance(item, int) else ids(item))
        return got

    def signature(path: str, nids: list[int]):
        local = {nid: i for i, nid in enumerate(nids)}
        sig = [kinds[path]]
        for nid in nids:
            n = graph.node(nid)
            rel = n.path[len(path):] if n.path.startswith(path + ".") else "~" + n.path
            srcs = tuple((local.get(v.node, -1), v.port, str(v.type)) for v in graph.in_values(nid))
            sig.append((rel, n.op, repr(n.attrs), tuple(map(str, n.outputs)), n.shared, srcs,
                        tuple(sorted((k, repr(v)) for k, v in n.meta.items()))))
        return tuple(sig)

    for parent, items in members.items():  # outer clusters come before the clusters inside them
        if kinds.get(parent) != "seq" or any(_within(parent, h) for h in out.hidden):
            continue
        i = 0
        while i < len(items):
            first = items[i]
            if isinstance(first, int) or not kinds[first].startswith("block:"):
                i += 1
                continue
            first_ids = ids(first)
            sig = signature(first, first_ids)
            j = i + 1
            copies = [first_ids]
            while j < len(items) and not isinstance(items[j], int) and kinds[items[j]] == kinds[first]:
                nxt = ids(items[j])
                if signature(items[j], nxt) != sig:
                    break
                copies.append(nxt)
                j += 1
            if len(copies) > 1:
                out.runs[first] = (len(copies), items[j - 1])
                for k, nids in enumerate(copies):
                    for a, b in zip(first_ids, nids):
                        out.copy.setdefault(b, {})[first] = k
                        if k:
                            out.rep[b] = a
                out.hidden.update(items[i + 1:j])
            i = j
    return out


def _ident(name: str) -> str:
    return re.sub(r"\W", "_", name)
