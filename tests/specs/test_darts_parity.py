"""std.darts, std.pcdarts and std.nb201 against the reference figures and the reference code.

Figures (parameter counts, α sizes, space sizes) are checked on shapes alone;
the torch tests compare archc's networks with the re-implementation of the
DARTS reference code in benchmarks/darts_reference.py: the same weights (copied
in registration order) give the same outputs, the same α gradients and the
same search steps.
"""
from __future__ import annotations

import importlib.util
import random
import re
from pathlib import Path

import pytest

import archc

ROOT = Path(archc.__file__).resolve().parent.parent
SPECS = ROOT / "archc" / "specs"


@pytest.fixture(scope="module")
def darts():
    return archc.load(SPECS / "darts.arch")


@pytest.fixture(scope="module")
def nb201():
    return archc.load(SPECS / "nb201.arch")


@pytest.fixture(scope="module")
def pcdarts():
    return archc.load(SPECS / "pcdarts.arch")


def _reference():
    spec = importlib.util.spec_from_file_location("darts_reference", ROOT / "benchmarks" / "darts_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ref():
    pytest.importorskip("torch")
    return _reference()


@pytest.fixture(autouse=True)
def _one_thread():
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- figures ---------------------------------------------------------------------

def test_darts_search_supernet(darts):
    report = darts.check("DartsSearch", relax="darts")
    assert report.params == 1_930_618
    assert report.arch_params == 224  # 2 tables of 14 edges x 8 ops
    graph = darts.graph("DartsSearch", relax="darts")
    mixed = [n for n in graph.nodes() if n.op == "mixed"]
    assert len(mixed) == 112  # 8 cells x 14 edges
    by_table: dict[str, set[int]] = {}
    for n in mixed:
        table = graph.node(graph.in_values(n.id)[0].node).path
        cell = int(re.match(r"DartsCell_(\d+)\.", n.path).group(1))
        by_table.setdefault(table, set()).add(cell)
    assert by_table == {"arch.normal": {0, 1, 3, 4, 6, 7}, "arch.reduce": {2, 5}}


@pytest.mark.slow
def test_darts_search_space_size(darts):
    space = darts.space("DartsSearch")
    assert space.size == 1_076_746_950_455_072_400
    # per group and node j: which 2 of its j + 2 inputs it keeps, and an op for each possible edge
    assert len(space.decisions) == 2 * sum(1 + (j + 2) for j in range(4))
    # = prod over nodes of C(j + 2, 2) * 7^2, squared for the two groups
    assert space.size == (1 * 3 * 6 * 10 * 7 ** 8) ** 2


@pytest.mark.parametrize("model,args,params", [
    ("DartsV2", {}, 3_825_768),
    ("DartsV2", {"auxiliary": False}, 3_349_342),
    ("DartsV1", {"auxiliary": False}, 3_169_414),
    ("DartsImageNet", {}, 4_718_752),
])
def test_darts_evaluation_networks(darts, model, args, params):
    assert darts.check(model, **args).params == params


def test_pcdarts_figures(pcdarts):
    report = pcdarts.check("PCDartsSearch", relax="pcdarts")
    assert (report.params, report.arch_params) == (299_578, 252)  # 224 α and 28 β
    assert pcdarts.check("PCDarts", auxiliary=False).params == 3_634_678


def test_nb201_supernet_and_space(nb201):
    report = nb201.check("NB201Search", relax="darts")
    assert (report.params, report.arch_params) == (1_692_826, 30)
    space = nb201.space("NB201Search")
    assert space.size == 15_625 == 5 ** 6
    assert len(space.decisions) == 6


def _nb201_count(decisions: dict[str, int]) -> int:
    n3 = sum(v == 3 for v in decisions.values())  # ops: zero, skip, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3
    n1 = sum(v == 2 for v in decisions.values())
    return 73_306 + 243_040 * n3 + 28_000 * n1


@pytest.mark.parametrize("n", [pytest.param(25, id="25"), pytest.param(300, id="300", marks=pytest.mark.slow)])
def test_nb201_candidates_parameter_formula(nb201, n):
    labels = list(nb201.space("NB201Search").decisions)
    rng = random.Random(n)
    seen = set()
    while len(seen) < n:
        seen.add(tuple(rng.randrange(5) for _ in labels))
    for values in sorted(seen):
        decisions = dict(zip(labels, values))
        assert nb201.check("NB201Search", decisions=decisions, affine=True).params == _nb201_count(decisions)


# -- the reference re-implementation has the reference figures ------------------------------

def test_reference_reimplementation_counts(ref):
    net = ref.SearchNetwork(16, 10, 8)
    assert sum(p.numel() for p in net.parameters()) == 1_930_618
    assert sum(a.numel() for a in net.arch_parameters()) == 224
    v2 = ref.NetworkCIFAR(36, 10, 20, True, ref.DARTS_V2)
    assert ref.count_parameters(v2) == 3_349_342
    assert sum(p.numel() for p in v2.parameters()) == 3_825_768
    assert ref.count_parameters(ref.NetworkCIFAR(36, 10, 20, True, ref.DARTS_V1)) == 3_169_414


# -- archc against the reference code, same weights -----------------------------------------

def _copy_into(net, theirs, alphas=None):
    """Load the reference module's state into archc's, in registration order (shapes checked)."""
    ours = [(k, v) for k, v in net.state_dict().items() if not k.startswith("arch.")]
    src = list(theirs.state_dict().values())
    assert len(ours) == len(src)
    state = {}
    for (k, v), w in zip(ours, src):
        assert v.shape == w.shape, k
        state[k] = w.clone()
    for name, a in (alphas or {}).items():
        state["arch." + name] = a.detach().clone()
    net.load_state_dict(state)


def test_supernet_computes_the_reference_function(darts, ref):
    import torch

    torch.manual_seed(0)
    theirs = ref.SearchNetwork(4, 10, 5)
    net = darts.build("DartsSearch", relax="darts", C=4, layers=5)
    _copy_into(net, theirs, {"normal": theirs.alphas_normal, "reduce": theirs.alphas_reduce})
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    net.train()
    theirs.train()
    out_a, out_b = net(x), theirs(x)
    torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-6)
    ga = torch.autograd.grad(torch.nn.functional.cross_entropy(out_a, y), net.arch_parameters())
    gb = torch.autograd.grad(torch.nn.functional.cross_entropy(out_b, y), theirs.arch_parameters())
    for a, b in zip(ga, gb):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("model,genotype", [("DartsV1", "DARTS_V1"), ("DartsV2", "DARTS_V2")])
def test_evaluation_network_computes_the_reference_function(darts, ref, model, genotype):
    import torch

    torch.manual_seed(0)
    theirs = ref.NetworkCIFAR(8, 10, 5, False, getattr(ref, genotype))
    net = darts.build(model, C=8, layers=5, auxiliary=False)
    _copy_into(net, theirs)
    x = torch.randn(3, 3, 32, 32)
    for train in (True, False):
        net.train(train)
        theirs.train(train)
        torch.testing.assert_close(net(x), theirs(x)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("order", [1, 2])
def test_search_steps_match_the_reference(darts, ref, order):
    """Two search steps (architecture, then weights) of archc's loop and of the reference's
    Architect + train_search.py, from the same weights and α on the same batches."""
    import torch
    import torch.nn.functional as F

    from archc.runtime.train import TrainConfig, TrainState
    from archc.runtime.train.darts import DartsCallback, DartsConfig

    torch.manual_seed(0)
    theirs = ref.SearchNetwork(4, 10, 3)
    net = darts.build("DartsSearch", relax="darts", C=4, layers=3, size=16)
    _copy_into(net, theirs, {"normal": theirs.alphas_normal, "reduce": theirs.alphas_reduce})
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(4)]
    lr = 0.025
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=3e-4)
    cfg = TrainConfig(epochs=1, optimizer="sgd", lr=lr, momentum=0.9, weight_decay=3e-4, clip_grad=5.0)
    cb = DartsCallback(net.arch_parameters(), [batches[1], batches[3]], DartsConfig(order=order), cfg)
    state = TrainState(net, opt, cfg, torch.device("cpu"))
    net.train()
    cb.on_fit_start(state)
    t_opt = torch.optim.SGD(theirs.parameters(), lr=lr, momentum=0.9, weight_decay=3e-4)
    architect = ref.Architect(theirs)
    for (xt, yt), (xv, yv) in [(batches[0], batches[1]), (batches[2], batches[3])]:
        cb.on_step_start(state, (xt, yt))
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(xt), yt).backward()
        torch.nn.utils.clip_grad_norm_(list(net.parameters()), 5.0)
        opt.step()
        ref.search_step(theirs, architect, t_opt, xt, yt, xv, yv, lr, unrolled=order == 2)
    for a, b in zip(net.arch_parameters(), theirs.arch_parameters()):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-4, atol=1e-6)
    ours = [v for k, v in net.state_dict().items() if not k.startswith("arch.")]
    for a, b in zip(ours, theirs.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_full_search_supernet_runs(darts):
    import torch

    net = darts.build("DartsSearch", relax="darts")
    assert sum(p.numel() for p in net.parameters()) == 1_930_618
    assert sum(a.numel() for a in net.arch_parameters()) == 224
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.logsumexp(-1).sum().backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in net.arch_parameters())
