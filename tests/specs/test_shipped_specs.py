"""Every spec that ships with archc (archc/specs/*.arch) checks, builds and runs.

Also: `archc check` works without torch, generated source is deterministic
(within a process and across processes with different hash seeds), the small
models have the parameter counts worked out by hand, and the composite layers
of std.layers compute what their DARTS / timm / LLaMA originals compute.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import archc
import archc.cli

ROOT = Path(archc.__file__).resolve().parent.parent
SPECS = Path(archc.__file__).resolve().parent / "specs"
SPEC_FILES = sorted(SPECS.glob("*.arch"))
# Models too big to build and run at their declared 224x224 in well under 5 s on a CPU.
BIG = {"ResNet101", "ResNet152", "VGG16", "VGG16BN"}
RUN_FLOPS = 20e9  # forward passes above this (at B=2) only build in this file; parity tests run them small


def _models():
    out = []
    for f in SPEC_FILES:
        for m in archc.load(f).models:
            marks = [pytest.mark.slow] if m in BIG else []
            out.append(pytest.param(f, m, id=f"{f.stem}-{m}", marks=marks))
    return out


MODELS = _models()


def test_the_library_is_complete():
    assert {f.stem for f in SPEC_FILES} >= {"layers", "lenet", "vgg", "resnet", "mlp"}
    names = {m.values[1] for m in MODELS}
    assert names >= {"LeNet5", "VGG11", "VGG16", "VGG16BN", "ResNet18", "ResNet34", "ResNet50",
                     "ResNet101", "ResNet152", "MLP"}


# -- archc check -----------------------------------------------------------------

@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.name)
def test_check_in_process(path, capsys):
    assert archc.cli.main(["check", str(path)]) == 0
    out = capsys.readouterr()
    assert "error" not in out.err
    for model in archc.load(path).models:
        assert f": {model} " in out.out


def test_check_all_at_once_without_torch():
    code = textwrap.dedent(f"""
        import sys, archc.cli
        rc = archc.cli.main(['check', *{[str(f) for f in SPEC_FILES]!r}])
        assert rc == 0, rc
        assert 'torch' not in sys.modules, 'archc check imported torch'
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for model in (m.values[1] for m in MODELS):  # every model checked (plans and files without models print their own lines)
        assert f": {model} " in r.stdout, model


# -- build and run -----------------------------------------------------------------

@pytest.mark.parametrize("path,model", MODELS)
def test_builds_and_runs(path, model):
    torch = pytest.importorskip("torch")
    prog = archc.load(path)
    # Bind every symbol: the batch to 2, any other (a sequence length T...) to 8.
    loose = prog.graph(model, strict=False)
    symbols = {str(d) for i in loose.inputs for d in loose.node(i).outputs[0].shape if not isinstance(d, int)}
    dims = {s: (2 if s == "B" else 8) for s in symbols if s.isidentifier()}
    decide = {"sample": 0} if loose.decisions else {}  # a search space: build one candidate
    if prog.check(model, strict=False).params > archc.api.LARGE_PARAMS:
        pytest.skip(f"{model} is checked, not allocated (over {archc.api.LARGE_PARAMS:,} parameters)")
    graph = prog.graph(model, dims=dims, **decide)
    ins = [graph.node(i).outputs[0] for i in graph.inputs]
    outs = [graph.in_types(o)[0] for o in graph.outputs]
    assert ins and all(t.shape[0] == 2 for t in ins)

    torch.manual_seed(0)
    net = prog.build(model, dims=dims, **decide).eval()
    assert sum(p.numel() for p in net.parameters()) == prog.check(model, dims=dims, **decide).params
    report = prog.check(model, dims=dims, **decide)
    if report.flops > RUN_FLOPS:  # the forward of a big default input is left to the parity tests (small inputs)
        return
    xs = [torch.randn(*t.shape, dtype=getattr(torch, t.dtype)) if t.dtype.startswith(("float", "bfloat"))
          else torch.randint(0, 2, t.shape, dtype=getattr(torch, t.dtype)) for t in ins]
    with torch.no_grad():
        ys = net(*xs)
    ys = ys if isinstance(ys, tuple) else (ys,)
    assert [tuple(y.shape) for y in ys] == [t.shape for t in outs]
    assert all(torch.isfinite(y).all() for y in ys)


# -- parameter counts by hand --------------------------------------------------------

def test_lenet5_parameters():
    c1 = 6 * (1 * 5 * 5 + 1)          # 156: 6 maps, 5x5 over 1 channel, + bias
    c3 = 16 * (6 * 5 * 5 + 1)         # 2,416: fully connected to S2's 6 maps
    c5 = 120 * (16 * 5 * 5 + 1)       # 48,120
    f6 = 84 * (120 + 1)               # 10,164
    out = 10 * (84 + 1)               # 850
    expected = c1 + c3 + c5 + f6 + out
    assert expected == 61_706
    prog = archc.load(SPECS / "lenet.arch")
    assert prog.check("LeNet5").params == expected
    assert prog.check("LeNet5", classes=2).params == expected - out + 2 * (84 + 1)


def test_mlp_parameters():
    h1 = 784 * 512 + 512              # 401,920
    h2 = 512 * 256 + 256              # 131,328
    head = 256 * 10 + 10              # 2,570
    expected = h1 + h2 + head
    assert expected == 535_818
    prog = archc.load(SPECS / "mlp.arch")
    assert prog.check("MLP").params == expected
    # hidden=[100]: 784*100+100 + 100*10+10 = 78,500 + 1,010
    assert prog.check("MLP", hidden=[100]).params == 79_510


def test_mlp_names_and_arguments():
    torch = pytest.importorskip("torch")
    prog = archc.load(SPECS / "mlp.arch")
    net = prog.build("MLP", hidden=[32, 16, 8], drop=0.0)
    assert [k for k in net.state_dict()] == [
        "layers.0.weight", "layers.0.bias", "layers.3.weight", "layers.3.bias",
        "layers.6.weight", "layers.6.bias", "head.weight", "head.bias"]
    src = prog.source("MLP", hidden=[32], args={"act": _op("gelu")})
    assert "gelu" in src
    assert net(torch.randn(3, 784)).shape == (3, 10)


def _op(name: str):
    """An .arch op value, as `--set act=gelu` makes it."""
    from archc.cli import _value

    return _value(name)


# -- deterministic generated source ------------------------------------------------------

_SOURCES = """
import hashlib, pathlib, sys, archc
h = hashlib.sha256()
for f in sorted(pathlib.Path(archc.__file__).resolve().parent.joinpath('specs').glob('*.arch')):
    prog = archc.load(f)
    for m in prog.models:
        h.update(f.name.encode() + m.encode() + prog.source(m).encode())
print(h.hexdigest())
"""


def _digest_here() -> str:
    h = hashlib.sha256()
    for f in SPEC_FILES:
        prog = archc.load(f)
        for m in prog.models:
            h.update(f.name.encode() + m.encode() + prog.source(m).encode())
    return h.hexdigest()


def test_source_is_deterministic_in_process():
    for f in SPEC_FILES:
        prog = archc.load(f)
        for m in prog.models:
            assert prog.source(m) == prog.source(m)
            assert archc.load(f).source(m) == prog.source(m)


def test_source_is_deterministic_across_processes():
    digests = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        r = subprocess.run([sys.executable, "-c", _SOURCES], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        digests.append(r.stdout.strip())
    assert digests[0] == digests[1] == _digest_here()


# -- std.layers against the reference implementations ---------------------------------------

def _reference_modules():
    """DARTS's operations.py, timm's Mlp and LLaMA's MLP, as those projects write them."""
    from torch import nn

    class ReLUConvBN(nn.Module):
        def __init__(self, c_in, c_out, kernel, stride, padding, affine=True):
            super().__init__()
            self.op = nn.Sequential(nn.ReLU(inplace=False),
                                    nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding,
                                              bias=False),
                                    nn.BatchNorm2d(c_out, affine=affine))

        def forward(self, x):
            return self.op(x)

    class DilConv(nn.Module):
        def __init__(self, c_in, c_out, kernel, stride, padding, dilation, affine=True):
            super().__init__()
            self.op = nn.Sequential(nn.ReLU(inplace=False),
                                    nn.Conv2d(c_in, c_in, kernel, stride=stride, padding=padding,
                                              dilation=dilation, groups=c_in, bias=False),
                                    nn.Conv2d(c_in, c_out, 1, padding=0, bias=False),
                                    nn.BatchNorm2d(c_out, affine=affine))

        def forward(self, x):
            return self.op(x)

    class SepConv(nn.Module):
        def __init__(self, c_in, c_out, kernel, stride, padding, affine=True):
            super().__init__()
            self.op = nn.Sequential(
                nn.ReLU(inplace=False),
                nn.Conv2d(c_in, c_in, kernel, stride=stride, padding=padding, groups=c_in, bias=False),
                nn.Conv2d(c_in, c_in, 1, padding=0, bias=False),
                nn.BatchNorm2d(c_in, affine=affine),
                nn.ReLU(inplace=False),
                nn.Conv2d(c_in, c_in, kernel, stride=1, padding=padding, groups=c_in, bias=False),
                nn.Conv2d(c_in, c_out, 1, padding=0, bias=False),
                nn.BatchNorm2d(c_out, affine=affine))

        def forward(self, x):
            return self.op(x)

    class FactorizedReduce(nn.Module):
        def __init__(self, c_in, c_out, affine=True):
            super().__init__()
            self.relu = nn.ReLU(inplace=False)
            self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
            self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
            self.bn = nn.BatchNorm2d(c_out, affine=affine)

        def forward(self, x):
            x = self.relu(x)
            out = torch_cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1)
            return self.bn(out)

    class Mlp(nn.Module):  # timm.layers.Mlp without its (identity) norm
        def __init__(self, d, hidden, act):
            super().__init__()
            self.fc1, self.act, self.drop1 = nn.Linear(d, hidden), act(), nn.Dropout(0.0)
            self.fc2, self.drop2 = nn.Linear(hidden, d), nn.Dropout(0.0)

        def forward(self, x):
            return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))

    class LlamaMLP(nn.Module):
        def __init__(self, d, hidden):
            super().__init__()
            self.gate_proj = nn.Linear(d, hidden, bias=False)
            self.up_proj = nn.Linear(d, hidden, bias=False)
            self.down_proj = nn.Linear(hidden, d, bias=False)

        def forward(self, x):
            return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))

    class ConvNormAct(nn.Module):  # timm's ConvNormAct, 3x3
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(c_out)

        def forward(self, x):
            return nn.functional.relu(self.bn(self.conv(x)))

    from torch import cat as torch_cat
    return dict(ReLUConvBN=ReLUConvBN, DilConv=DilConv, SepConv=SepConv,
                FactorizedReduce=FactorizedReduce, Mlp=Mlp, LlamaMLP=LlamaMLP, ConvNormAct=ConvNormAct)


# (stage written in .arch, input shape, reference constructor given the reference classes)
LAYER_CASES = [
    ("relu_conv_bn(16, 1)", (2, 8, 16, 16), lambda R: R["ReLUConvBN"](8, 16, 1, 1, 0)),
    ("relu_conv_bn(16, 3, stride=2, affine=false)", (2, 8, 16, 16),
     lambda R: R["ReLUConvBN"](8, 16, 3, 2, 1, affine=False)),
    ("sep_conv(3)", (2, 8, 16, 16), lambda R: R["SepConv"](8, 8, 3, 1, 1)),
    ("sep_conv(5, stride=2, out=16)", (2, 8, 16, 16), lambda R: R["SepConv"](8, 16, 5, 2, 2)),
    ("sep_conv(3, affine=false)", (2, 8, 16, 16), lambda R: R["SepConv"](8, 8, 3, 1, 1, affine=False)),
    ("dil_conv(3)", (2, 8, 16, 16), lambda R: R["DilConv"](8, 8, 3, 1, 2, 2)),
    ("dil_conv(5, stride=2)", (2, 8, 16, 16), lambda R: R["DilConv"](8, 8, 5, 2, 4, 2)),
    ("factorized_reduce(16)", (2, 8, 16, 16), lambda R: R["FactorizedReduce"](8, 16)),
    ("factorized_reduce(affine=false)", (2, 8, 32, 32),
     lambda R: R["FactorizedReduce"](8, 8, affine=False)),
    ("mlp(64)", (2, 5, 16), lambda R: R["Mlp"](16, 64, __import__("torch").nn.GELU)),
    ("mlp(32, act=relu)", (2, 5, 16), lambda R: R["Mlp"](16, 32, __import__("torch").nn.ReLU)),
    ("swiglu(40)", (2, 5, 16), lambda R: R["LlamaMLP"](16, 40)),
    ("ConvBN(16, stride=2)", (2, 8, 16, 16), lambda R: R["ConvNormAct"](8, 16, 2)),
]


@pytest.mark.parametrize("stage,shape,make_ref", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_layers_match_reference(stage, shape, make_ref):
    torch = pytest.importorskip("torch")
    from torch import nn

    dims = ", ".join(map(str, shape[1:]))
    prog = archc.parse(f"import std.layers\n"
                       f"model T() {{\n    input x: float32[B, {dims}]\n    output y = x -> m: {stage}\n}}\n")
    torch.manual_seed(0)
    net = prog.build("T")
    ref = nn.Module()
    ref.m = make_ref(_reference_modules())
    assert prog.check("T").params == sum(p.numel() for p in ref.parameters())
    net.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(*shape)
    for mode in ("train", "eval"):  # batch statistics, then running statistics
        getattr(net, mode)()
        getattr(ref, mode)()
        with torch.no_grad():
            torch.testing.assert_close(net(x), ref.m(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(net.state_dict(), ref.state_dict())  # running stats updated alike
