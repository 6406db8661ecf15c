"""Quantization: dynamic int8 (MLP, LSTM, transposed linears), static PTQ and QAT through PT2E,
honest sizes (live tensors only, dead float weights left out).

Tolerance of dynamic int8 (documented in docs for `quantize`): on these specs the
outputs stay within 5% of the float outputs' largest magnitude."""
from __future__ import annotations

import pytest
import torch

import archc
from archc.compiler.lower.torch import build_module
from archc.compress.quantize import dead_float_bytes, live_tensors, quantize_dynamic, quantize_pt2e
from archc.compress.size import count_parameters, to_bytes, unpack_int4
from tests.compress.specs import LSTM, MLP

TOLERANCE = 0.05  # max |int8 - float| / max |float|


def _close(q, f):
    return float((q - f).abs().max()) <= TOLERANCE * float(f.abs().max())


def test_dynamic_int8_mlp_shrinks_weights():
    graph = archc.parse(MLP).graph()
    torch.manual_seed(0)
    net = build_module(graph).eval()
    x = torch.randn(16, 64)
    res = quantize_dynamic(net, graph)
    assert {p for p, _, _ in res.quantized} == {"l1", "l2", "head"}
    assert not res.left
    # the transposed (GPT-2 Conv1D) head is quantized as a linear, not skipped
    assert "transposed" in dict((p, h) for p, _, h in res.quantized)["head"]
    before, _ = live_tensors(net)
    ratio = len(to_bytes(before)) / len(to_bytes(res.tensors, res.schemes))
    assert ratio >= 3.5, ratio
    assert count_parameters(res.tensors) == count_parameters(before)
    with torch.no_grad():
        assert _close(res.model(x), net(x))


def test_dynamic_int8_lstm():
    graph = archc.parse(LSTM).graph()
    torch.manual_seed(0)
    net = build_module(graph).eval()
    x = torch.randn(4, 7, 32)
    res = quantize_dynamic(net, graph)
    assert {(p, op) for p, op, _ in res.quantized} == {("rnn", "lstm"), ("head", "linear")}
    before, _ = live_tensors(net)
    ratio = len(to_bytes(before)) / len(to_bytes(res.tensors, res.schemes))
    assert ratio >= 3.5, ratio
    with torch.no_grad():
        assert _close(res.model(x), net(x))


def test_int4_is_packed_on_disk():
    graph = archc.parse(MLP).graph()
    net = build_module(graph).eval()
    res = quantize_dynamic(net, graph, dtype="int4", on="l2")
    assert [p for p, _, _ in res.quantized] == ["l2"]
    q = res.tensors["l2.weight.qdata"]
    packed = to_bytes({"l2.weight.qdata": q}, int4=True)
    from safetensors.torch import load

    back = load(packed)["l2.weight.qdata"]
    assert back.numel() == q.numel() // 2
    assert torch.equal(unpack_int4(back, q.shape), q)


def test_selection_and_float_leftovers():
    graph = archc.parse(MLP).graph()
    net = build_module(graph).eval()
    res = quantize_dynamic(net, graph, on="l1")
    assert [p for p, _, _ in res.quantized] == ["l1"]
    assert {(p, why) for p, _, why in res.left} == {("l2", "not selected by the plan"),
                                                   ("head", "not selected by the plan")}


SMALL_CNN = """
model Cnn() {
    input x: float32[B, 1, 8, 8]
    x = x -> c1: conv(8, 3, padding=1, bias=false) -> b1: bn -> relu -> max_pool(2)
          -> c2: conv(16, 3, padding=1, bias=false) -> b2: bn -> relu -> global_avg_pool -> flatten
    output logits = x -> fc: linear(10)
}
"""


@pytest.mark.slow
def test_static_ptq_on_digits_keeps_accuracy():
    from archc.runtime.data import load_data
    from archc.runtime.train import TrainConfig, evaluate, fit

    data = load_data("digits", batch=64)
    graph = archc.parse(SMALL_CNN).graph()
    torch.manual_seed(0)
    net = build_module(graph)
    fit(net, data.train, None, TrainConfig(epochs=4, lr=1e-2, seed=0))
    net.eval()
    float_acc = evaluate(net, data.test)["accuracy"]

    def calibrate(m):
        for i, (x, _) in enumerate(data.train):
            m(x)
            if i == 7:
                break

    res = quantize_pt2e(net, graph, (torch.randn(2, 1, 8, 8),), mode="static", calibrate=calibrate)
    assert {p for p, _, _ in res.quantized} == {"c1", "c2", "fc"}
    assert "oneDNN" in res.engine  # lowered to int8 kernels, dynamic batch kept
    q_acc = evaluate(res.model, data.test)["accuracy"]
    assert q_acc >= float_acc - 0.01, (float_acc, q_acc)
    # honest sizes: int8 weights live; the float weights the converted graph still holds are dead
    assert res.tensors["c2.weight.qdata"].dtype == torch.int8
    assert not any(t.dtype == torch.float32 and t.dim() == 4 for t in res.tensors.values())
    assert count_parameters(res.tensors) < sum(p.numel() for p in net.parameters())  # bn folded
    before, _ = live_tensors(net)
    assert len(to_bytes(res.tensors, res.schemes)) * 2 < len(to_bytes(before))  # tiny: headers weigh


@pytest.mark.slow
def test_qat_per_tensor_runs_and_reports():
    from archc.runtime.data import load_data
    from archc.runtime.train import TrainConfig, fit

    data = load_data("digits", batch=64)
    graph = archc.parse(SMALL_CNN).graph()
    torch.manual_seed(0)
    net = build_module(graph)

    def train(m):
        fit(m, data.train, None, TrainConfig(steps=3, lr=1e-3, seed=0))

    res = quantize_pt2e(net, graph, (torch.randn(2, 1, 8, 8),), mode="qat", granularity="tensor", on="c2,fc",
                        train=train)
    assert {p for p, _, _ in res.quantized} == {"c2", "fc"}
    assert ("c1", "conv", "not selected by the plan") in res.left
    # per tensor: one scale, written into the graph as a constant rather than held as a tensor
    assert res.tensors["c2.weight.qdata"].dtype == torch.int8
    assert res.tensors.get("c2.weight.scale", torch.zeros(1)).numel() == 1
    with torch.no_grad():
        assert res.model(torch.randn(5, 1, 8, 8)).shape == (5, 10)


def test_dead_float_weights_are_not_live():
    graph = archc.parse(SMALL_CNN).graph()
    net = build_module(graph).eval()
    res = quantize_pt2e(net, graph, (torch.randn(2, 1, 8, 8),), mode="static",
                        calibrate=lambda m: m(torch.randn(8, 1, 8, 8)))
    # the converted graph still holds the float weights (the trap) but never reads them
    assert res.dead_bytes >= 4 * (8 * 1 * 9 + 16 * 8 * 9)
    assert all(not (k.endswith("c1.weight") or k.endswith("c2.weight")) for k in res.tensors)
    assert dead_float_bytes(res.model) >= 0  # an opaque packed weight does not break the count
