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
        _RESULTS[(case, mode)] = M.compare(next(c for c in M.CASES + M.EXTENDED if c.name == case), mode, peer=False)
    return _RESULTS[(case, mode)]


# The core cases in every mode; every other shipped model family (benchmarks/memory_accuracy.py's
# EXTENDED: transformers, recurrent, video, SSL, generative, multimodal, ensembles, DARTS networks)
# in fp32 and bf16, and LoRA on the cases that name the layers it adapts. The whole table,
# checkpointing included: `benchmarks/memory_accuracy.py --extended --mode all`.
_MATRIX = ([(c.name, m) for c in M.CASES for m in ("fp32", "checkpoint", "bf16")]
           + [(c.name, m) for c in M.EXTENDED for m in ("fp32", "bf16")]
           + [(c.name, "lora") for c in M.CASES + M.EXTENDED if c.lora])


@pytest.mark.slow
@pytest.mark.parametrize("case,mode", _MATRIX, ids=[f"{c}-{m}" for c, m in _MATRIX])
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


# -- the estimator against measurements on small models (seconds each) ----------------------------

def _extended(name: str, **changes):
    import dataclasses

    return dataclasses.replace(next(c for c in M.EXTENDED + M.CASES if c.name == name), **changes)


def _assert_on_target(r):
    assert r["saved_est"] == pytest.approx(r["saved_meas"], rel=0.02), r
    assert 0.97 <= r["peak_est"] / r["peak_meas"] <= 1.05, (r["peak_est"] / r["peak_meas"], r["peak_at"])
    for what in ("params", "grads", "optimizer", "buffers"):
        assert r[what][0] == r[what][1], (what, r[what])


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cpu_recurrent_layers_match_measurement(cell):
    """oneDNN's LSTM keeps a uint8 workspace per layer and direction; ATen's GRU cells keep
    their gates per time step and free them as their backward runs."""
    case = _extended("textrnn", dims={"B": 2, "T": 5}, args={"vocab": 32, "dim": 8, "hidden": 16, "cell": cell})
    _assert_on_target(M.compare(case, "fp32", peer=False))


@pytest.mark.parametrize("kw", [dict(T=5, B=3, F=10, H=8), dict(T=10, B=8, F=64, H=17), dict(T=3, B=2, F=20, H=64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_onednn_lstm_workspace_size(kw, dtype):
    from archc.compiler.ops.recurrent import onednn_lstm_workspace

    lstm = torch.nn.LSTM(kw["F"], kw["H"])
    x = torch.randn(kw["T"], kw["B"], kw["F"], requires_grad=True)
    seen = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t) or t, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != torch.float32):
            lstm(x)
    (ws,) = [t for t in seen if t.dtype == torch.uint8]
    assert ws.numel() == onednn_lstm_workspace(kw["T"], kw["B"], kw["F"], kw["H"], 2 if dtype != torch.float32 else 4)


@pytest.mark.slow
def test_strided_recurrent_outputs_are_copied_by_attention():
    """Seq2Seq's attention reads the LSTMs' time-major outputs: each projection copies them."""
    _assert_on_target(M.compare(_extended("seq2seq", dims={"B": 2, "S": 6, "T": 5}), "fp32", peer=False))


def test_frozen_copy_of_a_trained_module_keeps_less():
    """DCGAN: `frozen_disc` is an `ema` target (frozen) built like `disc`: its ops keep what
    the input's gradient needs only, though they have the same attributes and shapes."""
    _assert_on_target(M.compare(_extended("dcgan"), "fp32", peer=False))


def test_lora_attention_keeps_only_what_gradients_need():
    """BERT with frozen keys: the attention core keeps no scaled q for k's gradient."""
    _assert_on_target(M.compare(_extended("bert"), "lora", peer=False))


def test_accelerate_figure_is_four_times_the_parameters():
    net = torch.nn.Linear(10, 10)
    assert M.accelerate_training(net) == 4 * 110 * 4
