"""archc.inflate and archc.inflate_state_dict: I3D-style inflation of 2-D networks.

The defining property: a 2-D network inflated with t x k x k kernels (no temporal
stride) and weights repeated over time and divided by t, fed a clip of identical
frames, computes at every frame away from the temporal border the 2-D network's
feature maps of that frame; with 1 x k x k kernels, at every frame.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import archc
from archc.compiler.diagnostics import CompileError
from archc.compiler.dims import Sym
from archc.compiler.passes.count_cost import count_cost

SPECS = Path(archc.__file__).resolve().parent / "specs"


def resnet():
    return archc.load(SPECS / "resnet.arch")


# -- the graph -----------------------------------------------------------------------------------

def test_inflated_shapes_and_attributes():
    g = archc.inflate(resnet(), "ResNet18", time_kernel=3)
    nodes = {n.path: n for n in g.nodes()}
    T = Sym.symbol("T")
    assert g.node(g.inputs[0]).outputs[0].shape == (Sym.symbol("B"), 3, T, 224, 224)
    conv1 = nodes["conv1"].attrs
    assert (conv1.kernel, conv1.stride, conv1.padding) == ((3, 7, 7), (1, 2, 2), (1, 3, 3))
    assert nodes["conv1"].outputs[0].shape[2:] == (T, 112, 112)
    pool = nodes["max_pool_0"].attrs
    assert (pool.kernel, pool.stride, pool.padding) == ((1, 3, 3), (1, 2, 2), (0, 1, 1))
    ds = nodes["layer2.0.downsample.0"].attrs
    assert (ds.kernel, ds.stride) == ((1, 1, 1), (1, 2, 2))
    assert nodes["layer4.1.bn2"].outputs[0].shape[1:] == (512, T, 7, 7)
    assert nodes["fc"].outputs[0].shape == (Sym.symbol("B"), 1000)
    assert g.name == "ResNet18_3d"


def test_inflate_options():
    prog = resnet()
    g = archc.inflate(prog, "ResNet18", time_kernel=5, time_stride=2, frames=16, pool_time_kernel=3,
                      inflate_1x1=True, dims={"B": 2})
    nodes = {n.path: n for n in g.nodes()}
    assert nodes["conv1"].attrs.kernel == (5, 7, 7) and nodes["conv1"].attrs.stride == (2, 2, 2)
    assert nodes["conv1"].outputs[0].shape == (2, 64, 8, 112, 112)
    # the pool's temporal stride defaults to its temporal kernel: (8 + 2 - 3) // 3 + 1 frames
    assert nodes["max_pool_0"].attrs.kernel == (3, 3, 3) and nodes["max_pool_0"].outputs[0].shape[2] == 3
    assert nodes["layer2.0.downsample.0"].attrs.kernel == (5, 1, 1)
    assert nodes["layer2.0.conv1"].outputs[0].shape[2] == nodes["layer2.0.downsample.0"].outputs[0].shape[2] == 2
    # a Graph inflates too, and hyperparameters pass through to the model
    g2 = archc.inflate(prog.graph("ResNet18", classes=10), frames=4)
    assert g2.node(g2.outputs[0]) and g2.in_types(g2.outputs[0])[0].shape[1] == 10


def test_parameters():
    """Each k x k kernel becomes three frames long; 1x1 kernels, bn and fc stay."""
    prog = resnet()
    g2, g3 = prog.graph("ResNet18"), archc.inflate(prog, "ResNet18")
    extra = 0
    for n in g2.nodes():
        if n.op == "conv" and n.attrs.kernel != 1:
            c_out, c_in = n.outputs[0].shape[1], g2.in_types(n.id)[0].shape[1]
            k = n.attrs.kernel
            extra += 2 * c_out * c_in * k * k
    assert count_cost(g3).params == count_cost(g2).params + extra == 33_679_272


def test_i3d_spec_is_inflated_resnet50():
    """video.arch's I3D is what inflate makes of std.resnet's ResNet50: the same modules,
    the same shapes, the same graph of ops."""
    g3 = archc.inflate(resnet(), "ResNet50", frames=8, classes=400)
    i3d = archc.load(SPECS / "video.arch").graph("I3D")
    a = [(n.path, n.op, n.attrs, [t.shape for t in n.outputs]) for n in g3.nodes() if n.op not in ("input", "output")]
    b = [(n.path, n.op, n.attrs, [t.shape for t in n.outputs]) for n in i3d.nodes() if n.op not in ("input", "output")]
    norm = [(p, op, _norm(at), s) for p, op, at, s in a]
    assert norm == [(p, op, _norm(at), s) for p, op, at, s in b]
    assert count_cost(g3).params == count_cost(i3d).params


def _norm(attrs):
    """Attributes with every per-axis value spelled out (3 == (3, 3, 3))."""
    out = {}
    for k, v in attrs.model_dump().items():
        if k in ("kernel", "stride", "padding", "dilation") and isinstance(v, int):
            v = (v, v, v)
        out[k] = tuple(v) if isinstance(v, list) else v
    return out


def test_import_stays_torch_free():
    code = textwrap.dedent(f"""
        import sys, archc
        g = archc.inflate(archc.load({str(SPECS / 'resnet.arch')!r}), 'ResNet18', frames=4)
        assert 'torch' not in sys.modules
        import archc.inflate as m
        assert callable(archc.inflate) and callable(m) and m.inflate_state_dict
        assert 'torch' not in sys.modules
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cannot_inflate_diagnostic():
    prog = archc.parse("""model M() {
    input x: float32[B, 3, 8, 8]
    y = x -> conv(4, 3, padding=1) -> reshape([-1, 4, 64])
    output z = y
}
""", filename="m.arch")
    with pytest.raises(CompileError) as e:
        archc.inflate(prog, "M")
    d = e.value.diagnostics[0]
    assert d.code == "E0303" and "cannot inflate `reshape` at `reshape_0`" in d.message
    assert (d.span.file, d.span.line, d.span.column) == ("m.arch", 3, 39)


def test_inflate_rejects_bad_options():
    with pytest.raises(ValueError):
        archc.inflate(resnet(), "ResNet18", time_kernel=0)
    with pytest.raises(ValueError):
        archc.inflate(resnet(), "ResNet18", frames=0)


# -- weights and the identical-frames property ---------------------------------------------------------

torch = pytest.importorskip("torch")


def test_inflate_state_dict():
    sd = {"a.weight": torch.randn(4, 3, 3, 3), "b.weight": torch.randn(4, 4, 1, 1), "fc.weight": torch.randn(2, 4),
          "bn.running_mean": torch.randn(4), "bn.num_batches_tracked": torch.tensor(3)}
    out = archc.inflate_state_dict(sd, 3)
    assert out["a.weight"].shape == (4, 3, 3, 3, 3) and out["b.weight"].shape == (4, 4, 1, 1, 1)
    torch.testing.assert_close(out["a.weight"].sum(2), sd["a.weight"])
    torch.testing.assert_close(out["a.weight"][:, :, 1], sd["a.weight"] / 3)
    torch.testing.assert_close(out["fc.weight"], sd["fc.weight"])
    assert out["bn.num_batches_tracked"] == 3
    like = {k: v for k, v in out.items()}
    like["a.weight"] = torch.zeros(4, 3, 5, 3, 3)
    torch.testing.assert_close(archc.inflate_state_dict(sd, like=like)["a.weight"].sum(2), sd["a.weight"])
    with pytest.raises(ValueError):
        archc.inflate_state_dict(sd, like={**like, "a.weight": torch.zeros(4, 3, 5, 5, 5)})
    with pytest.raises(ValueError):  # a key the 3-D model lacks
        archc.inflate_state_dict(sd, like={k: v for k, v in like.items() if k != "fc.weight"})
    part = archc.inflate_state_dict({k: v for k, v in sd.items() if k != "fc.weight"}, like=like)
    assert "fc.weight" not in part  # a new head: left to its initialisation


# Feature maps compared, and how many 3-frame convolutions lie on the longest path to
# each: frames closer than that to either end of the clip see the zero padding in time.
PROBES = [("bn1", 1), ("layer1.1.bn2", 5), ("layer2.1.bn2", 9), ("layer3.1.bn2", 13), ("layer4.1.bn2", 17)]


def _resnet18_2d():
    torch.manual_seed(0)
    net = resnet().build("ResNet18").eval()
    with torch.no_grad():  # batch-norm statistics that are not the identity
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    return net


def _features(net, x):
    out = {}
    hooks = [net.get_submodule(p).register_forward_hook(lambda m, i, o, p=p: out.__setitem__(p, o))
             for p, _ in PROBES]
    with torch.no_grad():
        logits = net(x)
    for h in hooks:
        h.remove()
    return out, logits


@pytest.mark.slow
@pytest.mark.parametrize("time_kernel", [3, 1])
def test_identical_frames_give_the_2d_features(time_kernel):
    from archc.compiler.lower.torch import build_module

    frames = 2 * PROBES[-1][1] + 2 if time_kernel == 3 else 4
    net2 = _resnet18_2d()
    g = archc.inflate(resnet(), "ResNet18", time_kernel=time_kernel, time_stride=1, frames=frames)
    net3 = build_module(g).eval()
    net3.load_state_dict(archc.inflate_state_dict(net2.state_dict(), time_kernel, like=net3), strict=True)

    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    clip = x.unsqueeze(2).expand(1, 3, frames, 32, 32).contiguous()
    f2, _ = _features(net2, x)
    f3, logits3 = _features(net3, clip)
    for path, depth in PROBES:
        a, b = f3[path], f2[path]
        assert a.shape[2] == frames
        inner = range(depth, frames - depth) if time_kernel == 3 else range(frames)
        assert len(inner) > 0
        for t in inner:
            torch.testing.assert_close(a[:, :, t], b, atol=1e-4, rtol=1e-4, msg=f"{path}, frame {t}")
        if time_kernel == 3:  # at the border the zero padding in time shows
            assert (a[:, :, 0] - b).abs().max() > 1e-3
    if time_kernel == 1:
        _, logits2 = _features(net2, x)
        torch.testing.assert_close(logits3, logits2, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_i3d_starts_from_torchvision_resnet50():
    """video.arch's I3D takes torchvision's ResNet-50 weights inflated, its head left out."""
    torchvision = pytest.importorskip("torchvision")
    from torch.nn import init

    saved = init.kaiming_normal_
    init.kaiming_normal_ = lambda t, *a, **kw: t.detach().normal_(0, 0.01)  # torchvision's is slow on a small CPU
    try:
        ref = torchvision.models.resnet50(weights=None)
    finally:
        init.kaiming_normal_ = saved
    i3d = archc.load(SPECS / "video.arch").build("I3D", frames=4, size=32, classes=7).eval()
    sd = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    missing, unexpected = i3d.load_state_dict(archc.inflate_state_dict(sd, like=i3d), strict=False)
    assert missing == ["fc.weight", "fc.bias"] and not unexpected
    torch.testing.assert_close(i3d.conv1.weight.sum(2), ref.conv1.weight)
    assert i3d(torch.randn(1, 3, 4, 32, 32)).shape == (1, 7)
