"""Plan passes: checkpoint segments, freezing, selectors."""
import pytest
import torch

import archc
from archc.compiler.selectors import select

SPEC = """
block Blk(x, c: int) {
    y = x -> conv1: conv(c, 3, padding=1) -> bn1: bn -> relu -> conv2: conv(c, 3, padding=1) -> bn2: bn
    return relu(y + x)
}
model M() {
    input x: [B, 8, 8, 8]
    y = x -> stem: conv(8, 1) -> layer: [Blk(8) * 3]
    output z = y -> global_avg_pool -> flatten -> fc: linear(3)
}
finetune Ckpt for M() {
    checkpoint(on="block:Blk", exclude="layer.2")
}
finetune Head for M() {
    freeze("*")
    unfreeze("fc")
}
finetune Typo for M() {
    checkpoint(on="block:Blok")
}
"""


def hand_written():
    class Blk(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
            self.conv2, self.bn2 = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8)

        def forward(self, x):
            return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + x)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.layer, self.fc = torch.nn.Conv2d(8, 8, 1), torch.nn.Sequential(*[Blk() for _ in range(3)]), \
                torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(self.layer(self.stem(x)), 1), 1))

    return M()


def test_checkpointed_blocks_give_the_same_outputs_and_gradients_as_hand_written_pytorch():
    prog = archc.parse(SPEC, "m.arch")
    src = prog.source(plan="Ckpt")
    assert src.count("torch.utils.checkpoint.checkpoint(") == 2  # layer.0 and layer.1, not layer.2
    net, ref = prog.build(plan="Ckpt"), hand_written()
    net.load_state_dict(ref.state_dict())
    net.eval(), ref.eval()  # batch-norm statistics would otherwise update twice under recomputation
    x = torch.randn(2, 8, 8, 8)
    a, b = net(x), ref(x)
    a.square().sum().backward(), b.square().sum().backward()
    torch.testing.assert_close(a, b)
    for (n, p), q in zip(net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


def test_a_selector_that_matches_nothing_lists_near_misses():
    with pytest.raises(archc.CompileError) as e:
        archc.parse(SPEC, "m.arch").graph(plan="Typo")
    d = e.value.diagnostics[0]
    assert d.code == "E0503" and (d.span.line, d.span.column) == (19, 16) and "block:Blk" in d.help


def test_frozen_parameters_stay_bit_identical_and_get_no_gradient_or_state():
    prog = archc.parse(SPEC, "m.arch")
    assert prog.check(plan="Head").trainable == 8 * 3 + 3
    net = prog.build(plan="Head")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=0.1)
    net(torch.randn(4, 8, 8, 8)).sum().backward()
    opt.step()
    for name, p in net.named_parameters():
        if name.startswith("fc."):
            assert not torch.equal(p, before[name])
        else:
            assert p.grad is None and torch.equal(p, before[name]) and p not in opt.state


@pytest.mark.parametrize("selector,exclude,modules", [
    ("layer.*.conv1", None, ["layer.0.conv1", "layer.1.conv1", "layer.2.conv1"]),
    ("**.bn2", "layer.1", ["layer.0.bn2", "layer.2.bn2"]),
    ("op:linear", None, ["fc"]),
    ("block:Blk", "layer.0,layer.2", ["layer.1"]),
    ("stem, fc", None, ["stem", "fc"]),
])
def test_selectors(selector, exclude, modules):
    graph = archc.parse(SPEC, "m.arch").graph()
    assert select(graph, selector, exclude).modules == modules
