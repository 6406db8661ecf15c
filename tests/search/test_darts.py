"""DARTS in archc: derivation rules, writing the result back as .arch, the bilevel loop
(first and second order, checkpoints and resume), `search` plans with strategy("darts"),
rendering α, and the diagnostics of malformed cells."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

import archc
from archc.compiler.diagnostics import CompileError
from archc.search.derive_rules import RULES, cell_layouts, derive, derive_arch, rule

ROOT = Path(archc.__file__).resolve().parent.parent
SPECS = ROOT / "archc" / "specs"
PRIMITIVES = ["zero", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
              "dil_conv_3x3", "dil_conv_5x5"]
SMALL = {"C": 4, "layers": 3, "size": 8, "channels": 1}  # a DartsSearch that runs in a blink


@pytest.fixture(scope="module")
def darts():
    return archc.load(SPECS / "darts.arch")


@pytest.fixture(scope="module")
def nb201():
    return archc.load(SPECS / "nb201.arch")


@pytest.fixture(scope="module")
def darts_layouts(darts):
    return cell_layouts(darts, "DartsSearch", args=SMALL)


@pytest.fixture(scope="module")
def nb201_layouts(nb201):
    return cell_layouts(nb201, "NB201Search", args={"N": 1})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _alphas(rng: random.Random, rows: int, cols: int, groups=("normal", "reduce")) -> dict:
    return {g: [[rng.gauss(0, 1) for _ in range(cols)] for _ in range(rows)] for g in groups}


# -- the reference rules, written again here from their description -------------------------

def reference_darts_genotype(alpha_rows, steps: int = 4, keep: int = 2):
    """DARTS's rule: softmax over all ops (zero included); per node the `keep` incoming edges
    whose best non-zero op weighs most, each with that op. Reference order: strongest first."""
    import torch

    w = torch.softmax(torch.tensor(alpha_rows, dtype=torch.float64), dim=-1).tolist()
    gene, start = [], 0
    for node in range(steps):
        n = 2 + node
        rows = w[start:start + n]
        strength = [max(v for k, v in enumerate(r) if PRIMITIVES[k] != "zero") for r in rows]
        edges = sorted(range(n), key=lambda e: -strength[e])[:keep]
        for e in edges:
            best = max((k for k in range(len(rows[e])) if PRIMITIVES[k] != "zero"), key=lambda k: rows[e][k])
            gene.append((PRIMITIVES[best], e))
        start += n
    return gene


def reference_nb201_arch(alpha_rows, ops=("zero", "identity", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")):
    """NAS-Bench-201's rule: the argmax of every edge, zero allowed."""
    out, row = [], 0
    for node in range(1, 4):
        out.append([(ops[max(range(len(ops)), key=lambda k: alpha_rows[row + j][k])], j) for j in range(node)])
        row += node
    return out


def test_darts_rule_matches_the_reference_rule_on_300_draws(darts, darts_layouts):
    rng = random.Random(2019)
    for _ in range(300):
        alphas = _alphas(rng, 14, 8)
        got = derive(darts, "DartsSearch", alphas, "darts", layouts=darts_layouts)
        for group in ("normal", "reduce"):
            flat = [pair for node in got.genotypes[group] for pair in node]
            assert flat == reference_darts_genotype(alphas[group]), group


def test_nb201_rule_matches_argmax(nb201, nb201_layouts):
    rng = random.Random(201)
    for _ in range(100):
        alphas = _alphas(rng, 6, 5, groups=("cell",))
        got = derive(nb201, "NB201Search", alphas, "nb201", layouts=nb201_layouts)
        assert got.genotypes["cell"] == reference_nb201_arch(alphas["cell"])
        assert got.decisions == {f"cell.node{j}.edge{i}": [k for k in range(5) if
                                                           ["zero", "identity", "nor_conv_1x1", "nor_conv_3x3",
                                                            "avg_pool_3x3"][k] == op][0]
                                 for j, node in enumerate(got.genotypes["cell"]) for op, i in node}


def test_raw_and_softmax_rankings_differ_sometimes(darts, darts_layouts):
    """`raw` ranks edges by their raw α, `darts` by softmax weights: on rows with different
    scales they disagree, on equal-scale rows they agree; both exclude zero."""
    rng = random.Random(7)
    differ = 0
    for _ in range(50):
        alphas = _alphas(rng, 14, 8)
        for g in alphas:  # give each row its own offset and scale
            alphas[g] = [[rng.uniform(0.2, 3) * v + rng.uniform(-3, 3) for v in r] for r in alphas[g]]
        a = derive(darts, "DartsSearch", alphas, "darts", layouts=darts_layouts)
        b = derive(darts, "DartsSearch", alphas, "raw", layouts=darts_layouts)
        differ += a.genotypes != b.genotypes
        for d in (a, b):
            assert all(op != "zero" for nodes in d.genotypes.values() for node in nodes for op, _ in node)
    assert differ > 0


def test_pcdarts_rule_weighs_edges_by_beta(darts, darts_layouts):
    alphas = {g: [[0.0] * 8 for _ in range(14)] for g in ("normal", "reduce")}
    for g in alphas:
        for r in alphas[g]:
            r[4] = 1.0  # sep_conv_3x3 everywhere, every edge equally strong
    beta = [[0.0] for _ in range(14)]
    beta[3] = [5.0]  # node 1's edge from input 1 ...
    beta[4] = [4.0]  # ... and from node 0 (row 4): they win node 1
    got = derive(darts, "DartsSearch", {**alphas, "normal_beta": beta, "reduce_beta": beta}, "pcdarts",
                 layouts=darts_layouts)
    assert sorted(i for _, i in got.genotypes["normal"][1]) == [1, 2]
    plain = derive(darts, "DartsSearch", alphas, "darts", layouts=darts_layouts)
    assert sorted(i for _, i in plain.genotypes["normal"][1]) == [0, 1]  # ties: the first edges


def test_rules_are_swappable(darts, darts_layouts):
    @rule("first_edges")
    def first_edges(layout, alpha, beta=None):
        return [[(i, layout.nonzero()[0]) for i in range(layout.keep)] for _ in range(layout.nodes)]

    try:
        got = derive(darts, "DartsSearch", _alphas(random.Random(0), 14, 8), "first_edges", layouts=darts_layouts)
        assert got.genotypes["normal"] == [[("max_pool_3x3", 0), ("max_pool_3x3", 1)]] * 4
        assert got.rule == "first_edges"
    finally:
        RULES.pop("first_edges")
    with pytest.raises(ValueError, match="unknown derivation rule"):
        derive(darts, "DartsSearch", {}, "nope", layouts=darts_layouts)
    with pytest.raises(ValueError, match="keeps every edge"):
        derive(darts, "DartsSearch", _alphas(random.Random(0), 14, 8), "nb201", layouts=darts_layouts)


def test_summary_is_the_reference_genotype_format(darts, darts_layouts):
    got = derive(darts, "DartsSearch", _alphas(random.Random(3), 14, 8), layouts=darts_layouts)
    text = got.summary()
    assert text.startswith("Genotype(normal=[(") and "normal_concat=[2, 3, 4, 5]" in text
    assert "reduce_concat=[2, 3, 4, 5])" in text


# -- derived networks: in memory and written back --------------------------------------------

def _weighted_paths(graph) -> set[str]:
    from archc.compiler.ops import REGISTRY

    return {n.path for n in graph.nodes()
            if not n.shared and n.op not in ("input", "output")
            and REGISTRY[n.op].params(n.attrs, graph.in_types(n.id))}


def test_derived_darts_file_builds_the_same_network(darts, darts_layouts, tmp_path):
    rng = random.Random(11)
    for _ in range(3):
        got = derive(darts, "DartsSearch", _alphas(rng, 14, 8), layouts=darts_layouts)
        text = derive_arch(darts, "DartsSearch", got, args=SMALL)
        assert "cell(" in text and "genotype=" in text and "Genotype(normal=" in text
        path = tmp_path / "derived.arch"
        path.write_text(text)
        written = archc.load(path)
        assert written.space("DartsSearch").size == 1  # no choices left
        memory = darts.graph("DartsSearch", decisions=got.decisions, args=SMALL)
        graph = written.graph("DartsSearch")  # the search's arguments are the defaults now
        assert written.check("DartsSearch").params == darts.check("DartsSearch", decisions=got.decisions,
                                                                  args=SMALL).params
        assert _weighted_paths(graph) == _weighted_paths(memory)


def test_derived_darts_file_of_an_importing_spec(tmp_path):
    """A plan's file imports std.darts: the derived file is self-contained."""
    spec = tmp_path / "space.arch"
    spec.write_text("import std.darts\n")
    prog = archc.load(spec)
    got = derive(prog, "DartsSearch", _alphas(random.Random(5), 14, 8), args=SMALL)
    text = derive_arch(prog, "DartsSearch", got, args={**SMALL, "classes": 7})
    out = tmp_path / "best.arch"
    out.write_text(text)
    written = archc.load(out)
    assert written.check("DartsSearch").params == prog.check("DartsSearch", decisions=got.decisions,
                                                             args={**SMALL, "classes": 7}).params


def test_derived_pcdarts_file_builds_the_same_network(tmp_path):
    prog = archc.load(SPECS / "pcdarts.arch")
    rng = random.Random(13)
    alphas = {**_alphas(rng, 14, 8), **_alphas(rng, 14, 1, groups=("normal_beta", "reduce_beta"))}
    args = {"C": 4, "layers": 3, "size": 8}
    got = derive(prog, "PCDartsSearch", alphas, "pcdarts", args=args)
    path = tmp_path / "derived.arch"
    path.write_text(derive_arch(prog, "PCDartsSearch", got, args=args))
    written = archc.load(path)
    assert written.space("PCDartsSearch").size == 1
    assert written.check("PCDartsSearch").params == prog.check("PCDartsSearch", decisions=got.decisions,
                                                               args=args).params


def test_derived_nb201_file_builds_the_same_network(nb201, nb201_layouts, tmp_path):
    rng = random.Random(12)
    for _ in range(3):
        got = derive(nb201, "NB201Search", _alphas(rng, 6, 5, groups=("cell",)), "nb201", layouts=nb201_layouts)
        text = derive_arch(nb201, "NB201Search", got, args={"affine": True})
        path = tmp_path / "derived.arch"
        path.write_text(text)
        written = archc.load(path)
        assert written.check("NB201Search").params == nb201.check("NB201Search", decisions=got.decisions,
                                                                  affine=True).params
        assert _weighted_paths(written.graph("NB201Search")) == _weighted_paths(
            nb201.graph("NB201Search", decisions=got.decisions, affine=True))


def test_derive_from_a_trained_supernet(darts, darts_layouts):
    net = darts.build("DartsSearch", relax="darts", **SMALL)
    got = derive(darts, "DartsSearch", dict(net.named_arch_parameters()), layouts=darts_layouts)
    assert len(got.decisions) == 24
    assert darts.check("DartsSearch", decisions=got.decisions, args=SMALL).params > 0


# -- the bilevel loop ---------------------------------------------------------------------

def _tiny_data(n=48, seed=0):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    half = n // 2
    train = DataLoader(TensorDataset(x[:half], y[:half]), batch_size=8, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    valid = DataLoader(TensorDataset(x[half:], y[half:]), batch_size=8, shuffle=True,
                       generator=torch.Generator().manual_seed(seed + 1))
    return train, valid


def _config(epochs=1, steps=None):
    from archc.runtime.train import TrainConfig

    return TrainConfig(epochs=epochs, steps=steps, optimizer="sgd", lr=0.025, momentum=0.9, weight_decay=3e-4,
                       clip_grad=5.0, seed=0)


@pytest.mark.parametrize("order", [1, 2])
def test_a_search_step_changes_alpha(darts, order):
    import torch

    from archc.runtime.train.darts import DartsConfig, darts_search

    torch.manual_seed(0)
    net = darts.build("DartsSearch", relax="darts", **SMALL)
    before = {n: a.detach().clone() for n, a in net.named_arch_parameters()}
    w_before = [p.detach().clone() for p in net.parameters()]
    train, valid = _tiny_data()
    result = darts_search(net, train, valid, _config(steps=2), DartsConfig(order=order),
                          genotype_fn=lambda a: {k: v.argmax(-1).tolist() for k, v in a.items()})
    assert result.fit.steps == 2
    for name, a in result.alphas.items():
        assert not torch.equal(a, before[name]), name
        torch.testing.assert_close(dict(net.named_arch_parameters())[name].detach(), a)
    assert any(not torch.equal(p, q) for p, q in zip(net.parameters(), w_before))
    assert len(result.genotypes) == 1


def test_second_order_gradient_is_the_unrolled_hypergradient(darts):
    """The finite-difference architecture gradient is the exact one (by double backward)."""
    import torch
    import torch.nn.functional as F

    from archc.runtime.train import TrainState
    from archc.runtime.train.darts import DartsCallback, DartsConfig

    torch.manual_seed(0)
    net = darts.build("DartsSearch", relax="darts", **SMALL).double()
    train, valid = _tiny_data()
    xt, yt = next(iter(train))
    xv, yv = next(iter(valid))
    xt, xv = xt.double(), xv.double()
    weights = list(net.parameters())
    alphas = net.arch_parameters()
    cfg = _config()
    opt = torch.optim.SGD(weights, lr=0.1, momentum=0.9, weight_decay=3e-4)
    state = TrainState(net, opt, cfg, torch.device("cpu"))
    net.train()
    # in float64 with a small finite-difference step (the reference's r=0.01 steps over the
    # kinks of ReLU and max pooling on a net this small: its difference quotient is coarse;
    # here kinks lie 1e-6 away, so the step is 1e-8)
    cb = DartsCallback(alphas, [(xv, yv)], DartsConfig(order=2, r=1e-8), cfg, loss_fn=F.cross_entropy)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    got = cb._second_order(state, (xt, yt), (xv, yv))
    for k, v in net.state_dict().items():  # the virtual step is undone exactly (weights and statistics)
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            torch.testing.assert_close(v, before[k], rtol=0, atol=0)

    # exact: w' = w - η(∇w L_t + λw); dα = ∇α L_v(w') - η ∇²_{α,w} L_t(w) ∇w' L_v(w')
    eta, wd = 0.1, 3e-4
    state0 = {k: v.clone() for k, v in net.state_dict().items()}
    g = torch.autograd.grad(F.cross_entropy(net(xt), yt), weights)
    with torch.no_grad():
        for w, gi in zip(weights, g):
            w.sub_(eta * (gi + wd * w))
    gv = torch.autograd.grad(F.cross_entropy(net(xv), yv), alphas + weights)
    d_alpha, v = gv[:len(alphas)], gv[len(alphas):]
    net.load_state_dict(state0)
    gt = torch.autograd.grad(F.cross_entropy(net(xt), yt), weights, create_graph=True)
    hvp = torch.autograd.grad(sum((a * b).sum() for a, b in zip(gt, v)), alphas)
    exact = [da - eta * h for da, h in zip(d_alpha, hvp)]
    for a, b in zip(got, exact):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)


def test_checkpoint_and_resume_give_the_uninterrupted_search(darts, tmp_path):
    import torch

    from archc.runtime.train import Callback
    from archc.runtime.train.darts import DartsConfig, darts_search

    def fresh():
        torch.manual_seed(0)
        return darts.build("DartsSearch", relax="darts", **SMALL)

    train, valid = _tiny_data()
    straight = darts_search(fresh(), train, valid, _config(epochs=2), DartsConfig())
    ckpt = tmp_path / "search.pt"

    class Killed(Exception):
        pass

    class Kill(Callback):  # the process dies right after the first epoch's checkpoint
        def on_evaluate(self, state, metrics):
            raise Killed

    train, valid = _tiny_data()
    with pytest.raises(Killed):
        darts_search(fresh(), train, valid, _config(epochs=2), DartsConfig(), checkpoint=ckpt, callbacks=[Kill()])
    saved = torch.load(ckpt, weights_only=False)
    assert saved["epoch"] == 1
    train, valid = _tiny_data()
    resumed = darts_search(fresh(), train, valid, _config(epochs=2), DartsConfig(), checkpoint=ckpt)
    assert resumed.resumed_from == 1 and resumed.epochs == 2
    for name in straight.alphas:
        torch.testing.assert_close(resumed.alphas[name], straight.alphas[name], rtol=0, atol=0)
    again = darts_search(fresh(), train, valid, _config(epochs=2), DartsConfig(), checkpoint=ckpt)
    assert again.fit.stop_reason == "already done"
    for name in straight.alphas:
        torch.testing.assert_close(again.alphas[name], straight.alphas[name], rtol=0, atol=0)


# -- search plans ---------------------------------------------------------------------------

PLAN = """import std.darts

search Tiny for DartsSearch(C=4, layers=3, size=8, channels=1) {
    strategy("darts")
    data("digits")
    budget(epochs=1, steps=3, batch=64)
    seed(0)
}
"""


@pytest.mark.slow
@pytest.mark.parametrize("order", [1, 2])
def test_search_plan_runs_and_writes_the_derived_network(tmp_path, order):
    from archc.search.darts import run

    spec = tmp_path / "space.arch"
    spec.write_text(PLAN)
    result = run(spec, "Tiny", order=order, progress=False, verbose=False)
    row = result.best[0]
    assert row["metrics"]["order"] == order and row["metrics"]["rule"] == "darts"
    assert result.written == tmp_path / "space.Tiny.best.arch"
    written = archc.load(result.written)
    assert written.space("DartsSearch").size == 1
    assert written.check("DartsSearch").params == row["metrics"]["params"]
    assert (tmp_path / "space.Tiny.darts.pt").exists()
    assert "Genotype(normal=" in row["arch"]["genotype"]


def test_search_plan_refuses_other_objectives(tmp_path):
    from archc.search.darts import run

    spec = tmp_path / "space.arch"
    spec.write_text(PLAN.replace('    seed(0)', '    seed(0)\n    objective("accuracy")\n    objective("params")'))
    with pytest.raises(CompileError) as e:
        run(spec, "Tiny", progress=False, verbose=False)
    assert e.value.diagnostics[0].code == "E0524"


# -- rendering α ------------------------------------------------------------------------------

def test_render_draws_edges_by_softmax_weight(nb201):
    from archc.compiler.lower.graphviz import render

    graph = nb201.graph("NB201Search", relax="darts", N=1)
    alpha = [[0.0] * 5 for _ in range(6)]
    alpha[0][3] = 4.0  # edge 0 (node 0 <- input): nor_conv_3x3 dominates
    src = render(graph, alphas={"cell": alpha}).source
    assert src.count("penwidth") == 3 * 6 * 5  # 3 cells, 6 edges, 5 candidates
    assert "label=0.93" in src and "label=0.02" in src and "label=0.20" in src
    assert "penwidth" not in render(graph).source


# -- diagnostics --------------------------------------------------------------------------------

BAD = {
    "channels": ("""
model M() {
    input x: float32[B, 8, 8, 8]
    output y = cell(x, x, nodes=2, ops=[identity, conv(16, 3, padding=1)], keep=2)
}""", "changes the channels", 4),
    "keep": ("""
model M() {
    input x: float32[B, 8, 8, 8]
    output y = cell(x, x, nodes=2, ops=[identity, max_pool(3, padding=1)], keep=3)
}""", "`keep=3` but the first node has only 2 input(s)", 4),
    "group": ("""
model M() {
    input x: float32[B, 8, 8, 8]
    a = cell(x, x, nodes=2, ops=[identity, max_pool(3, padding=1)], keep=1, group="g")
    output y = cell(x, x, nodes=3, ops=[identity, max_pool(3, padding=1)], keep=1, group="g")
}""", "group `g` is used by cells of different shapes: nodes=3 here, nodes=2 in the first", 5),
    "group-ops": ("""
model M() {
    input x: float32[B, 8, 8, 8]
    a = cell(x, x, nodes=2, ops=[identity, max_pool(3, padding=1)], keep=1, group="g")
    output y = cell(x, x, nodes=2, ops=[identity, avg_pool(3, padding=1)], keep=1, group="g")
}""", "group `g` is used by cells of different shapes: ops=[identity, avg_pool(3, padding=1)] here", 5),
    "stride": ("""
model M() {
    input x: float32[B, 8, 8, 8]
    output y = cell(x, x, nodes=2, ops=[max_pool(3, padding=1), identity], keep=2, stride=2)
}""", "`identity` cannot take the edge's stride 2", 4),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_cells_in_the_supernet(case):
    src, message, line = BAD[case]
    with pytest.raises(CompileError) as e:
        archc.parse(src, filename=f"{case}.arch").check("M", relax="darts")
    d = e.value.diagnostics[0]
    assert d.code == "E0604" and message in d.message
    assert d.span is not None and d.span.file == f"{case}.arch" and d.span.line == line
    assert d.span.column > 1
    assert f"{case}.arch:{line}:" in str(e.value)


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_cells_in_the_discrete_space(case):
    """`archc check` (no relaxation) reports them too: every op of `ops` is checked on
    each kind of edge, not only the decided ones, and groups keep one shape."""
    src, message, line = BAD[case]
    with pytest.raises(CompileError) as e:
        prog = archc.parse(src, filename=f"{case}.arch")
        prog.check("M")
        prog.space("M")
    d = e.value.diagnostics[0]
    assert d.code == "E0604" and message in d.message and d.span.line == line
    with pytest.raises(CompileError) as again:  # whatever is decided
        archc.parse(src, filename=f"{case}.arch").graph("M", sample=3)
    assert again.value.diagnostics[0].message == d.message


def test_group_mismatch_notes_the_first_cell():
    src, _, _ = BAD["group"]
    with pytest.raises(CompileError) as e:
        archc.parse(src, filename="group.arch").check("M")
    d = e.value.diagnostics[0]
    assert (d.span.line, d.span.column) == (5, 16)
    assert "first used at group.arch:4:9" in d.notes


# A malformed `genotype=`: E0604 at the argument, naming the node and pair, in every mode.
_GENO = """
model M() {{
    input x: float32[B, 8, 8, 8]
    output y = cell(x, x, nodes={nodes}, ops=[zero, identity, max_pool(3, padding=1)], keep={keep}, genotype={g})
}}"""
GENOTYPE = {
    "input-out-of-range": (1, 1, "[[[identity, 5]]]", "node 0 of the genotype takes input 5, but it has 2 (0..1)"),
    "negative-input": (2, 1, "[[[identity, 0]], [[identity, -1]]]",
                       "node 1 of the genotype takes input -1, but it has 3 (0..2)"),
    "too-few-nodes": (2, 1, "[[[identity, 0]]]", "the genotype has 1 node(s), but the cell has `nodes=2`"),
    "too-many-nodes": (1, 1, "[[[identity, 0]], [[identity, 1]]]",
                       "the genotype has 2 node(s), but the cell has `nodes=1`"),
    "not-a-list": (1, 1, "3", "`genotype` is a list of nodes, each a list of [op, input] pairs, got an int"),
    "node-not-a-list": (1, 1, "[identity]", "node 0 of the genotype is an op, not a list of [op, input] pairs"),
    "pair-not-a-list": (1, 1, "[[identity, 0]]", "pair 0 of node 0 of the genotype is malformed: it is an op"),
    "pair-of-one": (1, 1, "[[[identity]]]", "pair 0 of node 0 of the genotype is malformed: it has 1 item(s)"),
    "pair-op-not-an-op": (1, 1, "[[[0, identity]]]",
                          "pair 0 of node 0 of the genotype is malformed: its first item is an int, not an op"),
    "pair-input-not-an-int": (1, 1, '[[[identity, "s0"]]]',
                              "pair 0 of node 0 of the genotype is malformed: its second item is a string"),
    "same-input-twice": (1, 2, "[[[identity, 1], [zero, 1]]]", "node 0 of the genotype takes input 1 twice"),
    "fewer-than-keep": (2, 2, "[[[identity, 0], [identity, 1]], [[identity, 2]]]",
                        "node 1 of the genotype has 1 pair(s), but the cell has `keep=2`"),
    "more-than-keep": (1, 1, "[[[identity, 0], [identity, 1]]]",
                       "node 0 of the genotype has 2 pair(s), but the cell has `keep=1`"),
    "edge-left-out": (2, '"all"', "[[[identity, 0], [zero, 1]], [[identity, 0], [identity, 2]]]",
                      'node 1 of the genotype leaves out input 1, but with `keep="all"` it takes every input (0..2)'),
}


@pytest.mark.parametrize("relax", [None, "darts"])
@pytest.mark.parametrize("case", list(GENOTYPE))
def test_malformed_genotypes(case, relax):
    nodes, keep, g, message = GENOTYPE[case]
    src = _GENO.format(nodes=nodes, keep=keep, g=g)
    with pytest.raises(CompileError) as e:
        archc.parse(src, filename=f"{case}.arch").check("M", relax=relax)
    d = e.value.diagnostics[0]
    assert d.code == "E0604" and message in d.message, d.message
    line = src.splitlines()[3]
    assert (d.span.file, d.span.line, d.span.column) == (f"{case}.arch", 4, line.index("genotype=") + 1)
    assert d.span.end_column == len(line)  # the whole argument, up to the call's `)`
    assert d.help


def test_well_formed_genotypes_build_in_any_pair_order():
    """keep="all" with every edge listed, in any order; keep=K pairs in the order written."""
    full = _GENO.format(nodes=2, keep='"all"', g="[[[identity, 1], [zero, 0]], [[zero, 2], [identity, 0], "
                        "[max_pool(3, padding=1), 1]]]")
    ops = [n.op for n in archc.parse(full).graph("M").nodes()]
    assert (ops.count("max_pool"), ops.count("zero"), ops.count("identity")) == (1, 2, 2)
    kept = _GENO.format(nodes=2, keep=1, g="[[[max_pool(3, padding=1), 1]], [[identity, 2]]]")
    assert archc.parse(kept).check("M").params == 0
