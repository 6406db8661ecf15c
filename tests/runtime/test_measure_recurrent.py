"""Recurrent layers' memory rules (ops/recurrent.py) held to what torch saves and holds.

Tiny models, one CPU training step each, in fp32 and under bf16 autocast: saved-for-backward
bytes within 2% of the measurement (saved_tensors_hooks, each storage once), the peak within
[-3%, +5%] of the replayed profiler events (benchmarks/memory_accuracy.py's harness)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import memory_accuracy as M  # noqa: E402

# an Elman RNN classifier (std.rnn has none) and a ConvLSTM reading the video directly (under
# autocast its state stays float32 while its gate convolution runs in bf16)
INLINE = """
model TinyRNN(vocab: int = 64, dim: int = 8, hidden: int = 16, bidirectional: bool = true) {
    input tokens: int64[B, T]
    x = tokens -> embed: embedding(vocab, dim)
    out, state = x -> encoder: rnn(hidden, layers=2, bidirectional=bidirectional, dropout=0.2)
    output logits = state -> last_hidden(directions=2 if bidirectional else 1) -> fc: linear(4)
}

model TinyGRU(vocab: int = 64, dim: int = 8, hidden: int = 16) {
    input tokens: int64[B, T]
    out, state = tokens -> embed: embedding(vocab, dim) -> encoder: gru(hidden, layers=2)
    output logits = out -> fc: linear(4)
}

model TinyConvLSTM(hidden: int = 8) {
    input x: float32[B, 3, 4, 8, 8]
    h, s = x -> cell: conv_lstm(hidden, 3)
    h2, _ = h -> cell2: conv_lstm(hidden, 3, state=s)
    output logits = h2 -> mean(dim=[2, 3, 4]) -> fc: linear(4)
}
"""

RNN = {"vocab": 64, "dim": 8, "hidden": 16}
CASES = {
    "lstm": M.Case("lstm", "rnn.arch", "TextClassifier", {"B": 2, "T": 6}, RNN, None, "op:lstm"),
    "gru": M.Case("gru", "rnn.arch", "TextClassifier", {"B": 2, "T": 6}, {**RNN, "cell": "gru"}, None, "op:gru"),
    "gru-uni": M.Case("gru-uni", "INLINE", "TinyGRU", {"B": 2, "T": 6}, {}, None, "op:gru"),
    "seq2seq": M.Case("seq2seq", "rnn.arch", "Seq2Seq", {"B": 2, "S": 5, "T": 4},
                      {"src_vocab": 32, "tgt_vocab": 32, "dim": 8, "hidden": 16}, None, "op:lstm"),
    "rnn": M.Case("rnn", "INLINE", "TinyRNN", {"B": 2, "T": 6}, {}, None, "op:rnn"),
    "convlstm": M.Case("convlstm", "INLINE", "TinyConvLSTM", {"B": 2}, {}, None, "op:conv_lstm"),
}


@pytest.fixture(scope="module")
def inline_spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("specs") / "recurrent.arch"
    path.write_text(INLINE)
    return str(path)  # an absolute path: memory_accuracy's SPECS / path is the path itself


def compare(name: str, mode: str, inline: str) -> dict:
    case = CASES[name]
    if case.file == "INLINE":
        case = M.Case(case.name, inline, case.model, case.dims, case.args, None, case.checkpoint)
    return M.compare(case, mode, peer=False)


def check(r: dict, *, saved=True, peak=True) -> None:
    if saved:
        assert r["saved_est"] == pytest.approx(r["saved_meas"], rel=0.02), r
    if peak:
        ratio = r["peak_est"] / r["peak_meas"]
        assert 0.97 <= ratio <= 1.05, (ratio, r["peak_at"], r)
    for what in ("params", "grads", "optimizer", "buffers"):
        est, meas = r[what]
        assert est == meas, (what, est, meas)


@pytest.mark.parametrize("name", ["lstm", "gru", "gru-uni", "seq2seq", "rnn"])
def test_saved_bf16_autocast(name, inline_spec):
    """CPU autocast runs oneDNN's LSTM layer (mkldnn_rnn_layer) in bf16 with its input cast
    anew per direction, ATen's RNN cells in bf16 after the first step (the hidden state
    becomes bf16), and the GRU cell half and half (bf16 linears, float32 state)."""
    check(compare(name, "bf16", inline_spec), peak=False)


@pytest.mark.parametrize("name", ["lstm", "seq2seq", "gru", "gru-uni", "rnn"])
def test_fp32(name, inline_spec):
    """The LSTM's backward replayed step by step (mkldnn_rnn_layer_backward per layer and
    direction, freeing each one's saved tensors, with oneDNN's scratch at each high point)."""
    check(compare(name, "fp32", inline_spec))


def test_seq2seq_bf16_peak(inline_spec):
    check(compare("seq2seq", "bf16", inline_spec), saved=False)


@pytest.mark.parametrize("mode", ["fp32", "bf16"])
def test_conv_lstm_saved(mode, inline_spec):
    """The runtime's ConvLSTM per frame: cat([x_t, h]) (its bf16 cast under autocast), the four
    gate activations, c_{t-1} and tanh(c_t); a given state is kept as it is."""
    check(compare("convlstm", mode, inline_spec), peak=False)


@pytest.mark.parametrize("mode", ["fp32", pytest.param("bf16", marks=pytest.mark.xfail(
    reason="the `conv` rule's bf16 input-gradient scratchpad (2 x ONEDNN_BRGCONV_SCRATCH per thread) is "
    "larger than oneDNN's at 16 -> 32 channels on 8x8 frames (82 KB measured): +6.9%; with the measured "
    "figure the frame-by-frame replay is within 0.01%"))])
def test_conv_lstm_peak(mode, inline_spec):
    """The backward replayed frame by frame (`Footprint.phases`): each frame's elementwise part
    frees its gate activations and hands c's gradient on, then the gate convolution's backward
    (the `conv` rule on one frame) with the weight gradient accumulated in place; the frames'
    [x_t, h] gradients wait to be stacked into the input's."""
    check(compare("convlstm", mode, inline_spec), saved=False)


@pytest.mark.xfail(reason="tiny GRUs under autocast (hidden 16) are 8-11% low: the peak is the bf16 mm of the "
                   "input projection's weight gradient, whose oneDNN brgemm-matmul scratchpad (17,152 B at "
                   "[48, 12] @ [12, 16]; 21,248 B at [48, 12] @ [12, 32]) no rule books; with the measured "
                   "figure as the phase's workspace: 0.995 (gru), 1.032 (gru-uni)")
@pytest.mark.parametrize("name", ["gru", "gru-uni"])
def test_gru_bf16_peak(name, inline_spec):
    """ATen's GRU backward step by step under autocast (bf16 linears, float32 state)."""
    check(compare(name, "bf16", inline_spec), saved=False)


def test_gru_phases():
    """One phase per step of each layer and direction (top layer, reverse direction first), then
    the stacked input projection gradient and its backward; steps between the first and the last
    hold the out-of-place sum of the hidden weights' gradients (3 x |weight_hh| with .grad)."""
    from archc.compiler.devices import DEVICES
    from archc.compiler.ir import TensorType
    from archc.compiler.ops.base import REGISTRY, MemoryContext

    gru = REGISTRY["gru"]
    a = gru.Attrs(hidden=16, layers=2, bidirectional=True)
    x = TensorType((2, 5, 8), "float32")
    outs = gru.infer(a, [x])
    params = {n: (shp, "float32") for n, shp in gru.params(a, [x]).items()}
    ctx = MemoryContext(DEVICES["cpu"], [x], outs, [True], True, params=params)
    fp = gru.footprint(a, [x], outs, ctx)
    assert len(fp.phases) == 2 * 2 * (5 + 2)
    steps = fp.phases[:5]
    assert steps[0].grads == ("weight_hh_l1_reverse", "bias_hh_l1_reverse")
    assert [p.workspace for p in steps] == [0, 3 * 16 * 16 * 4, 3 * 16 * 16 * 4, 3 * 16 * 16 * 4, 0]
    assert fp.phases[6].grads == ("weight_ih_l1_reverse", "bias_ih_l1_reverse")
    # every step's saved entry is freed once, by its own step
    freed = [i for p in fp.phases for i in p.frees]
    assert len(freed) == len(set(freed))
    assert sum(s.bytes for i, s in enumerate(gru.saved(a, [x], outs, ctx)) if s.kind == "new") > 0
