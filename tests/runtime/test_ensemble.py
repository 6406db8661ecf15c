"""archc.runtime.ensemble: the `ensemble` module, bagging (bootstrap resampling per member),
boosting (SAMME), the stacking meta-learner, all on the one training loop."""
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import archc
from archc.runtime import ensemble as E
from archc.runtime.data import digits
from archc.runtime.train import TrainConfig

SPECS = Path(archc.__file__).parent / "specs"
MEMBERS = ["m1", "m2", "m3"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    parts = digits()
    x, y = parts["train"]
    small = lambda t, n: DataLoader(TensorDataset(t[0][:n], t[1][:n]), batch_size=64)  # noqa: E731
    return SimpleNamespace(train=small((x, y), 384), val=small(parts["val"], 128), test=small(parts["test"], 128))


def _model(mode="stack"):
    torch.manual_seed(0)
    return archc.load(SPECS / "ensemble.arch").build("DigitsEnsemble", mode=mode)


def test_bootstrap_counts():
    c = E.bootstrap_counts(100, 3, seed=0)
    assert c.shape == (3, 100) and torch.equal(c.sum(1), torch.full((3,), 100.0))
    assert torch.equal(c, E.bootstrap_counts(100, 3, seed=0))
    assert not torch.equal(c[0], c[1])
    # about 1 - 1/e of the examples are drawn at least once
    assert 0.55 < float((c > 0).float().mean()) < 0.72


def test_each_member_learns_only_from_its_own_resample():
    net = _model()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    weights = torch.ones(3, 8)
    weights[1] = 0  # member 2 draws none of these examples
    m = E._Members(net, MEMBERS, weights, [0, 1, 2])
    m.train()
    m(x, torch.arange(8), y).backward()
    m.capture.close()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in net.m1.parameters())
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in net.m2.parameters())
    assert net.combine.weight.grad is None  # the meta-learner trains later, on held-out data


def test_bagging_then_stacking(data):
    net = _model()
    report = E.train_members(net, MEMBERS, data, TrainConfig(epochs=4, lr=3e-3), method="bagging", seed=0)
    assert report.member_weights == [1.0, 1.0, 1.0] and len(report.fits) == 1
    before = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("combine")}
    acc = E.accuracies(net, MEMBERS, data.test)
    assert all(acc[m] > 0.5 for m in MEMBERS)
    r = E.fit_meta(net, data.val, TrainConfig(epochs=50, lr=1e-2), seed=0)
    assert r.steps == 50  # 128 held-out examples: one batch per epoch
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # members frozen, BN statistics too
    acc = E.accuracies(net, MEMBERS, data.test)
    assert acc["ensemble"] >= min(acc[m] for m in MEMBERS)


def test_boosting_weights_follow_samme(data):
    net = _model(mode="vote")
    report = E.train_members(net, MEMBERS, data, TrainConfig(epochs=1, lr=3e-3), method="boosting",
                             shrinkage=0.5, seed=0)
    assert len(report.fits) == 3 and len(report.errors) == 3
    for err, alpha in zip(report.errors, report.member_weights):
        if err < 1 - 1 / 10:
            assert math.isclose(alpha, 0.5 * (math.log((1 - err) / max(err, 1e-10)) + math.log(9)), rel_tol=1e-6)
    assert torch.allclose(net.combine.member_weights, torch.tensor(report.member_weights))


def test_samme_reweights_the_misclassified(monkeypatch, data):
    """Member 2 trains on weights that grow exactly by exp(α₁) on member 1's mistakes."""
    net = _model(mode="vote")
    seen = []
    real = E._Members.__init__

    def spy(self, model, members, weights, active):
        seen.append(weights[active[0]].clone())
        real(self, model, members, weights, active)

    monkeypatch.setattr(E._Members, "__init__", spy)
    report = E.train_members(net, MEMBERS, data, TrainConfig(epochs=1, lr=3e-3), method="boosting", seed=0)
    w1, w2 = seen[0] / seen[0].sum(), seen[1] / seen[1].sum()
    assert torch.allclose(w1, torch.full_like(w1, 1 / len(w1)))
    ratio = w2 / w1
    alpha = report.member_weights[0]
    assert torch.allclose(ratio.max() / ratio.min(), torch.tensor(math.exp(alpha)), rtol=1e-3) or \
        report.errors[0] == 0.0


def test_ensemble_needs_matching_members():
    with pytest.raises(ValueError, match="3 members"):
        E.train_members(_model(), ["m1", "m2"], None, TrainConfig(epochs=1))
    m = E.Ensemble(2, 3)
    with pytest.raises(ValueError, match="2 members"):
        m(torch.randn(4, 3))
    with pytest.raises(ValueError, match="stack"):
        E.fit_meta(_model(mode="mean"), None, TrainConfig(epochs=1))


def test_modes_agree_on_confident_members():
    z = F.one_hot(torch.tensor([1, 2, 0]), 3).float() * 20
    for mode in ("mean", "vote"):
        m = E.Ensemble(3, 3, mode=mode)
        assert torch.equal(m(z, z, z).argmax(-1), torch.tensor([1, 2, 0]))
