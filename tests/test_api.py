"""The public API: load/parse/check/build/render and registering an op from Python."""
import torch
from torch import nn

import archc
from archc.compiler.lower.torch import generate


class ScaleModule(nn.Module):
    def __init__(self, width: int, init: float):
        super().__init__()
        self.scale = nn.Parameter(torch.full((width,), init))

    def forward(self, x):
        return x * self.scale


@archc.op("scale_by")
class ScaleBy(archc.Op):
    """A per-feature learned scale, registered from Python."""

    doc = "x * scale, with a learned per-feature scale (FLOPs: one per element)."

    class Attrs(archc.Attrs):
        init: float = 1.0

    def infer(self, a, ins):
        return [ins[0]]

    def params(self, a, ins):
        return {"scale": (ins[0].shape[-1],)}

    def flops(self, a, ins, outs):
        return ins[0].numel()

    def lower(self, a, ins, outs):
        return archc.Module(ScaleModule, (ins[0].shape[-1], a.init))


SPEC = """
model Scaled() {
    input x: [B, 6]
    output y = x -> fc: linear(6) -> s: scale_by(init=2.0)
}
"""


def test_a_custom_op_registered_from_python_builds_and_counts():
    prog = archc.parse(SPEC, "t.arch")
    assert prog.check().params == 6 * 6 + 6 + 6
    net = prog.build()
    assert list(net.state_dict()) == ["fc.weight", "fc.bias", "s.scale"]
    x = torch.randn(3, 6)
    torch.testing.assert_close(net(x), net.fc(x) * 2.0)


def test_custom_op_source_imports_its_module_by_name():
    gen = generate(archc.parse(SPEC, "t.arch").graph())
    assert "from tests.test_api import ScaleModule" in gen.source or "ScaleModule" in gen.source


def test_build_takes_model_arguments_and_dims():
    prog = archc.parse("""
model M(width: int = 8) {
    input x: [B, 4]
    output y = x -> linear(width)
}""")
    assert prog.models == ["M"]
    assert prog.build(width=3)(torch.randn(2, 4)).shape == (2, 3)
    assert prog.check(dims={"B": 5}).nodes[0].shapes == ["[5, 8]"]


def test_render_returns_a_digraph():
    dot = archc.parse(SPEC, "t.arch").render()
    assert "scale_by" in dot.source
