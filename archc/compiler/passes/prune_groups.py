"""Structured pruning on the IR: which channels are coupled, and the graph with some removed.

The graph knows what PyTorch code only implies: which output channels of one
layer are read by which weights of the next, and which channels an op ties
together. This pass tracks, for every tensor, its *channel axis* (the axis a
layer's weights produce: axis 1 of a convolution's output, the last axis of a
linear layer's) and gives each channel an element id. Ops join elements with a
union-find:

- element-wise ops, batch norm, activations, pooling: channel k in is channel k out;
  `a + b` (a residual) makes channel k of both branches one element;
- `concat` along the channel axis lays its inputs' elements side by side; `split`
  slices them (its sizes are rewritten); along another axis both are identities;
- `channel_shuffle(g)`: channel j of every group is one element (pruned together,
  so that the shuffle stays a shuffle), permuted as the op permutes it;
- a depthwise convolution (one input channel per group) ties each input channel to
  its outputs and loses whole groups; a grouped one (several input channels per
  group) ties position j across all groups, input and output, so every group keeps
  the same width;
- `attention(q, k, v, heads)` ties all of a head's features in q, k, v and the
  output (a key/value head with the query heads it serves): heads go whole;
- `flatten` maps each flattened feature to the channel it came from (a linear layer
  after flatten loses H·W inputs per channel);
- a tied weight (`linear(tie=wte)`) or a reused module is one parameter.

An *atom* is a set of united elements (what is removed at once: a channel, a
shuffle position across groups, a head); a *group* is the atoms that share an
axis (a residual stream, a layer's outputs). Channels whose size is fixed are
*locked*: a model's inputs and outputs, anything an op this pass does not
understand touches (reshape, matmul, position ops, recurrent layers), and `mha`
(its projections are square: its width cannot change alone). Pruning removes
unlocked atoms group-wise; `prune_graph` rewrites the widths (`conv.out`,
`linear.out`, `split.sizes`, `groups` of a depthwise convolution, `heads`) and
re-infers shapes; `Analysis.keep_indices` says which slices of each parameter
stay (archc.compress.prune slices the weights).

No torch here: importance scores come from the caller.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

from ..diagnostics import CompileError, Diagnostic, Span
from ..ir import Graph, Node
from ..ops import REGISTRY
from .infer_shapes import infer_shapes

# -- union-find ------------------------------------------------------------------------


class _UF:
    def __init__(self):
        self.parent: list[int] = []

    def new(self, n: int) -> list[int]:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return list(range(start, start + n))

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                ra, rb = rb, ra
            self.parent[ra] = rb


# -- what the analysis records ------------------------------------------------------------

@dataclass
class Track:
    """A tensor's channel axis and the element id of each index along it."""

    axis: int
    elems: list[int]


@dataclass
class Member:
    """One dimension of a parameter or buffer whose indices are channels."""

    key: str  # state_dict key
    node: int
    dim: int
    elems: list[int]
    role: str  # "out" (a layer's outputs), "in" (its inputs), "norm" (a per-channel scale), "bias", "buffer"

    @property
    def weight(self) -> bool:
        """Whether magnitude criteria read it (weights and norm scales, not biases or statistics)."""
        return self.role in ("out", "in", "norm")


@dataclass
class Group:
    """Atoms that share an axis; pruned together, at one ratio."""

    id: int
    atoms: list[int]  # atom roots, in first-seen order
    locked: set[int]
    members: list[Member] = field(default_factory=list)
    out_nodes: set[int] = field(default_factory=set)  # nodes whose outputs the group holds
    size: dict[int, int] = field(default_factory=dict)  # atom -> channels it spans on its widest member

    @property
    def free(self) -> list[int]:
        return [a for a in self.atoms if a not in self.locked]


@dataclass
class Analysis:
    graph: Graph
    uf: _UF
    tracks: dict[tuple[int, int], Track]
    members: list[Member]
    groups: list[Group]
    atom_group: dict[int, int]
    locked: set[int]  # locked atoms
    notes: dict[str, str]  # path -> why its channels are locked
    aliases: dict[str, str]  # state_dict key -> the key it is tied to

    def atom(self, e: int) -> int:
        return self.uf.find(e)

    def kept(self, elems: list[int], removed: set[int]) -> list[int]:
        """Indices along an axis whose elements survive."""
        return [i for i, e in enumerate(elems) if self.uf.find(e) not in removed]

    def keep_indices(self, removed: set[int]) -> dict[str, dict[int, list[int]]]:
        """state_dict key -> {dim: indices kept} for every parameter and buffer that shrinks."""
        out: dict[str, dict[int, list[int]]] = {}
        for m in self.members:
            idx = self.kept(m.elems, removed)
            if len(idx) != len(m.elems):
                out.setdefault(m.key, {})[m.dim] = idx
        for alias, target in self.aliases.items():
            if target in out:
                out[alias] = out[target]
        return out

    def prunable(self, selected: set[int], excluded: set[int] = frozenset()) -> list[Group]:
        """Groups holding the outputs of a selected node and of no excluded one, with atoms free to go."""
        return [g for g in self.groups if g.out_nodes & selected and not g.out_nodes & excluded and g.free]

    def choose(self, groups: list[Group], amount: float, scores: dict[int, float] | None = None,
               scope: str = "layer") -> set[int]:
        """Atoms to remove: the lowest-scoring `amount` of each group's free atoms (scope "layer"),
        or of all of them ranked together ("global"); every group keeps at least one atom.
        Without scores, the last atoms go (deterministic; for tests)."""
        scores = scores or {}
        removed: set[int] = set()

        def quota(n_free: int, n_all: int) -> int:
            k = n_free - int(n_free * (1 - amount) + 1e-9)  # Torch-Pruning's rounding
            return min(k, n_all - 1)

        if scope == "layer":
            for g in groups:
                free = g.free
                order = sorted(range(len(free)), key=lambda i: (scores.get(free[i], -i), -i))
                removed.update(free[i] for i in order[:quota(len(free), len(g.atoms))])
            return removed
        pool = [(scores.get(a, 0.0), gi, a) for gi, g in enumerate(groups) for a in g.free]
        pool.sort(key=lambda t: t[0])
        budget = int(len(pool) * amount + 1e-9)
        left = {gi: len(g.atoms) for gi, g in enumerate(groups)}
        for _, gi, a in pool:
            if budget <= 0:
                break
            if left[gi] > 1:
                removed.add(a)
                left[gi] -= 1
                budget -= 1
        return removed


# -- the analysis ------------------------------------------------------------------------

ELEMENTWISE = {"relu", "gelu", "silu", "sigmoid", "tanh", "leaky_relu", "softmax", "dropout", "identity", "skip",
               "neg", "scalar", "zero"}
POOLS = {"max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool", "global_avg_pool", "upsample"}
BINARY = {"add", "sub", "mul", "div"}


class _Ctx:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.uf = _UF()
        self.tracks: dict[tuple[int, int], Track] = {}
        self.members: list[Member] = []
        self.locked_elems: set[int] = set()
        self.notes: dict[str, str] = {}
        self.aliases: dict[str, str] = {}
        self.param_dims: dict[tuple[str, int], list[int]] = {}  # (key, dim) -> elems: a shared weight is one

    def lock(self, t: Track | None, node: Node, why: str) -> None:
        if t is None:
            return
        self.locked_elems.update(t.elems)
        self.notes.setdefault(node.path or node.op, why)

    def key(self, node: Node, suffix: str) -> str:
        return f"{node.path}.{suffix}" if suffix else node.path

    def member(self, node: Node, suffix: str, dim: int, elems: list[int], role: str) -> None:
        key = self.key(node, suffix)
        if node.op == "linear" and node.attrs.tie and suffix == "weight":
            tied = f"{node.attrs.tie}.weight"
            self.aliases[key] = tied
            key = tied
        seen = self.param_dims.get((key, dim))
        if seen is not None:
            for a, b in zip(seen, elems):
                self.uf.union(a, b)
            if role != "out":
                return
        else:
            self.param_dims[(key, dim)] = elems
        self.members.append(Member(key, node.id, dim, elems, role))

    def same_size(self, t: Track, size) -> bool:
        return isinstance(size, int) and size == len(t.elems)


def analyze(graph: Graph) -> Analysis:
    """Coupled channels of a graph: tracks, parameter members, atoms and groups."""
    cx = _Ctx(graph)
    for node in graph.nodes():
        ins = [cx.tracks.get((v.node, v.port)) for v in graph.in_values(node.id)]
        outs = _rule(cx, node, ins)
        for port, t in enumerate(outs):
            if t is not None:
                cx.tracks[(node.id, port)] = t
    return _group(cx)


def _out_axis(t) -> int:
    return len(t.shape) - 1


def _rule(cx: _Ctx, node: Node, ins: list[Track | None]) -> list[Track | None]:
    g = cx.graph
    op, a = node.op, node.attrs
    in_types = g.in_types(node.id)
    outs = node.outputs
    none = [None] * len(outs)

    def lock_all(why: str):
        for t in ins:
            cx.lock(t, node, why)
        return none

    if op == "input":
        return none
    if op == "output":
        cx.lock(ins[0], node, "a model output keeps its size")
        return none
    if op in ELEMENTWISE:
        return [ins[0]] if len(outs) == 1 else none
    if op in POOLS:
        t = ins[0]
        if t is not None and t.axis >= 2:
            cx.lock(t, node, f"`{op}` resizes the axis the channels are on")
            return none
        return [t]
    if op in BINARY:
        return [_binary(cx, node, ins, in_types, outs[0])]
    if op == "conv":
        return [_conv(cx, node, ins[0], in_types[0])]
    if op == "conv_transpose":
        x = ins[0]
        cin = in_types[0].shape[1]
        if a.groups != 1:
            cx.lock(x, node, "a grouped transposed convolution keeps its widths")
            out = Track(1, cx.uf.new(a.out))
            cx.lock(out, node, "a grouped transposed convolution keeps its widths")
            return [out]
        in_e = x.elems if x is not None and x.axis == 1 and cx.same_size(x, cin) else None
        if x is not None and in_e is None:
            cx.lock(x, node, "channels on another axis")
        out = cx.uf.new(a.out)
        if in_e is not None:
            cx.member(node, "weight", 0, in_e, "in")
        cx.member(node, "weight", 1, out, "out")
        if a.bias:
            cx.member(node, "bias", 0, out, "bias")
        return [Track(1, out)]
    if op == "linear":
        x = ins[0]
        last = _out_axis(in_types[0])
        in_e = None
        if x is not None:
            if x.axis == last and cx.same_size(x, in_types[0].shape[-1]):
                in_e = x.elems
            else:
                cx.lock(x, node, "linear reads another axis than the channels")
        out = cx.uf.new(a.out)
        w_out, w_in = (1, 0) if a.transposed else (0, 1)
        if in_e is not None:
            cx.member(node, "weight", w_in, in_e, "in")
        cx.member(node, "weight", w_out, out, "out")
        if a.bias:
            cx.member(node, "bias", 0, out, "bias")
        return [Track(_out_axis(outs[0]), out)]
    if op == "embedding":
        out = cx.uf.new(a.dim)
        cx.member(node, "weight", 1, out, "out")
        return [Track(_out_axis(outs[0]), out)]
    if op == "bn":
        t = ins[0]
        if t is not None and t.axis == 1:
            if a.affine:
                cx.member(node, "weight", 0, t.elems, "norm")
                cx.member(node, "bias", 0, t.elems, "bias")
            cx.member(node, "running_mean", 0, t.elems, "buffer")
            cx.member(node, "running_var", 0, t.elems, "buffer")
        return [t]
    if op in ("layernorm", "rmsnorm"):
        t = ins[0]
        if t is not None and t.axis == _out_axis(in_types[0]):
            params = REGISTRY[op].params(a, in_types)
            for name in params:
                cx.member(node, name, 0, t.elems, "norm" if name == "weight" else "bias")
        return [t]
    if op == "groupnorm":
        t = ins[0]
        if t is not None and t.axis == 1:
            n = len(t.elems)
            per = n // a.groups
            for j in range(per):
                for i in range(1, a.groups):
                    cx.uf.union(t.elems[j], t.elems[i * per + j])
            if a.affine:
                cx.member(node, "weight", 0, t.elems, "norm")
                cx.member(node, "bias", 0, t.elems, "bias")
        return [t]
    if op == "concat":
        return [_concat(cx, node, ins, in_types, outs[0])]
    if op == "split":
        x = ins[0]
        if x is None:
            return none
        d = a.dim % in_types[0].rank
        if x.axis != d:
            return [x] * len(outs)
        pieces, off = [], 0
        for t in outs:
            n = t.shape[d]
            pieces.append(Track(d, x.elems[off:off + n]))
            off += n
        return pieces
    if op == "channel_shuffle":
        x = ins[0]
        if x is None:
            return none
        if x.axis != 1:
            cx.lock(x, node, "channel_shuffle shuffles axis 1, not the channels")
            return none
        gs = a.groups
        c = len(x.elems) // gs
        for j in range(c):
            for i in range(1, gs):
                cx.uf.union(x.elems[j], x.elems[i * c + j])
        # out[j*g + i] = in[i*c + j]
        return [Track(1, [x.elems[i * c + j] for j in range(c) for i in range(gs)])]
    if op == "flatten":
        x = ins[0]
        if x is None:
            return none
        shape = in_types[0].shape
        s, e = a.start % len(shape), a.end % len(shape)
        if x.axis < s:
            return [x]
        if x.axis > e:
            return [Track(x.axis - (e - s), x.elems)]
        span = shape[s:e + 1]
        if not all(isinstance(d, int) for d in span):
            cx.lock(x, node, "flatten over a symbolic size")
            return none
        inner = math.prod(shape[x.axis + 1:e + 1])
        n = len(x.elems)
        total = math.prod(span)
        return [Track(s, [x.elems[(f // inner) % n] for f in range(total)])]
    if op == "permute":
        x = ins[0]
        if x is None:
            return none
        dims = [d % len(a.dims) for d in a.dims]
        return [Track(dims.index(x.axis), x.elems)]
    if op == "transpose":
        x = ins[0]
        if x is None:
            return none
        r = in_types[0].rank
        i, j = a.a % r, a.b % r
        ax = j if x.axis == i else i if x.axis == j else x.axis
        return [Track(ax, x.elems)]
    if op == "mean":
        x = ins[0]
        if x is None:
            return none
        r = in_types[0].rank
        dims = {d % r for d in ((a.dim,) if isinstance(a.dim, int) else a.dim)}
        if x.axis in dims:
            return none  # the channels are averaged away
        return [Track(x.axis if a.keepdim else x.axis - sum(1 for d in dims if d < x.axis), x.elems)]
    if op == "attention":
        return [_attention(cx, node, ins, in_types)]
    if op == "mha":
        for t in ins:
            cx.lock(t, node, "mha's projections are square: its width cannot change alone")
        return [ins[0]] if ins and ins[0] is not None else none
    return lock_all(f"`{op}`: pruning does not see through this op")


def _binary(cx: _Ctx, node: Node, ins, in_types, out_t) -> Track | None:
    r = out_t.rank
    aligned = []
    for t, ty in zip(ins, in_types):
        aligned.append(None if t is None else Track(t.axis + (r - ty.rank), t.elems))
    first = next((t for t in aligned if t is not None and out_t.shape[t.axis] == len(t.elems)), None)
    if first is None:
        for t in ins:
            cx.lock(t, node, "operands carry channels on different axes")
        return None
    size = out_t.shape[first.axis]
    result = Track(first.axis, first.elems)
    for t, ty in zip(aligned, in_types):
        off = r - ty.rank
        if t is None:
            ax = first.axis - off
            if ax >= 0 and ty.shape[ax] != 1:
                cx.lock(result, node, "added to a tensor whose width is fixed")
            continue
        if t.axis != first.axis or len(t.elems) != len(first.elems):
            if len(t.elems) == 1 or len(first.elems) == 1:
                continue
            cx.lock(t, node, "operands carry channels on different axes")
            cx.lock(first, node, "operands carry channels on different axes")
            continue
        for p, q in zip(first.elems, t.elems):
            cx.uf.union(p, q)
    if len(first.elems) != size:
        return None
    return result


def _conv(cx: _Ctx, node: Node, x: Track | None, xt) -> Track:
    a = node.attrs
    cin = xt.shape[1]
    in_e = None
    if x is not None:
        if x.axis == 1 and cx.same_size(x, cin):
            in_e = x.elems
        else:
            cx.lock(x, node, "conv reads axis 1, not the channels")
    g = a.groups
    if g == 1:
        out = cx.uf.new(a.out)
        if in_e is not None:
            cx.member(node, "weight", 1, in_e, "in")
    else:
        cg, og = cin // g, a.out // g
        if cg == 1 and in_e is not None:
            # depthwise: input channel i feeds outputs i*og .. i*og+og-1; whole groups go
            out = [in_e[o // og] for o in range(a.out)]
        else:
            if in_e is not None:  # the same positions in every group
                for j in range(cg):
                    for i in range(1, g):
                        cx.uf.union(in_e[j], in_e[i * cg + j])
                cx.member(node, "weight", 1, in_e[:cg], "in")
            out = cx.uf.new(a.out)
            for j in range(og):
                for i in range(1, g):
                    cx.uf.union(out[j], out[i * og + j])
    cx.member(node, "weight", 0, out, "out")
    if a.bias:
        cx.member(node, "bias", 0, out, "bias")
    return Track(1, out)


def _concat(cx: _Ctx, node: Node, ins, in_types, out_t) -> Track | None:
    d = node.attrs.dim % out_t.rank
    tracked = [t for t in ins if t is not None]
    if not tracked:
        return None
    axis = tracked[0].axis
    if any(t.axis != axis for t in tracked):
        for t in tracked:
            cx.lock(t, node, "concat of tensors with channels on different axes")
        return None
    if axis == d:
        elems: list[int] = []
        for t, ty in zip(ins, in_types):
            if t is None:  # a fixed part: its own, locked elements
                fixed = Track(d, cx.uf.new(ty.shape[d]))
                cx.lock(fixed, node, "concatenated with a tensor whose width is fixed")
                elems += fixed.elems
            else:
                elems += t.elems
        return Track(d, elems)
    first = tracked[0]
    for t in tracked[1:]:
        for p, q in zip(first.elems, t.elems):
            cx.uf.union(p, q)
    if len(tracked) != len(ins):
        for t in tracked:
            cx.lock(t, node, "concatenated with a tensor whose width is fixed")
    return Track(axis, first.elems)


def _attention(cx: _Ctx, node: Node, ins, in_types) -> Track | None:
    a = node.attrs
    q, k, v = ins
    last = [ty.rank - 1 for ty in in_types]
    ok = all(t is not None and t.axis == ax for t, ax in zip(ins, last))
    if not ok:
        for t in ins:
            cx.lock(t, node, "attention's q, k and v must carry their features on the last axis")
        return None
    d = len(q.elems)
    h = a.heads
    hk = a.kv_heads or h
    dh = d // h
    r = h // hk
    for kh in range(hk):
        anchor = k.elems[kh * dh]
        for e in range(dh):
            cx.uf.union(anchor, k.elems[kh * dh + e])
            cx.uf.union(anchor, v.elems[kh * dh + e])
            for qh in range(kh * r, (kh + 1) * r):
                cx.uf.union(anchor, q.elems[qh * dh + e])
    return Track(q.axis, q.elems)


def _group(cx: _Ctx) -> Analysis:
    uf = cx.uf
    axes: list[list[int]] = [t.elems for t in cx.tracks.values()] + [m.elems for m in cx.members]
    # atoms that share an axis are one group (a second union-find over atom roots)
    parent: dict[int, int] = {}

    def find(a: int) -> int:
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for elems in axes:
        roots = {uf.find(e) for e in elems}
        it = iter(roots)
        first = next(it, None)
        for r in it:
            ra, rb = find(first), find(r)
            if ra != rb:
                parent[ra] = rb
    locked = {uf.find(e) for e in cx.locked_elems}
    groups: dict[int, Group] = {}
    order: list[int] = []
    for elems in axes:
        for e in elems:
            atom = uf.find(e)
            gid = find(atom)
            grp = groups.get(gid)
            if grp is None:
                grp = groups[gid] = Group(len(groups), [], set())
                order.append(gid)
            if atom not in grp.size:
                grp.size[atom] = 0
                grp.atoms.append(atom)
                if atom in locked:
                    grp.locked.add(atom)
    for m in cx.members:
        counts: dict[int, int] = {}
        for e in m.elems:
            r = uf.find(e)
            counts[r] = counts.get(r, 0) + 1
        grp = groups[find(uf.find(m.elems[0]))] if m.elems else None
        if grp is None:
            continue
        grp.members.append(m)
        if m.role == "out":
            grp.out_nodes.add(m.node)
        for r, n in counts.items():
            grp.size[r] = max(grp.size.get(r, 0), n)
    glist = [groups[gid] for gid in order]
    for i, grp in enumerate(glist):
        grp.id = i
    atom_group = {a: grp.id for grp in glist for a in grp.atoms}
    return Analysis(cx.graph, uf, cx.tracks, cx.members, glist, atom_group, locked, cx.notes, cx.aliases)


# -- rewriting the graph -------------------------------------------------------------------

def prune_graph(analysis: Analysis, removed: set[int], span: Span | None = None) -> Graph:
    """A copy of the graph with the removed atoms' channels gone: widths rewritten, shapes re-inferred."""
    graph = copy.deepcopy(analysis.graph)
    tracks = analysis.tracks

    def kept(nid: int, port: int = 0) -> int | None:
        t = tracks.get((nid, port))
        return None if t is None else len(analysis.kept(t.elems, removed))

    for node in graph.nodes():
        a, update = node.attrs, {}
        ins = graph.in_values(node.id)
        if node.op in ("conv", "conv_transpose", "linear"):
            n = kept(node.id)
            if n is not None and n != a.out:
                update["out"] = n
            if node.op == "conv" and a.groups > 1 and ins:
                cin = ins[0].type.shape[1]
                if cin // a.groups == 1:
                    m = kept(ins[0].node, ins[0].port)
                    if m is not None and m != a.groups:
                        update["groups"] = m
        elif node.op == "embedding":
            n = kept(node.id)
            if n is not None and n != a.dim:
                update["dim"] = n
        elif node.op == "split":
            x = tracks.get((ins[0].node, ins[0].port))
            if x is not None and x.axis == a.dim % ins[0].type.rank:
                sizes = [kept(node.id, p) for p in range(len(node.outputs))]
                old = [t.shape[x.axis] for t in node.outputs]
                if sizes != old:
                    if isinstance(a.sizes, int) and len(set(sizes[:-1])) <= 1 and sizes[-1] <= sizes[0] \
                            and all(s > 0 for s in sizes) and _chunks(sum(sizes), sizes[0]) == sizes:
                        update["sizes"] = sizes[0]
                    else:
                        update["sizes"] = tuple(sizes)
        elif node.op == "attention":
            q, k = (tracks.get((v.node, v.port)) for v in ins[:2])
            if q is not None and k is not None:
                dh = len(q.elems) // a.heads
                heads = len(analysis.kept(q.elems, removed)) // dh
                if heads != a.heads:
                    update["heads"] = heads
                if a.kv_heads is not None:
                    update["kv_heads"] = len(analysis.kept(k.elems, removed)) // dh
        if update:
            node.attrs = a.model_copy(update=update)
    try:
        infer_shapes(graph)
    except CompileError as e:  # a rule above is wrong: say so rather than build a broken network
        d = e.diagnostics[0]
        raise CompileError(Diagnostic("E0805", f"pruning left an inconsistent graph: {d.message}", span,
                                      help="please report this; exclude the layers involved meanwhile"))
    return graph


def _chunks(n: int, size: int) -> list[int]:
    return [size] * (n // size) + ([n % size] if n % size else [])


def describe(analysis: Analysis, groups: list[Group] | None = None) -> list[dict]:
    """One line per group: its layers (output producers), atoms free and locked."""
    g = analysis.graph
    out = []
    for grp in groups if groups is not None else analysis.groups:
        if not grp.members:
            continue
        out.append({"group": grp.id, "layers": sorted({g.node(n).path for n in grp.out_nodes}),
                    "atoms": len(grp.atoms), "locked": len(grp.locked),
                    "members": sorted({f"{m.key}[{m.dim}]" for m in grp.members})})
    return out
