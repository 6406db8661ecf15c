"""Objective ops (losses) and `ensemble`: shapes, lowering, and each loss against a direct
tensor computation (NT-Xent against a hand-written reference, KL against the closed form,
CLIP's loss as a symmetric cross-entropy); wrong ranks E1101, disagreeing inputs E1102,
ensemble members that differ E1104, with positions."""
import math

import pytest
import torch
import torch.nn.functional as F

import archc
from archc.compiler.ir import TensorType
from opcheck import B, check, fails, infer, make, run_op


def codes(text, model=None):
    with pytest.raises(archc.CompileError) as e:
        archc.parse(text, "t.arch").check(model)
    return e.value.diagnostics


# -- cross_entropy ---------------------------------------------------------------------------

def test_cross_entropy_matches_torch():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 5), torch.randint(0, 5, (6,))
    out, _ = run_op("cross_entropy", [logits, labels])
    torch.testing.assert_close(out, F.cross_entropy(logits, labels))
    out, _ = run_op("cross_entropy", [logits, labels], label_smoothing=0.1)
    torch.testing.assert_close(out, F.cross_entropy(logits, labels, label_smoothing=0.1))
    out, _ = run_op("cross_entropy", [logits, labels], reduction="batchmean")
    torch.testing.assert_close(out, F.cross_entropy(logits, labels, reduction="sum") / 6)
    seq, tgt = torch.randn(2, 3, 7), torch.randint(0, 7, (2, 3))  # classes last, as the language lays out sequences
    out, _ = run_op("cross_entropy", [seq, tgt])
    torch.testing.assert_close(out, F.cross_entropy(seq.permute(0, 2, 1), tgt))
    probs = torch.softmax(torch.randn(6, 5), -1)
    out, _ = run_op("cross_entropy", [logits, probs])
    torch.testing.assert_close(out, -(probs * torch.log_softmax(logits, -1)).sum(-1).mean())


def test_cross_entropy_shapes():
    op, a = make("cross_entropy")
    assert op.infer(a, [TensorType((B, 10)), TensorType((B,), "int64")]) == [TensorType(())]
    op, a = make("cross_entropy")
    with pytest.raises(archc.compiler.ops.ShapeError) as ex:
        op.infer(a, [TensorType((B,)), TensorType((B,), "int64")])
    assert ex.value.code == "E1101"
    with pytest.raises(archc.compiler.ops.ShapeError) as ex:
        op.infer(a, [TensorType((B, 10, 1, 1)), TensorType((B,), "int64")])
    assert ex.value.code == "E1101" and "pool or flatten" in ex.value.help
    with pytest.raises(archc.compiler.ops.ShapeError) as ex:
        op.infer(a, [TensorType((B, 10)), TensorType((4,), "int64")])
    assert ex.value.code == "E1102"
    with pytest.raises(archc.compiler.ops.ShapeError) as ex:
        op.infer(a, [TensorType((B, 10), "int64"), TensorType((B,), "int64")])
    assert ex.value.code == "E1102"


# -- mse, bce, gan -----------------------------------------------------------------------------

def test_mse_and_masked_mse():
    torch.manual_seed(0)
    p, t = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    out, _ = run_op("mse", [p, t])
    torch.testing.assert_close(out, F.mse_loss(p, t))
    out, _ = run_op("mse", [p, t], reduction="batchmean")
    torch.testing.assert_close(out, ((p - t) ** 2).sum() / 3)
    mask = (torch.rand(3, 5) > 0.5).float()
    mask[0, 0] = 1
    out, mod = run_op("mse", [p, t, mask])
    per_patch = ((p - t) ** 2).mean(-1)
    torch.testing.assert_close(out, (per_patch * mask).sum() / mask.sum())
    assert mod is not None and not mod.state_dict()
    assert infer("mse", [(B, 16, 4), (B, 16, 4), (B, 16)])[0].shape == ()
    fails("E1102", "mse", [(2, 16, 4), (2, 16, 4), (2, 8)])
    fails("E1102", "mse", [(2, 16, 4), (2, 16, 3)])


def test_bce_with_logits():
    torch.manual_seed(0)
    z, t = torch.randn(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    out, _ = run_op("bce_with_logits", [z, t], reduction="batchmean")
    direct = -(t * F.logsigmoid(z) + (1 - t) * F.logsigmoid(-z)).sum() / 4
    torch.testing.assert_close(out, direct)


@pytest.mark.parametrize("kind,target,expected", [
    ("vanilla", "real", lambda d: -F.logsigmoid(d).mean()),
    ("vanilla", "fake", lambda d: -F.logsigmoid(-d).mean()),
    ("vanilla", "generator", lambda d: -F.logsigmoid(d).mean()),
    ("lsgan", "fake", lambda d: (d ** 2).mean()),
    ("hinge", "real", lambda d: torch.relu(1 - d).mean()),
    ("hinge", "fake", lambda d: torch.relu(1 + d).mean()),
    ("hinge", "generator", lambda d: -d.mean()),
])
def test_gan_loss(kind, target, expected):
    d = torch.randn(6, 1)
    out, _ = run_op("gan_loss", [d], kind=kind, target=target)
    torch.testing.assert_close(out, expected(d))


# -- self-supervised -----------------------------------------------------------------------------

def nt_xent_reference(z1, z2, t):
    """NT-Xent written out anchor by anchor (Chen et al. 2020, eq. 1)."""
    z = torch.cat([z1, z2])
    z = z / z.norm(dim=1, keepdim=True)
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2  # the other view of the same example
        sims = torch.stack([z[i] @ z[k] / t for k in range(n2) if k != i])
        pos = z[i] @ z[j] / t
        total = total - (pos - torch.logsumexp(sims, 0))
    return total / n2


def test_nt_xent_against_a_reference():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 8), torch.randn(5, 8)
    for t in (0.5, 0.1):
        out, mod = run_op("nt_xent", [z1, z2], t)
        torch.testing.assert_close(out, nt_xent_reference(z1, z2, t))
        assert not mod.state_dict()
    check("nt_xent", [(4, 16), (4, 16)])
    # identical views far from each other's negatives: the loss is small
    e = torch.eye(4) * 10
    small, _ = run_op("nt_xent", [e, e], 0.1)
    assert float(small) < 1e-3


def test_nt_xent_errors():
    fails("E1101", "nt_xent", [(4, 2, 16), (4, 2, 16)])
    fails("E1102", "nt_xent", [(4, 16), (4, 8)])


def test_byol_loss():
    torch.manual_seed(0)
    p, z = torch.randn(6, 8), torch.randn(6, 8)
    out, _ = run_op("byol_loss", [p, z])
    pn, zn = p / p.norm(dim=1, keepdim=True), z / z.norm(dim=1, keepdim=True)
    torch.testing.assert_close(out, (2 - 2 * (pn * zn).sum(1)).mean())
    same, _ = run_op("byol_loss", [p, 3 * p])
    assert abs(float(same)) < 1e-6
    fails("E1102", "byol_loss", [(4, 8), (4, 16)])


def test_kl_normal_against_the_closed_form():
    torch.manual_seed(0)
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3)
    out, _ = run_op("kl_normal", [mu, logvar])
    var = logvar.exp()
    # KL(N(mu, var) || N(0, 1)) per dimension: (var + mu^2 - 1 - log var) / 2
    closed = ((var + mu ** 2 - 1 - logvar) / 2).sum() / 4
    torch.testing.assert_close(out, closed)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(4, 3), torch.ones(4, 3))
    torch.testing.assert_close(out, torch.distributions.kl_divergence(q, p).sum(1).mean())
    zero, _ = run_op("kl_normal", [torch.zeros(2, 3), torch.zeros(2, 3)])
    assert float(zero) == 0.0
    out, _ = run_op("kl_normal", [mu, logvar], reduction="mean")
    torch.testing.assert_close(out, ((var + mu ** 2 - 1 - logvar) / 2).mean())
    fails("E1102", "kl_normal", [(4, 3), (4, 2)])


def test_clip_loss_is_a_symmetric_cross_entropy():
    torch.manual_seed(0)
    img, txt = torch.randn(5, 8), torch.randn(5, 8)
    out, mod = run_op("clip_loss", [img, txt])
    assert list(mod.state_dict()) == ["logit_scale"]
    s = mod.logit_scale.detach().exp()
    assert math.isclose(float(s), 1 / 0.07, rel_tol=1e-5)
    i, t = F.normalize(img, dim=1), F.normalize(txt, dim=1)
    logits = s * i @ t.T
    labels = torch.arange(5)
    image_to_text = F.cross_entropy(logits, labels)
    text_to_image = F.cross_entropy(logits.T, labels)
    torch.testing.assert_close(out, (image_to_text + text_to_image) / 2)
    # symmetric in its two inputs
    swapped, _ = run_op("clip_loss", [txt, img])
    torch.testing.assert_close(out, swapped)
    out.backward()
    assert mod.logit_scale.grad is not None
    fixed, mod = run_op("clip_loss", [img, txt], logit_scale=0.0, learn=False)
    assert not mod.state_dict()
    torch.testing.assert_close(fixed, (F.cross_entropy(i @ t.T, labels) + F.cross_entropy(t @ i.T, labels)) / 2)
    check("clip_loss", [(4, 8), (4, 8)])
    fails("E1101", "clip_loss", [(4, 2, 8), (4, 2, 8)])


# -- ensemble -----------------------------------------------------------------------------------

def test_ensemble_shapes_and_weights():
    check("ensemble", [(4, 10), (4, 10), (4, 10)])
    outs = check("ensemble", [(4, 10), (4, 10), (4, 10)], mode="stack")
    assert outs[0].shape == (4, 10)
    op, a = make("ensemble", mode="stack")
    ins = [TensorType((B, 10))] * 3
    assert op.params(a, ins) == {"weight": (10, 30), "bias": (10,)}
    assert op.buffers(a, ins) == {"member_weights": (3,)}
    assert infer("ensemble", [(B, 10)] * 3, mode="stack", meta="none")[0].shape == (B, 30)
    fails("E1104", "ensemble", [(4, 10), (4, 9)])
    fails("E1104", "ensemble", [(4, 10)])
    fails("E0207", "ensemble", [(4, 10), (4, 10)], mode="mean", meta="none")


def test_ensemble_modes():
    torch.manual_seed(0)
    zs = [torch.randn(6, 4) for _ in range(3)]
    out, mod = run_op("ensemble", zs)
    mean = sum(torch.softmax(z, -1) for z in zs) / 3
    torch.testing.assert_close(out.exp(), mean)
    out, mod = run_op("ensemble", zs, mode="vote")
    votes = sum(F.one_hot(z.argmax(-1), 4).float() for z in zs)
    assert torch.equal(out.argmax(-1), (votes + 1e-4 * mean).argmax(-1))
    mod.member_weights.copy_(torch.tensor([5.0, 1.0, 1.0]))  # a weighted vote: member 1 decides
    assert torch.equal(mod(*zs).argmax(-1), zs[0].argmax(-1))
    out, mod = run_op("ensemble", zs, mode="stack")
    feats = torch.cat([torch.softmax(z, -1) for z in zs], -1)
    torch.testing.assert_close(out, feats @ mod.weight.T + mod.bias)


# -- through the compiler: codes and positions ----------------------------------------------------

def test_wrong_rank_logits_are_reported_where_the_loss_is_written():
    (d,) = codes("model Net() {\n"
                 "    input x: float32[B, 1, 8, 8]\n"
                 "    input labels: int64[B]\n"
                 "    logits = x -> conv(10, 3, padding=1)\n"
                 "    output loss = cross_entropy(logits, labels)\n"
                 "}\n")
    assert d.code == "E1101" and (d.span.line, d.span.column) == (5, 19)
    assert "[B, 10, 8, 8]" in d.message


def test_loss_errors_carry_the_block_chain():
    (d,) = codes("block Head(x, y) {\n"
                 "    return byol_loss(x, y)\n"
                 "}\n"
                 "model Net() {\n"
                 "    input a: float32[B, 16]\n"
                 "    input b: float32[B, 8]\n"
                 "    output loss = (a, b) -> head: Head\n"
                 "}\n")
    assert d.code == "E1102" and (d.span.line, d.span.column) == (2, 12)
    assert any("Head" in n and "t.arch:7" in n for n in d.notes)


def test_ensemble_of_models_with_different_outputs():
    (d,) = codes("model Small(classes: int = 10) {\n"
                 "    input x: float32[B, 64]\n"
                 "    output logits = x -> fc: linear(classes)\n"
                 "}\n"
                 "model Pair() {\n"
                 "    input x: float32[B, 64]\n"
                 "    a = x -> m1: Small()\n"
                 "    b = x -> m2: Small(classes=9)\n"
                 "    output logits = (a, b) -> ensemble(mode=\"stack\")\n"
                 "}\n", "Pair")
    assert d.code == "E1104" and d.span.line == 9 and "[B, 10]" in d.message and "[B, 9]" in d.message


def test_a_loss_output_counts_in_the_cost_report():
    prog = archc.parse("model Net() {\n"
                       "    input x: float32[B, 16]\n"
                       "    input labels: int64[B]\n"
                       "    logits = x -> fc: linear(10)\n"
                       "    output loss = cross_entropy(logits, labels)\n"
                       "    output logits = logits\n"
                       "}\n")
    r = prog.check()
    assert r.params == 170 and r.outputs == {"loss": "[]", "logits": "[B, 10]"}
    net = prog.build()
    loss, logits = net(torch.randn(3, 16), torch.tensor([1, 2, 3]))
    torch.testing.assert_close(loss, F.cross_entropy(logits, torch.tensor([1, 2, 3])))
