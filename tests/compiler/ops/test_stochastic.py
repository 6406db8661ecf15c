"""Stochastic ops (reparameterize, random_mask, restore), detach, the `ema` declaration and the
graph-level checks: EMA targets (E1103) and inputs a train plan's data cannot supply (E1105).
MAE: its encoder sees only the kept patches, its loss covers only the removed ones."""
from pathlib import Path

import pytest
import torch

import archc
import archc.cli
from archc.compiler.ir import TensorType
from archc.compiler.ops.stochastic import check_graph, ema_pairs, weights_under
from opcheck import B, check, fails, infer, make, run_op

SPECS = Path(archc.__file__).parent / "specs"


# -- reparameterize --------------------------------------------------------------------------------

def test_reparameterize_samples_and_differentiates():
    check("reparameterize", [(4, 3), (4, 3)])
    torch.manual_seed(0)
    mu = torch.full((20000, 2), 1.5, requires_grad=True)
    logvar = torch.full((20000, 2), 2 * torch.log(torch.tensor(0.5)).item(), requires_grad=True)
    z, _ = run_op("reparameterize", [mu, logvar])
    assert abs(float(z.detach().mean()) - 1.5) < 0.02 and abs(float(z.detach().std()) - 0.5) < 0.02
    z.sum().backward()
    assert torch.equal(mu.grad, torch.ones_like(mu))  # dz/dmu = 1
    assert logvar.grad is not None and float(logvar.grad.abs().sum()) > 0
    fails("E1102", "reparameterize", [(4, 3), (4, 2)])
    op, a = make("reparameterize", deterministic_eval=True)
    assert "self.training" in op.lower(a, [TensorType((4, 3))] * 2, [TensorType((4, 3))]).template


# -- random_mask and restore -----------------------------------------------------------------------

def test_random_mask_shapes():
    kept, mask, ids = infer("random_mask", [(B, 16, 8)], 0.75)
    assert kept.shape == (B, 4, 8) and mask.shape == (B, 16) and ids == TensorType((B, 16), "int64")
    assert infer("random_mask", [(B, 16, 8)], 0.0)[0].shape == (B, 16, 8)
    assert infer("random_mask", [(B, 10, 8)], 0.5)[0].shape == (B, 5, 8)
    fails("E0302", "random_mask", [(2, 16)])
    fails("E0207", "random_mask", [(2, 3, 8)], 0.9)  # keeps int(0.3) = 0 tokens


def test_random_mask_then_restore_round_trips():
    torch.manual_seed(0)
    x = torch.randn(3, 16, 5)
    (kept, mask, ids), _ = run_op("random_mask", [x], 0.75)
    assert kept.shape == (3, 4, 5) and torch.equal(mask.sum(1), torch.full((3,), 12.0))
    # the kept tokens are exactly the unmasked positions, each example shuffled by its own permutation
    for b in range(3):
        got = {tuple(t.tolist()) for t in kept[b]}
        assert got == {tuple(x[b, i].tolist()) for i in range(16) if mask[b, i] == 0}
    assert len({tuple(torch.nonzero(mask[b] == 0).flatten().tolist()) for b in range(3)}) > 1
    full, mod = run_op("restore", [kept, ids])
    assert full.shape == (3, 16, 5) and list(mod.state_dict()) == ["mask_token"]
    for b in range(3):
        for i in range(16):
            expected = x[b, i] if mask[b, i] == 0 else mod.mask_token[0, 0]
            torch.testing.assert_close(full[b, i], expected)
    zeros, mod = run_op("restore", [kept, ids], token=False)
    assert not mod.state_dict() and float(zeros[mask.bool()].abs().sum()) == 0


def test_restore_checks():
    op, a = make("restore")
    good = [TensorType((B, 4, 8)), TensorType((B, 16), "int64")]
    assert op.infer(a, good) == [TensorType((B, 16, 8))]
    assert op.params(a, good) == {"mask_token": (1, 1, 8)}
    with pytest.raises(archc.compiler.ops.ShapeError) as e:
        op.infer(a, [TensorType((B, 4, 8)), TensorType((B, 16))])
    assert e.value.code == "E0303"
    with pytest.raises(archc.compiler.ops.ShapeError) as e:
        op.infer(a, [TensorType((B, 4, 8))])
    assert e.value.code == "E0306"


def test_restore_in_a_pipeline_takes_ids_by_keyword():
    prog = archc.parse("model M() {\n"
                       "    input x: float32[B, 16, 8]\n"
                       "    kept, mask, ids = random_mask(x, 0.5)\n"
                       "    output y = kept -> dec: restore(ids=ids)\n"
                       "    output y2 = unshuffle(kept, ids, token=false)\n"
                       "}\n")
    r = prog.check()
    assert r.outputs == {"y": "[B, 16, 8]", "y2": "[B, 16, 8]"} and r.params == 8
    y, y2 = prog.build()(torch.randn(2, 16, 8))
    assert y.shape == (2, 16, 8)


# -- detach and ema ----------------------------------------------------------------------------------

def test_detach():
    check("detach", [(2, 3)])
    x = torch.randn(2, 3, requires_grad=True)
    y, _ = run_op("detach", [x])
    assert not y.requires_grad
    assert infer("stop_gradient", [(B, 3)])[0].shape == (B, 3)


def test_ema_op_is_the_identity_and_names_the_pair():
    op, a = make("ema", "target", "online", 0.9)
    assert op.infer(a, [TensorType((B, 8))]) == [TensorType((B, 8))]
    low = op.lower(a, [TensorType((B, 8))], [TensorType((B, 8))])
    assert low.args == ("target", "online") and low.kwargs == {"decay": 0.9}
    x = torch.randn(2, 8, requires_grad=True)
    y, mod = run_op("ema", [x], "target", "online", 0.9)
    assert torch.equal(y, x) and not y.requires_grad and not mod.state_dict()
    y, _ = run_op("ema", [x], "target", "online", 0.0, detach=False)
    assert y.requires_grad
    fails("E1103", "ema", [(2, 8)], "online", "online")
    with pytest.raises(archc.CompileError) as e:
        archc.parse("model M() {\n input x: float32[B, 8]\n output y = ema(x, \"t\", of=\"o\", decay=1.5)\n}\n").check()
    assert e.value.diagnostics[0].code == "E0207"


BYOLISH = """
block Net(x, hidden: int) {{
    return x -> fc1: linear(hidden) -> relu -> fc2: linear(8)
}}
model M() {{
    input view1: float32[B, 16]
    input view2: float32[B, 16]
    p = view1 -> online: Net(32)
    t = view2 -> {target} -> ema({name}, of=online, decay=0.99)
    output loss = byol_loss(p, t)
}}
"""


def graph_diags(text):
    """Whole-graph diagnostics: `Program.graph()` raises E1103 itself; check_graph adds E1105."""
    try:
        graph = archc.parse(text, "t.arch").graph()
    except archc.CompileError as e:
        return e.diagnostics
    return check_graph(graph)


def test_a_matching_ema_target_passes():
    g = archc.parse(BYOLISH.format(target="target: Net(32)", name="target"), "t.arch").graph()
    assert check_graph(g) == []
    assert ema_pairs(g) == [("target", "online", 0.99)]
    assert weights_under(g, "target") == weights_under(g, "online") == {
        "fc1.weight": (32, 16), "fc1.bias": (32,), "fc2.weight": (8, 32), "fc2.bias": (8,)}


def test_an_ema_target_of_another_shape():
    (d,) = graph_diags(BYOLISH.format(target="target: Net(64)", name="target"))
    assert d.code == "E1103" and (d.span.line, d.span.column) == (9, 37)
    assert "`target.fc1.weight` is [64, 16] but `online.fc1.weight` is [32, 16]" in d.message


def test_ema_targets_that_are_not_modules_or_overlap():
    (d,) = graph_diags(BYOLISH.format(target="target: Net(32)", name='"nothing"'))
    assert d.code == "E1103" and "`nothing` is not a module with weights" in d.message
    (d,) = graph_diags(BYOLISH.format(target="target: Net(32)", name='"online.fc1"'))
    assert d.code == "E1103" and "contain one another" in d.message
    text = BYOLISH.format(target="target: Net(32)", name="target").replace(
        "    output loss", "    t2 = ema(t, target, of=online, decay=0.5)\n    output loss")
    (d,) = graph_diags(text)
    assert d.code == "E1103" and "decay 0.99" in d.message and "decay 0.5" in d.message


def test_archc_check_reports_ema_targets(tmp_path, capsys):
    f = tmp_path / "byol.arch"
    f.write_text(BYOLISH.format(target="target: Net(64)", name="target"))
    assert archc.cli.main(["check", str(f)]) == 1
    assert "error[E1103]" in capsys.readouterr().err


# -- inputs a train plan's data supplies -------------------------------------------------------------

PLAN = """
model M() {{
    {inputs}
    output loss = {loss}
}}
train P for M() {{
    data("digits")
    {augment}
}}
"""


def plan_diags(inputs, loss, augment=""):
    prog = archc.parse(PLAN.format(inputs=inputs, loss=loss, augment=augment), "t.arch")
    return check_graph(prog.graph(plan="P"))


def test_train_plan_inputs():
    assert plan_diags("input view1: float32[B, 1, 8, 8]\n input view2: float32[B, 1, 8, 8]",
                      "nt_xent(view1 -> flatten, view2 -> flatten)") == []
    assert plan_diags("input view: float32[B, 1, 8, 8]\n input pretext: int64[B]",
                      "cross_entropy(view -> flatten -> linear(4), pretext)", 'augment(pretext="rotate")') == []
    assert plan_diags("input tiles: float32[B, 4, 1, 4, 4]\n input pretext: int64[B]",
                      "cross_entropy(tiles -> flatten -> linear(24), pretext)", 'augment(pretext="jigsaw")') == []
    assert plan_diags("input x: float32[B, 1, 8, 8]\n input noise: float32[B, 4]\n input tokens: int64[B, 6]",
                      "mse(x -> flatten -> linear(4), noise)") == []


@pytest.mark.parametrize("inputs,loss,augment,line,fragment", [
    ("input pixels: float32[B, 1, 8, 8]", "mse(pixels, pixels)", "", 3, "cannot supply input `pixels`"),
    ("input x: float32[B, 1, 8, 8]\n input pretext: int64[B]", "cross_entropy(x -> flatten, pretext)", "", 4,
     "needs a pretext task"),
    ("input labels: float32[B]", "mse(labels, labels)", "", 3, "receives integer ids"),
    ("input x: float32[B, 3, 32, 32]", "mse(x, x)", "", 3, "`digits` images are [B, 1, 8, 8]"),
    ("input tiles: float32[B, 4, 1, 8, 8]\n input pretext: int64[B]", "cross_entropy(tiles -> flatten, pretext)",
     'augment(pretext="jigsaw")', 3, "input `tiles` must be"),
])
def test_inputs_the_data_cannot_supply(inputs, loss, augment, line, fragment):
    diags = plan_diags(inputs, loss, augment)
    assert diags and diags[0].code == "E1105" and diags[0].span.line == line and fragment in diags[0].message


def test_train_plans_without_data_are_not_checked():
    prog = archc.parse("model M() {\n input pixels: float32[B, 4]\n output y = pixels -> linear(2)\n}\n"
                       "train Mem for M() {\n precision(\"bf16-mixed\")\n}\n", "t.arch")
    assert check_graph(prog.graph(plan="Mem")) == []


# -- MAE --------------------------------------------------------------------------------------------------

def test_mae_encoder_sees_only_the_kept_patches():
    prog = archc.load(SPECS / "ssl.arch")
    for ratio, kept in ((0.75, 4), (0.5, 8), (0.0, 16)):
        g = prog.graph("MAE", ratio=ratio)
        first = next(n for n in g.nodes() if n.path.startswith("blocks.0."))
        n_patches = 16
        assert g.in_types(first.id)[0].shape[1] == kept == int(n_patches * (1 - ratio))
        # every encoder op sees kept tokens only; the decoder sees all 16 positions
        for n in g.nodes():
            if n.path.startswith("blocks.") and g.in_types(n.id):
                assert g.in_types(n.id)[0].shape[1] == kept, n.path
            if n.path.startswith("decoder_blocks.") and g.in_types(n.id):
                assert g.in_types(n.id)[0].shape[1] == n_patches, n.path


def test_mae_loss_covers_only_the_masked_patches():
    prog = archc.load(SPECS / "ssl.arch")
    torch.manual_seed(0)
    net = prog.build("MAE")
    seen = {}

    def keep(name):
        def hook(module, args, out):
            seen[name] = out
        return hook

    net.random_mask_0.register_forward_hook(keep("mask"))
    net.decoder_pred.register_forward_hook(lambda m, a, out: out.retain_grad() or seen.__setitem__("pred", out))
    loss, _ = net(torch.rand(4, 1, 8, 8))
    loss.backward()
    mask = seen["mask"][1]
    grad = seen["pred"].grad  # [4, 16, 4]: d loss / d prediction of each patch
    assert grad.shape == (4, 16, 4)
    assert float(grad[mask == 0].abs().sum()) == 0.0  # kept (visible) patches do not count
    assert bool((grad[mask == 1].abs().sum(-1) > 0).all())  # every removed patch does
