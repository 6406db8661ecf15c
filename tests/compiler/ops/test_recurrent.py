"""Recurrent and temporal ops: rnn, lstm, gru, conv_lstm, temporal_sample, temporal_pool,
temporal_repeat, select, last_hidden.

The recurrent layers are torch.nn's, weight for weight: the parameters the op claims are
the module's (names, order, shapes), torch.nn.LSTM / GRU / RNN state dicts load into the
built model and give identical outputs and states. ConvLSTM's cell is checked against
the gate equations of Shi et al. written out with tensor ops. Bad input gives
diagnostics with codes and positions.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import archc
from archc.compiler.diagnostics import CompileError
from archc.compiler.dims import Sym
from opcheck import B, check, fails, infer

T = Sym.symbol("T")


# -- rnn, lstm, gru: shapes, parameters, FLOPs ----------------------------------------------

@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("kw", [dict(), dict(layers=2), dict(bidirectional=True), dict(layers=3, bidirectional=True),
                                dict(bias=False), dict(layers=2, dropout=0.2)])
def test_recurrent(name, kw):
    # torch's FLOP counter sees the matmuls of RNN and GRU; LSTM runs as one fused kernel it
    # does not count (its FLOPs are checked against the formula below)
    outs = check(name, [(2, 5, 6)], 7, flops=name != "lstm", **kw)
    d = 2 if kw.get("bidirectional") else 1
    layers = kw.get("layers", 1)
    assert outs[0].shape == (2, 5, d * 7)
    assert outs[1].shape == ((2,) if name == "lstm" else ()) + (layers * d, 2, 7)


def test_rnn_relu():
    check("rnn", [(2, 4, 3)], 5, nonlinearity="relu", flops=True)


@pytest.mark.parametrize("name,stacked", [("rnn", False), ("lstm", True), ("gru", False)])
def test_initial_state(name, stacked):
    s = (2, 4, 3, 5) if stacked else (4, 3, 5)
    outs = check(name, [(3, 6, 8), s], 5, layers=2, bidirectional=True, flops=name != "lstm")
    assert outs[1].shape == s


def test_lstm_flops():
    """2·B·T·4H·(in + H) per layer and direction: the GRU formula with four gates for three."""
    from opcheck import make
    from archc.compiler.ir import TensorType

    op, a = make("lstm", 7, layers=2, bidirectional=True)
    ins = [TensorType((2, 5, 6))]
    assert op.flops(a, ins, op.infer(a, ins)) == 2 * 2 * 5 * 4 * 7 * ((6 + 7) + (14 + 7)) * 2


def test_lstm_parameter_count():
    """2-layer bidirectional LSTM 256 -> 512: torch.nn.LSTM's 9,453,568 parameters."""
    prog = archc.parse("""
model M() {
    input x: float32[B, T, 256]
    out, state = x -> lstm: lstm(512, layers=2, bidirectional=true)
    output y = out
}
""")
    assert prog.check("M").params == 9_453_568
    ref = torch.nn.LSTM(256, 512, num_layers=2, bidirectional=True)
    assert sum(p.numel() for p in ref.parameters()) == 9_453_568


def test_symbolic_shapes():
    out, state = infer("lstm", [(B, T, 16)], 32, layers=2, bidirectional=True)
    assert out.shape == (B, T, 64) and state.shape == (2, 4, B, 32)
    out, state = infer("gru", [(B, T, 16)], 8)
    assert out.shape == (B, T, 8) and state.shape == (1, B, 8)


# -- torch.nn's weights load, outputs identical --------------------------------------------------

_SPEC = """
model M() {{
    input x: float32[B, T, {f}]
    out, state = x -> enc: {op}({hidden}, layers={layers}, bidirectional={bi}{extra})
    output y = out
    output s = state
}}
model WithState() {{
    input x: float32[B, T, {f}]
    input s0: float32[{s0}]
    out, state = x -> enc: {op}({hidden}, layers={layers}, bidirectional={bi}{extra}, state=s0)
    output y = out
    output s = state
}}
"""


@pytest.mark.parametrize("op,cls,extra", [("lstm", torch.nn.LSTM, ""), ("gru", torch.nn.GRU, ""),
                                          ("rnn", torch.nn.RNN, ""), ("rnn", torch.nn.RNN, ", nonlinearity=\"relu\"")])
@pytest.mark.parametrize("layers,bi", [(1, False), (2, True)])
def test_loads_torch_weights(op, cls, extra, layers, bi):
    f, hidden, b, t = 6, 5, 3, 7
    d = 2 if bi else 1
    s0 = ([2] if op == "lstm" else []) + [layers * d, b, hidden]
    prog = archc.parse(_SPEC.format(f=f, op=op, hidden=hidden, layers=layers, bi=str(bi).lower(), extra=extra,
                                    s0=", ".join(map(str, s0))))
    kw = dict(nonlinearity="relu") if "relu" in extra else {}
    torch.manual_seed(0)
    ref = cls(f, hidden, num_layers=layers, bidirectional=bi, batch_first=True, **kw).eval()
    for model in ("M", "WithState"):
        net = prog.build(model).eval()
        assert list(net.state_dict()) == ["enc." + k for k in ref.state_dict()]
        net.enc.load_state_dict(ref.state_dict(), strict=True)
        x = torch.randn(b, t, f)
        with torch.no_grad():
            if model == "M":
                y, s = net(x)
                want_y, want_s = ref(x)
            else:
                start = torch.randn(*s0)
                y, s = net(x, start)
                want_y, want_s = ref(x, (start[0], start[1]) if op == "lstm" else start)
        if op == "lstm":
            want_s = torch.stack(want_s)
        torch.testing.assert_close(y, want_y, rtol=0, atol=0)
        torch.testing.assert_close(s, want_s, rtol=0, atol=0)


def test_lstm_state_dict_loads_into_stacked_layers():
    """An encoder's state feeds a decoder whole (lstm: h_n and c_n stacked)."""
    prog = archc.parse("""
model M() {
    input x: float32[B, T, 4]
    input y: float32[B, S, 4]
    _, state = x -> enc: lstm(6, layers=2)
    out, _ = y -> dec: lstm(6, layers=2, state=state)
    output o = out
}
""")
    net = prog.build("M").eval()
    enc, dec = torch.nn.LSTM(4, 6, 2, batch_first=True), torch.nn.LSTM(4, 6, 2, batch_first=True)
    net.enc.load_state_dict(enc.state_dict())
    net.dec.load_state_dict(dec.state_dict())
    x, y = torch.randn(2, 5, 4), torch.randn(2, 3, 4)
    with torch.no_grad():
        _, hc = enc(x)
        want, _ = dec(y, hc)
        torch.testing.assert_close(net(x, y), want, rtol=0, atol=0)


# -- conv_lstm -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(), dict(peephole=True), dict(bias=False), dict(kernel=[3, 5])])
def test_conv_lstm(kw):
    kernel = kw.pop("kernel", 3)
    out, state = check("conv_lstm", [(2, 3, 4, 6, 5)], 4, kernel, flops=True, **kw)
    assert out.shape == (2, 4, 4, 6, 5) and state.shape == (2, 2, 4, 6, 5)
    check("conv_lstm", [(2, 3, 4, 6, 5), (2, 2, 4, 6, 5)], 4, kernel, flops=True, **kw)


def _gates_by_hand(x, h, c, weight, bias, peep):
    """Shi et al.'s equations with explicit tensor ops: one conv over [x_t, h_{t-1}]."""
    z = F.conv2d(torch.cat([x, h], 1), weight, bias, padding=(weight.shape[2] // 2, weight.shape[3] // 2))
    n = h.shape[1]
    zi, zf, zg, zo = z[:, :n], z[:, n:2 * n], z[:, 2 * n:3 * n], z[:, 3 * n:]
    w_ci, w_cf, w_co = peep if peep is not None else (0, 0, 0)
    i = torch.sigmoid(zi + w_ci * c)
    f = torch.sigmoid(zf + w_cf * c)
    c_new = f * c + i * torch.tanh(zg)
    o = torch.sigmoid(zo + w_co * c_new)
    return o * torch.tanh(c_new), c_new


@pytest.mark.parametrize("peephole", [False, True])
def test_conv_lstm_gate_equations(peephole):
    prog = archc.parse(f"""
model M() {{
    input x: float32[B, 3, 5, 6, 7]
    input s0: float32[2, B, 4, 6, 7]
    out, state = x -> cell: conv_lstm(4, [3, 5], peephole={str(peephole).lower()}, state=s0)
    output y = out
    output s = state
}}
""")
    torch.manual_seed(0)
    net = prog.build("M").eval()
    if peephole:
        with torch.no_grad():
            for n in ("w_ci", "w_cf", "w_co"):
                getattr(net.cell, n).normal_()
    assert [k for k in net.state_dict()] == (["cell.w_ci", "cell.w_cf", "cell.w_co"] if peephole else []) + [
        "cell.conv.weight", "cell.conv.bias"]
    assert net.cell.conv.weight.shape == (16, 7, 3, 5)
    x, s0 = torch.randn(2, 3, 5, 6, 7), torch.randn(2, 2, 4, 6, 7)
    with torch.no_grad():
        y, s = net(x, s0)
    h, c = s0[0], s0[1]
    peep = (net.cell.w_ci, net.cell.w_cf, net.cell.w_co) if peephole else None
    hs = []
    with torch.no_grad():
        for t in range(5):
            h, c = _gates_by_hand(x[:, :, t], h, c, net.cell.conv.weight, net.cell.conv.bias, peep)
            hs.append(h)
    torch.testing.assert_close(y, torch.stack(hs, 2), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s, torch.stack([h, c]), rtol=1e-6, atol=1e-6)


# -- temporal ops, select, last_hidden ----------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(stride=2), dict(stride=3, offset=1), dict(stride=1, offset=2),
                                dict(stride=4, dim=1), dict(stride=2, dim=-3)])
def test_temporal_sample(kw):
    check("temporal_sample", [(2, 3, 9, 4, 4)], **kw)


def test_temporal_sample_values_and_symbols():
    (out,) = infer("temporal_sample", [(B, 3, T, 8, 8)], 4)
    assert out.shape[:2] == (B, 3) and out.shape[2].subs({"T": 32}) == 8 and out.shape[2].subs({"T": 33}) == 9
    from opcheck import make, run
    op, a = make("temporal_sample", 3, offset=1)
    x = torch.arange(10.0).reshape(1, 1, 10, 1, 1)
    ins = [archc.TensorType((1, 1, 10, 1, 1))]
    (y,) = run(op.lower(a, ins, op.infer(a, ins)), [x])
    assert y.flatten().tolist() == [1.0, 4.0, 7.0]


@pytest.mark.parametrize("kw", [dict(), dict(mode="max"), dict(kernel=2), dict(kernel=3, stride=2, mode="max"),
                                dict(kernel=2, dim=1)])
def test_temporal_pool(kw):
    check("temporal_pool", [(2, 3, 8, 4, 5)], **kw)


def test_temporal_pool_values():
    x = torch.randn(2, 3, 8, 4, 5)
    from opcheck import make, run

    def go(*args, **kw):
        op, a = make("temporal_pool", *args, **kw)
        ins = [archc.TensorType(tuple(x.shape))]
        return run(op.lower(a, ins, op.infer(a, ins)), [x])[0]

    torch.testing.assert_close(go(), x.mean(2))
    torch.testing.assert_close(go(2), F.avg_pool3d(x, (2, 1, 1)))
    torch.testing.assert_close(go(3, 2, "max"), F.max_pool3d(x, (3, 1, 1), (2, 1, 1)))


def test_temporal_repeat_select_last_hidden():
    assert check("temporal_repeat", [(2, 3, 1, 4, 4)], 5)[0].shape == (2, 3, 5, 4, 4)
    assert check("select", [(2, 4, 3, 6)], 0, 0)[0].shape == (4, 3, 6)
    assert check("select", [(2, 5, 6)], 1, -1)[0].shape == (2, 6)
    assert check("last_hidden", [(4, 3, 6)], 2)[0].shape == (3, 12)
    assert check("last_hidden", [(2, 4, 3, 6)])[0].shape == (3, 6)
    # last_hidden is the last layer's h_n, forward then backward: the outputs' halves at the ends
    lstm = torch.nn.LSTM(5, 6, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(3, 7, 5)
    out, (h, c) = lstm(x)
    from opcheck import make, run
    op, a = make("last_hidden", 2)
    ins = [archc.TensorType((2, 4, 3, 6))]
    (got,) = run(op.lower(a, ins, op.infer(a, ins)), [torch.stack([h, c])])
    torch.testing.assert_close(got, torch.cat([out[:, -1, :6], out[:, 0, 6:]], dim=-1))


# -- bad input ----------------------------------------------------------------------------------------

def test_shape_errors():
    fails("E0302", "lstm", [(2, 3, 8, 8, 8)], 16)               # a video into a sequence layer
    fails("E0302", "gru", [(2, 8)], 16)
    fails("E0213", "lstm", [(2, 5, Sym.symbol("F"))], 16)      # the input width must be known
    fails("E0305", "rnn", [(2, 5, 3)], 0)
    fails("E0207", "gru", [(2, 5, 3)], 4, dropout=1.0)
    fails("E0303", "lstm", [(2, 5, 3), (2, 2, 2, 4)], 4)       # bidirectional state, unidirectional layer
    fails("E0303", "gru", [(2, 5, 3), (1, 2, 5)], 4)           # state width
    fails("E0302", "lstm", [(2, 5, 3), (1, 2, 4)], 4)          # an rnn's state into an lstm
    fails("E0301", "gru", [(2, 5, 3), (1, 3, 4)], 4)           # state batch
    fails("E0302", "conv_lstm", [(2, 3, 8, 8)], 4, 3)          # an image, no time axis
    fails("E0303", "conv_lstm", [(2, 3, 4, 8, 8)], 4, 4)       # even kernel
    fails("E0302", "conv_lstm", [(2, 3, 4, 8, 8)], 4, [3, 3, 3])
    fails("E0303", "conv_lstm", [(2, 3, 4, 8, 8), (2, 2, 5, 8, 8)], 4, 3)
    fails("E0305", "temporal_sample", [(2, 3, 4, 8, 8)], 0)
    fails("E0305", "temporal_sample", [(2, 3, 4, 8, 8)], 2, offset=4)
    fails("E0304", "temporal_sample", [(2, 3, 8)], 2, dim=3)
    fails("E0305", "temporal_pool", [(2, 3, 4, 8, 8)], 5)
    fails("E0304", "select", [(2, 3)], 1, 3)
    fails("E0303", "last_hidden", [(3, 2, 4)], 2)              # 3 slices are not 2 directions
    fails("E0302", "last_hidden", [(2, 4)])


def _diag(text: str, model: str = "M"):
    with pytest.raises(CompileError) as e:
        archc.parse(text, filename="v.arch").check(model)
    return e.value.diagnostics[0]


def _col(text: str, marker: str) -> tuple[int, int]:
    i = text.index(marker)
    return text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1


def test_bidirectional_state_into_unidirectional_layer():
    text = """model M() {
    input x: float32[B, T, 8]
    _, state = x -> enc: lstm(16, bidirectional=true)
    out, _ = x -> dec: lstm(16, state=state)
    output y = out
}
"""
    d = _diag(text)
    assert d.code == "E0303"
    assert "2 (layer x direction) slices" in d.message and "1-layer unidirectional lstm needs 1" in d.message
    assert "bidirectional" in d.help
    assert (d.span.line, d.span.column) == _col(text, "lstm(16, state")


def test_video_into_2d_ops():
    """Rank-polymorphic ops take videos; a 2-D argument on a video is reported where it is written."""
    text = """model M() {
    input x: float32[B, 3, 8, 32, 32]
    output y = x -> conv(16, [3, 3], padding=1)
}
"""
    d = _diag(text)
    assert d.code == "E0302" and "kernel has 2 entries but the input has 3 spatial axes" in d.message
    assert (d.span.line, d.span.column) == _col(text, "conv(16")
    for stage, code in [("max_pool([2, 2])", "E0302"), ("adaptive_avg_pool([7, 7])", "E0302"),
                        ("upsample(2, mode=\"bilinear\")", "E0302"), ("lstm(16)", "E0302")]:
        t = text.replace("conv(16, [3, 3], padding=1)", stage)
        d = _diag(t)
        assert d.code == code, (stage, d.message)
        assert (d.span.line, d.span.column) == _col(t, stage.split("(")[0] + "(")


def test_time_lengths_of_two_streams():
    text = """model M() {
    input a: float32[B, 64, 8, 14, 14]
    input b: float32[B, 64, 4, 14, 14]
    output y = (a, b) -> concat(dim=1)
}
"""
    d = _diag(text)
    assert d.code == "E0303" and "[B, 64, 8, 14, 14] vs [B, 64, 4, 14, 14]" in d.message
    assert (d.span.line, d.span.column) == _col(text, "concat(")
    text = text.replace("(a, b) -> concat(dim=1)", "a + b")
    d = _diag(text)
    assert d.code == "E0301" and "[B, 64, 8, 14, 14] vs [B, 64, 4, 14, 14]" in d.message
    assert (d.span.line, d.span.column) == _col(text, "a + b")


def test_state_must_be_a_tensor():
    d = _diag("""model M() {
    input x: float32[B, T, 8]
    out, _ = x -> lstm(16, state=3)
    output y = out
}
""")
    assert d.code == "E0206" and "`state` of `lstm` takes a tensor" in d.message
