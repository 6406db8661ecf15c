"""Measuring memory with torch (archc.runtime.measure), and archc's estimates held to it.

Every shipped spec (at small sizes) trains one step on the CPU: the bytes saved for
backward, the peak of live bytes and the model-state bytes are measured and compared
with `estimate_memory` for the same plan, in fp32, with checkpointed segments, and in
bf16 (CPU autocast)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from archc.runtime.measure import distinct_bytes, model_state, replay_peak, saved_for_backward, train_step

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import memory_accuracy as M  # noqa: E402

_RESULTS: dict = {}


def result(case: str, mode: str) -> dict:
    if (case, mode) not in _RESULTS:
        _RESULTS[(case, mode)] = M.compare(next(c for c in M.CASES if c.name == case), mode, peer=False)
    return _RESULTS[(case, mode)]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fp32", "checkpoint", "bf16"])
@pytest.mark.parametrize("case", [c.name for c in M.CASES])
def test_estimate_matches_measurement(case, mode):
    r = result(case, mode)
    assert r["saved_est"] == pytest.approx(r["saved_meas"], rel=0.02), r
    ratio = r["peak_est"] / r["peak_meas"]
    assert 0.97 <= ratio <= 1.05, (ratio, r["peak_at"])
    for what in ("params", "grads", "optimizer", "buffers"):
        est, meas = r[what]
        assert est == meas, (what, est, meas)


def test_counting_each_storage_once_matters():
    r = result("resnet18", "fp32")
    assert r["saved_naive"] > 1.3 * r["saved_meas"]  # without deduplication, about 50% too high


def test_saved_for_backward_counts_storages_once():
    x = torch.randn(1000, requires_grad=True)
    rep = saved_for_backward(lambda: (x * 2).relu().sin())  # relu keeps its output, sin keeps its input
    assert rep.bytes == 4000 and rep.naive == 8000 and len(rep.storages) == 1
    w = torch.nn.Linear(10, 10)
    rep = saved_for_backward(lambda: w(torch.randn(3, 10)), exclude=list(w.parameters()))
    assert rep.bytes == 3 * 10 * 4  # the input; the weight is model state


def test_replay_peak_follows_allocations_in_order():
    def work():
        a = torch.empty(1 << 20, dtype=torch.uint8)
        b = torch.empty(2 << 20, dtype=torch.uint8)
        del a
        c = torch.empty(512, dtype=torch.uint8)
        del b, c

    r = replay_peak(work, base=100)
    assert r.peak == 100 + (3 << 20) and r.net == 0


def test_model_state_after_a_real_step():
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW(net.parameters())
    train_step(net, [torch.randn(5, 8)], torch.randint(0, 4, (5,)), opt)
    n = sum(p.numel() for p in net.parameters())
    st = model_state(net, opt)
    assert st.parameters == 4 * n and st.gradients == 0
    assert st.optimizer == 8 * n + 4 * len(list(net.parameters()))  # exp_avg, exp_avg_sq, step
    assert st.buffers == 2 * 16 * 4 + 8


@pytest.mark.parametrize("case", ["mlp", "resnet18", "gpt2"])
def test_checkpointed_build_computes_the_same(case):
    """What the checkpoint mode measures: the generated code with its segments recomputed."""
    c = next(x for x in M.CASES if x.name == case)
    torch.manual_seed(0)
    plain, g = M.build(c, "fp32")
    ckpt, _ = M.build(c, "checkpoint")
    assert "torch.utils.checkpoint.checkpoint(" in type(ckpt).__archc_source__
    ckpt.load_state_dict(plain.state_dict())
    inputs, target = M.batch(c, g)
    outs, grads = [], []
    for net in (plain, ckpt):
        net.train()
        torch.manual_seed(1)  # the same dropout masks (checkpoint restores the RNG state)
        y = net(*inputs)
        torch.nn.functional.cross_entropy(y.reshape(-1, y.shape[-1]), target.reshape(-1)).backward()
        outs.append(y.detach())
        grads.append([p.grad.clone() for p in net.parameters()])
    torch.testing.assert_close(outs[0], outs[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_distinct_bytes_dedupes_views():
    t = torch.zeros(100)
    assert distinct_bytes([t, t[10:], t.view(10, 10), None]) == 400
