"""`residual(on=...)` (passes/insert_residual.py) and `checkpoint(on=...)`: outputs and
gradients against hand-written PyTorch (torchvision's ResNet-34, transformers' GPT-2)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import archc
from archc.interop import hf

SPECS = Path(archc.__file__).resolve().parent / "specs"


@pytest.fixture(scope="module")
def plain():
    return archc.load(SPECS / "plain.arch")


def test_plain34_plus_residual_is_resnet34(plain):
    resnet = archc.load(SPECS / "resnet.arch")
    assert plain.check().params == 21_623_848  # no shortcuts: 3 projections fewer
    assert plain.check(plan="Residual").params == resnet.check("ResNet34").params == 21_797_672
    ours, ref = plain.graph(plan="Residual"), resnet.graph("ResNet34")
    ours.verify()
    assert [n.op for n in ours.nodes()] == [n.op for n in ref.nodes()]
    weighted = ("conv", "bn", "linear")
    assert [n.path for n in ours.nodes() if n.op in weighted] == [n.path for n in ref.nodes() if n.op in weighted]
    assert ours.plan.one("residual").matched[:4] == ["layer1.0", "layer1.1", "layer1.2", "layer2.0"]


@pytest.mark.slow
def test_plain34_plus_residual_computes_torchvision_s_resnet34(plain):
    import torchvision

    torch.manual_seed(0)
    net, ref = plain.build(plan="Residual"), torchvision.models.resnet34()
    net.load_state_dict(ref.state_dict())  # torchvision's keys, `downsample` included
    x = torch.randn(2, 3, 224, 224)
    a, b = net(x), ref(x)
    torch.testing.assert_close(a, b)
    a.square().mean().backward()
    b.square().mean().backward()
    grads = dict(ref.named_parameters())
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, msg=name, rtol=1e-4, atol=1e-5)


FEATURES = """
block Widen(x, width: int) {
    return x -> fc1: linear(width) -> relu -> fc2: linear(width)
}
model Net() {
    input x: float32[B, 8]
    h = x -> a: Widen(8) -> b: Widen(16)
    output y = h -> head: linear(3)
}
finetune Res for Net() {
    residual(on="block:Widen")
}
finetune Named for Net() {
    residual(on="b", shortcut="proj")
}
finetune Op for Net() {
    residual(on="head, a.fc2")
}
"""


def test_feature_residuals_with_a_linear_projection_match_hand_written_pytorch():
    prog = archc.parse(FEATURES, "net.arch")
    net = prog.build(plan="Res")
    keys = list(net.state_dict())
    assert "b.shortcut.weight" in keys and "a.shortcut.weight" not in keys  # only where the width changes
    assert prog.check(plan="Res").params == prog.check().params + 8 * 16 + 16
    assert "b.proj.weight" in prog.build(plan="Named").state_dict()
    sd = net.state_dict()
    x = torch.randn(5, 8, requires_grad=True)

    def widen(v, p):
        return torch.relu(v @ sd[p + ".fc1.weight"].T + sd[p + ".fc1.bias"]) @ sd[p + ".fc2.weight"].T \
            + sd[p + ".fc2.bias"]

    h = widen(x, "a") + x
    h = widen(h, "b") + (h @ sd["b.shortcut.weight"].T + sd["b.shortcut.bias"])
    want = h @ sd["head.weight"].T + sd["head.bias"]
    got = net(x)
    torch.testing.assert_close(got, want)
    g1, = torch.autograd.grad(got.sum(), x)
    g2, = torch.autograd.grad(want.sum(), x)
    torch.testing.assert_close(g1, g2)


def test_a_single_op_is_wrapped_beside_itself():
    prog = archc.parse(FEATURES, "net.arch")
    graph = prog.graph(plan="Op")
    graph.verify()
    paths = {n.path for n in graph.nodes()}
    assert "shortcut" in paths  # head: 16 -> 3 needs a projection, beside it at the top level
    assert "a.fc2" in paths and not any(p.startswith("a.fc2.") for p in paths)
    net = prog.build(plan="Op")
    assert net(torch.randn(2, 8)).shape == (2, 3)


@pytest.mark.parametrize("plan,code", [
    ('residual(on="both")', "E0306"),
    ('residual(on="shrink")', "E0303"),
    ('residual(on="block:Nope")', "E0503"),
    ('residual(on="both", shortcut="a.b")', "E0502"),
])
def test_diagnostics(plan, code):
    spec = """
block Both(x, y) {
    return x + y
}
model Net() {
    input x: float32[B, 4, 8, 8]
    a = x -> c: conv(4, 3, padding=1)
    h = (a, x) -> both: Both
    output y = h -> shrink: conv(8, 3) -> global_avg_pool -> flatten
}
finetune Bad for Net() {
    """ + plan + "\n}\n"
    with pytest.raises(archc.CompileError) as e:
        archc.parse(spec, "net.arch").graph(plan="Bad")
    d = e.value.diagnostics[0]
    assert d.code == code and d.span.line == 12


# -- checkpointing a transformer block --------------------------------------------------------------

GPT = """
import std.gpt
train Ckpt for GPT2(vocab_size=64, n_positions=32, n_embd=32, n_layer=3, n_head=4, embd_pdrop=0.0,
                    attn_pdrop=0.0, resid_pdrop=0.0) {
    checkpoint(on="block:GPT2Block", exclude="h.2")
}
"""


def test_checkpointed_gpt2_blocks_give_transformers_outputs_and_gradients():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    prog = archc.parse(GPT, "gpt.arch")
    assert prog.source(plan="Ckpt").count("torch.utils.checkpoint.checkpoint(") == 2
    cfg = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=3, n_head=4, embd_pdrop=0.0,
                     attn_pdrop=0.0, resid_pdrop=0.0)
    ref = GPT2LMHeadModel(cfg)
    net = prog.build(plan="Ckpt")
    net.load_state_dict(hf.gpt2_from_hf(ref.state_dict()))
    net.train(), ref.train()
    ids = torch.randint(0, 64, (2, 9))
    a, b = net(ids), ref(ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    a.square().mean().backward()
    b.square().mean().backward()
    theirs = hf.gpt2_from_hf(dict(ref.named_parameters()))
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name].grad, msg=name, rtol=1e-4, atol=1e-6)
