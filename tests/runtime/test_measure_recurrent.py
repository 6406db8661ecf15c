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


@pytest.mark.xfail(reason="the frame-by-frame backward is modelled at its first frame only (the weight "
                   "gradient's accumulation over frames and the frames' freed tensors are not replayed)")
@pytest.mark.parametrize("mode", ["fp32", "bf16"])
def test_conv_lstm_peak(mode, inline_spec):
    check(compare("convlstm", mode, inline_spec), saved=False)
