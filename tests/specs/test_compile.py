"""Generated modules are torch.compile friendly: one graph, no breaks, same numbers.

Both tests are slow on a CPU (dynamo tracing takes seconds; inductor compiles C++,
about 10 s with a warm cache and over a minute with a cold one).
"""
from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import archc  # noqa: E402

SPEC = Path(archc.__file__).resolve().parent / "specs" / "resnet.arch"


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    net = archc.load(SPEC).build("ResNet18", classes=10).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return net, x


@pytest.mark.slow
def test_no_graph_breaks(resnet18):
    net, x = resnet18
    torch._dynamo.reset()
    with torch.no_grad():
        report = torch._dynamo.explain(net)(x)
    assert report.graph_break_count == 0, report.break_reasons
    assert report.graph_count == 1


@pytest.mark.slow
def test_compiled_matches_eager(resnet18):
    net, x = resnet18
    torch._dynamo.reset()
    compiled = torch.compile(net)
    with torch.no_grad():
        want = net(x)
        got = compiled(x)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch._dynamo.reset()
