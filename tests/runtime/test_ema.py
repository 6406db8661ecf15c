"""archc.runtime.ema: BYOL's target network is an exact moving average of the online one,
and no gradient reaches it."""
from pathlib import Path

import pytest
import torch

import archc
from archc.runtime import ema
from archc.runtime.train import TrainConfig, fit

SPECS = Path(archc.__file__).parent / "specs"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def byol_prog():
    return archc.load(SPECS / "ssl.arch")


def _byol(prog, decay=0.9):
    torch.manual_seed(0)
    return prog.build("BYOL", width=8, hidden=16, proj=8, decay=decay)


def test_init_copies_the_source_and_freezes_the_target(byol_prog):
    net = _byol(byol_prog)
    assert not torch.equal(net.target.encoder.stem.conv.weight, net.online.encoder.stem.conv.weight)
    found = ema.init(net)
    assert found == [ema.Pair("target", "online", 0.9)]
    online, target = net.online.state_dict(), net.target.state_dict()
    assert online.keys() == target.keys() and all(torch.equal(online[k], target[k]) for k in online)
    assert not any(p.requires_grad for p in net.target.parameters())
    assert all(p.requires_grad for p in net.online.parameters())


def test_after_a_step_the_target_is_the_exact_moving_average(byol_prog):
    decay = 0.9
    net = _byol(byol_prog, decay)
    ema.init(net)
    # perturb the target so the average is not trivially equal to the source
    with torch.no_grad():
        for p in net.target.parameters():
            p.add_(0.01 * torch.randn_like(p))
    old = {k: v.clone() for k, v in net.target.named_parameters()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    v1, v2 = torch.rand(8, 1, 8, 8), torch.rand(8, 1, 8, 8)
    loss, _ = net(v1, v2)
    loss.backward()
    assert all(p.grad is None for p in net.target.parameters())  # no gradient reaches the target
    assert all(p.grad is not None for p in net.online.parameters())
    opt.step()
    online = dict(net.online.named_parameters())
    ema.update(net)
    for k, t in net.target.named_parameters():
        expected = decay * old[k] + (1 - decay) * online[k].detach()
        assert torch.equal(t, expected), k
    # buffers (batch-norm statistics) are copied
    for (k, t), (_, s) in zip(net.target.named_buffers(), net.online.named_buffers()):
        assert torch.equal(t, s), k


def test_no_gradient_reaches_the_target_even_unfrozen(byol_prog):
    net = _byol(byol_prog)  # ema.init not called: the target still requires grad
    loss, _ = net(torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8))
    loss.backward()
    assert all(p.grad is None for p in net.target.parameters())  # ema(...) detaches its output


def test_the_callback_updates_after_every_optimizer_step(byol_prog):
    net = _byol(byol_prog, decay=0.5)
    ema.init(net)

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, v1, v2):
            return self.m(v1, v2)[0]

    updates = []

    class Count(ema.EMACallback):
        def on_step_end(self, state):
            before = net.target.encoder.stem.conv.weight.clone()
            super().on_step_end(state)
            updates.append(not torch.equal(before, net.target.encoder.stem.conv.weight))

    data = [(torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8), torch.zeros(4)) for _ in range(3)]
    fit(Wrap(net), data, None, TrainConfig(epochs=1, lr=1e-2), loss_fn=lambda out, t: out,
        callbacks=[Count(net)])
    assert updates == [True, True, True]


def test_decay_zero_is_a_frozen_copy_refreshed_every_step():
    prog = archc.load(SPECS / "generative.arch")
    torch.manual_seed(0)
    net = prog.build("DCGAN", nz=4, width=8)
    ema.init(net)
    x, z = torch.rand(6, 1, 8, 8), torch.randn(6, 4)
    loss, d_loss, g_loss, samples = net(x, z)
    g_loss.backward(retain_graph=True)
    # the generator's loss trains the generator, not the discriminator
    assert all(p.grad is None for p in net.disc.parameters())
    assert all(p.grad is not None for p in net.generator.parameters())
    net.zero_grad()
    d_loss.backward()
    assert all(p.grad is None for p in net.generator.parameters())  # fake images are detached for D
    assert net.disc.conv1.weight.grad is not None
    with torch.no_grad():
        net.disc.conv1.weight.add_(1.0)
    ema.update(net)
    assert torch.equal(net.frozen_disc.conv1.weight, net.disc.conv1.weight)


def test_conflicting_declarations_and_shapes_raise():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(3, 4), torch.nn.Linear(3, 5)
            self.e1, self.e2 = ema.EMA("b", "a", 0.9), ema.EMA("b", "a", 0.5)

    m = M()
    with pytest.raises(ValueError, match="decay"):
        ema.pairs(m)
    m.e2 = ema.EMA("b", "a", 0.9)
    with pytest.raises(ValueError, match=r"\[5, 3\]"):
        ema.init(m)
