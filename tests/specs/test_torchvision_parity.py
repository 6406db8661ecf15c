"""The shipped ResNet and VGG specs are torchvision's models, weight for weight.

For each pair: the same parameter count (from `check` and from the built
module), torchvision's state_dict loads with strict=True (so every key and
shape agrees), and in eval mode both give the same logits on the same input.
"""
from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import archc  # noqa: E402

SPECS = Path(archc.__file__).resolve().parent / "specs"

# (spec file, model, torchvision constructor, parameter count published by torchvision)
CASES = [
    ("resnet", "ResNet18", "resnet18", 11_689_512),
    ("resnet", "ResNet34", "resnet34", 21_797_672),
    ("resnet", "ResNet50", "resnet50", 25_557_032),
    pytest.param("resnet", "ResNet101", "resnet101", 44_549_160, marks=pytest.mark.slow),
    pytest.param("resnet", "ResNet152", "resnet152", 60_192_808, marks=pytest.mark.slow),
    pytest.param("vgg", "VGG11", "vgg11", 132_863_336, marks=pytest.mark.slow),
    pytest.param("vgg", "VGG16", "vgg16", 138_357_544, marks=pytest.mark.slow),
    pytest.param("vgg", "VGG16BN", "vgg16_bn", 138_365_992, marks=pytest.mark.slow),
]

_programs: dict[str, archc.Program] = {}


def program(spec: str) -> archc.Program:
    if spec not in _programs:
        _programs[spec] = archc.load(SPECS / f"{spec}.arch")
    return _programs[spec]


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("spec,model,tv_name,expected", CASES)
def test_matches_torchvision(spec, model, tv_name, expected):
    prog = program(spec)
    assert prog.check(model).params == expected

    torch.manual_seed(0)
    net = prog.build(model)
    ref = getattr(torchvision.models, tv_name)(weights=None)
    assert n_params(net) == n_params(ref) == expected

    ours, theirs = net.state_dict(), ref.state_dict()
    assert list(ours) == list(theirs)  # same keys, in the same order
    net.load_state_dict(theirs, strict=True)

    net.eval()
    ref.eval()
    # 64x64 keeps it fast: ResNet ends at 2x2 before the global pool, VGG at 2x2
    # before its adaptive 7x7 pool.
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = net(x), ref(x)
    assert got.shape == (2, 1000)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec,model,fan_in", [("resnet", "ResNet18", 512), ("vgg", "VGG11", 4096)])
def test_classes_argument(spec, model, fan_in):
    """`classes` resizes only the last linear layer, as torchvision's num_classes does."""
    prog = program(spec)
    assert prog.check(model).params - prog.check(model, classes=10).params == (1000 - 10) * (fan_in + 1)
