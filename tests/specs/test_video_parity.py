"""std.video and std.rnn: torchvision's video ResNets weight for weight, and the other
video and sequence models built, run, rendered and costed on small inputs.

For r3d_18, mc3_18 and r2plus1d_18: the parameter count torchvision publishes (from
`check` and from the built module), the same state_dict keys in the same order,
torchvision's state_dict loads with strict=True, and in eval mode (with non-trivial
batch-norm statistics) both give the same logits on a small clip (1x3x4x32x32) to 1e-5.
"""
from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import archc  # noqa: E402
from archc.compiler.lower.graphviz import render  # noqa: E402
from archc.compiler.passes.count_cost import count_cost  # noqa: E402
from archc.compiler.passes.stream_costs import reaching_inputs, stream_costs, stream_summary  # noqa: E402

SPECS = Path(archc.__file__).resolve().parent / "specs"

# building and running a 3-D ResNet-18 twice takes several seconds on a small CPU
CASES = [
    pytest.param("R3D18", "r3d_18", 33_371_472, marks=pytest.mark.slow),
    pytest.param("MC3_18", "mc3_18", 11_695_440, marks=pytest.mark.slow),
    pytest.param("R2Plus1D18", "r2plus1d_18", 31_505_325, marks=pytest.mark.slow),
]

_programs: dict[str, archc.Program] = {}


def program(name: str = "video") -> archc.Program:
    if name not in _programs:
        _programs[name] = archc.load(SPECS / f"{name}.arch")
    return _programs[name]


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _torchvision(name: str):
    """torchvision's model without its (slow) weight initialisation: weights come from ours."""
    from torch.nn import init

    saved = {k: getattr(init, k) for k in ("kaiming_normal_", "normal_", "constant_")}
    try:
        for k in saved:
            setattr(init, k, lambda t, *a, **kw: t)
        return getattr(torchvision.models.video, name)(weights=None)
    finally:
        for k, f in saved.items():
            setattr(init, k, f)


@pytest.mark.parametrize("model,tv_name,expected", CASES)
def test_matches_torchvision(model, tv_name, expected):
    prog = program()
    assert prog.check(model).params == expected

    torch.manual_seed(0)
    net = prog.build(model, frames=4, size=32)
    with torch.no_grad():  # batch-norm statistics that are not the identity
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    ref = _torchvision(tv_name)
    assert n_params(net) == n_params(ref) == expected
    assert list(net.state_dict()) == list(ref.state_dict())
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ref.load_state_dict(net.state_dict(), strict=True)   # give torchvision's model our weights,
    net.load_state_dict(ref.state_dict(), strict=True)   # and load its state dict into ours

    net.eval()
    ref.eval()
    x = torch.randn(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = net(x), ref(x)
    assert got.shape == (1, 400)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_torchvision_layout_and_defaults():
    """Published configuration: 400 Kinetics classes, clips of 16x112x112, the (2+1)-D
    blocks' intermediate widths (torchvision's midplanes formula)."""
    g = program().graph("R2Plus1D18")
    (x,) = [g.node(i).outputs[0] for i in g.inputs]
    assert str(x) == "[B, 3, 16, 112, 112]"
    widths = {n.path: n.outputs[0].shape[1] for n in g.nodes() if n.op == "conv"}
    assert widths["stem.0"] == 45
    assert widths["layer1.0.conv1.0.0"] == 144  # 64*64*27 // (64*9 + 3*64)
    assert widths["layer2.0.conv1.0.0"] == 230  # 64*128*27 // (64*9 + 3*128)
    assert widths["layer2.0.conv2.0.0"] == 230  # conv2 keeps the block's midplanes
    assert widths["layer2.1.conv1.0.0"] == 288
    report = count_cost(g)
    assert report.outputs == {"logits": "[B, 400]"}


@pytest.mark.parametrize("model,kwargs,inputs,outputs", [
    pytest.param("C3D", dict(size=32), [(2, 3, 16, 32, 32)], [(2, 487)], marks=pytest.mark.slow),
    pytest.param("I3D", dict(frames=4, size=32, classes=10), [(2, 3, 4, 32, 32)], [(2, 10)],
                 marks=pytest.mark.slow),
    pytest.param("TwoStream", dict(size=32, flow_frames=5), [(2, 3, 32, 32), (2, 10, 32, 32)], [(2, 101)] * 3,
                 marks=pytest.mark.slow),
    pytest.param("SlowFast", dict(frames=16, size=32, classes=7), [(2, 3, 16, 32, 32)], [(2, 7)],
                 marks=pytest.mark.slow),
    ("TimeSformer", dict(frames=4, size=32, patch=8, dim=32, depth=2, heads=4, classes=5), [(2, 3, 4, 32, 32)],
     [(2, 5)]),
    ("ConvLSTMNowcast", dict(in_frames=3, out_frames=5, size=16, hidden=8), [(2, 1, 3, 16, 16)],
     [(2, 1, 5, 16, 16)]),
])
def test_video_models_build_and_run(model, kwargs, inputs, outputs):
    prog = program()
    graph = prog.graph(model, dims={"B": 2}, **kwargs)
    assert [graph.node(i).outputs[0].shape for i in graph.inputs] == inputs
    assert [graph.in_types(o)[0].shape for o in graph.outputs] == outputs
    torch.manual_seed(0)
    net = prog.build(model, dims={"B": 2}, **kwargs).eval()
    assert n_params(net) == prog.check(model, **kwargs).params
    with torch.no_grad():
        ys = net(*[torch.randn(*s) for s in inputs])
    ys = ys if isinstance(ys, tuple) else (ys,)
    assert [tuple(y.shape) for y in ys] == outputs
    assert all(torch.isfinite(y).all() for y in ys)


def test_published_sizes():
    """Parameter counts of the default configurations against the papers' figures."""
    prog = program()
    assert abs(prog.check("SlowFast").params - 34.5e6) < 0.1e6  # SlowFast R50 4x16: 34.5M
    assert abs(prog.check("TimeSformer").params - 121.4e6) < 0.3e6  # TimeSformer-Base: 121.4M
    # I3D is ResNet-50 with its 3x3 (and 7x7) kernels three frames long
    assert prog.check("I3D", classes=1000).params == 25_557_032 + sum(
        2 * n for n in _kxk_weights("ResNet50"))


def _kxk_weights(model: str):
    g = archc.load(SPECS / "resnet.arch").graph(model)
    from archc.compiler.ops import REGISTRY

    for n in g.nodes():
        if n.op == "conv" and n.attrs.kernel != 1:
            (shape,) = [s for k, s in REGISTRY["conv"].params(n.attrs, g.in_types(n.id)).items() if k == "weight"]
            yield shape[0] * shape[1] * shape[2] * shape[3]


def test_slowfast_pathways():
    g = program().graph("SlowFast", dims={"B": 1})
    shape = {n.path: n.outputs[0].shape for n in g.nodes() if n.outputs}
    assert shape["slow_stem.0"] == (1, 64, 4, 112, 112)          # T / alpha frames
    assert shape["fast_stem.0"] == (1, 8, 32, 112, 112)          # beta = 1/8 of the channels
    assert shape["lateral_pool1.conv"] == (1, 16, 4, 56, 56)     # time-strided lateral: 2 x fast channels
    assert shape["slow_res2.0.conv1"][1] == 64 and g.in_types(
        next(n.id for n in g.nodes() if n.path == "slow_res2.0.conv1"))[0].shape[1] == 80
    assert shape["slow_res5.2.conv3"] == (1, 2048, 4, 7, 7)
    assert shape["fast_res5.2.conv3"] == (1, 256, 32, 7, 7)


def test_two_stream_costs_and_rendering():
    g = program().graph("TwoStream", dims={"B": 1})
    costs = {c.name: c for c in stream_costs(g)}
    assert list(costs) == ["rgb", "flow", "rgb+flow"]
    resnet18 = 11_689_512 - 1000 * 513  # without its 1000-class head
    assert costs["rgb"].params == resnet18 + 101 * 513
    assert costs["flow"].params == costs["rgb"].params + 64 * (20 - 3) * 7 * 7
    assert costs["rgb+flow"].params == 0 and costs["rgb+flow"].fusion
    assert sum(c.params for c in costs.values()) == count_cost(g).params
    assert sum(c.flops for c in costs.values()) == count_cost(g).flops
    line = stream_summary(g)
    assert line.startswith("per input stream: rgb 11.23M params") and "rgb+flow (fusion)" in line
    reach = reaching_inputs(g)
    assert {reach[n.id] for n in g.nodes() if n.path.startswith("spatial.")} == {("rgb",)}

    src = render(g).source  # one cluster per stream, the fusion outside both
    assert "subgraph cluster_stream_rgb {" in src and "subgraph cluster_stream_flow {" in src
    rgb = src[src.index("cluster_stream_rgb"):src.index("cluster_stream_flow")]
    assert "cluster_spatial" in rgb and "cluster_temporal" not in rgb
    assert "cluster_stream" not in render(g, streams=False).source
    assert "cluster_stream" not in render(program().graph("C3D")).source  # one input: no stream clusters


def test_build_summary_per_stream(capsys):
    import archc.cli

    argv = ["build", str(SPECS / "rnn.arch"), "--model", "Seq2Seq", "--dim", "B=2", "--dim", "S=5", "--dim", "T=4"]
    for k, v in dict(src_vocab=30, tgt_vocab=40, dim=8, hidden=16).items():
        argv += ["--set", f"{k}={v}"]
    assert archc.cli.main(argv) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "per input stream: src " in out and "; tgt " in out and "src+tgt (fusion)" in out
    assert archc.cli.main(argv[:3] + ["TextClassifier", "--dim", "B=2", "--dim", "T=4", "--set", "vocab=30"]) == 0
    assert "per input stream" not in capsys.readouterr().out  # one input: no line


@pytest.mark.slow
def test_two_stream_loads_resnet18_per_stream():
    """The spatial tower is torchvision's resnet18 under `spatial.` (ImageNet pretraining)."""
    net = program().build("TwoStream", size=32, classes=1000).eval()
    ref = torchvision.models.resnet18(weights=None).eval()
    sd = {"spatial." + k: v for k, v in ref.state_dict().items()}
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.startswith("temporal.") for k in missing)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x, torch.randn(1, 20, 32, 32))[0], ref(x), atol=1e-5, rtol=1e-5)


# -- std.rnn --------------------------------------------------------------------------------------------

def test_text_classifier():
    prog = program("rnn")
    assert prog.check("TextClassifier").params == 20_000 * 128 + 2 * (
        4 * 256 * (128 + 256 + 2) + 4 * 256 * (512 + 256 + 2)) + 4 * 513
    dims, small = {"B": 3, "T": 11}, dict(vocab=100, dim=16, hidden=24)
    for cell in ("lstm", "gru"):
        net = prog.build("TextClassifier", dims=dims, cell=cell, **small).eval()
        assert n_params(net) == prog.check("TextClassifier", cell=cell, **small).params
        with torch.no_grad():
            assert net(torch.randint(0, 100, (3, 11))).shape == (3, 4)
    # the recurrent stack is torch.nn.LSTM's, weight for weight
    net = prog.build("TextClassifier", dims=dims, drop=0.0, **small).eval()
    lstm = torch.nn.LSTM(16, 24, num_layers=2, bidirectional=True, batch_first=True)
    net.encoder.load_state_dict(lstm.state_dict(), strict=True)
    tokens = torch.randint(0, 100, (3, 11))
    with torch.no_grad():
        _, (h, _) = lstm(net.embed(tokens))
        want = net.fc(torch.cat([h[-2], h[-1]], dim=-1))
        torch.testing.assert_close(net(tokens), want, rtol=0, atol=0)


def test_seq2seq():
    prog = program("rnn")
    kw = dict(src_vocab=50, tgt_vocab=60, dim=16, hidden=32, drop=0.0)
    net = prog.build("Seq2Seq", **kw).eval()
    assert n_params(net) == prog.check("Seq2Seq", **kw).params
    src, tgt = torch.randint(0, 50, (2, 9)), torch.randint(0, 60, (2, 5))
    with torch.no_grad():
        logits = net(src, tgt)
        assert logits.shape == (2, 5, 60)
        # the decoder starts from the encoder's state: the same as running torch's LSTMs by hand
        enc = torch.nn.LSTM(16, 32, 2, batch_first=True)
        dec = torch.nn.LSTM(16, 32, 2, batch_first=True)
        enc.load_state_dict(net.encoder.state_dict())
        dec.load_state_dict(net.decoder.state_dict())
        e, hc = enc(net.src_embed(src))
        d, _ = dec(net.tgt_embed(tgt), hc)
        att = torch.softmax(d @ net.attn.q_proj.weight.T @ (e @ net.attn.k_proj.weight.T).transpose(1, 2)
                            / 32 ** 0.5, dim=-1) @ (e @ net.attn.v_proj.weight.T)
        ctx = att @ net.attn.o_proj.weight.T
        want = net.proj(torch.tanh(net.combine(torch.cat([d, ctx], dim=-1))))
        torch.testing.assert_close(logits, want, atol=1e-5, rtol=1e-5)
    streams = {c.name for c in stream_costs(prog.graph("Seq2Seq"))}
    assert streams == {"src", "tgt", "src+tgt"}
