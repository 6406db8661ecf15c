"""archc.runtime.train: the one training loop (fit, evaluate, callbacks, early stopping, seeds)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from archc.runtime.train import Callback, LambdaCallback, TrainConfig, evaluate, fit


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    ds = TensorDataset(x, y)
    return (DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(1)),
            DataLoader(ds, batch_size=128))


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_fit_learns_and_evaluates():
    train, val = _data()
    model = _model()
    before = evaluate(model, val)["accuracy"]
    r = fit(model, train, val, TrainConfig(epochs=5, lr=1e-2))
    assert r.steps == 5 * len(train) and r.epochs == 5
    assert len(r.history) == 5 and [h["epoch"] for h in r.history] == [0, 1, 2, 3, 4]
    assert r.metrics["accuracy"] > max(0.9, before)
    assert r.best == max(h["accuracy"] for h in r.history)
    assert evaluate(model, val)["count"] == 256


def test_steps_limit_and_eval_every():
    train, val = _data()
    r = fit(_model(), train, val, TrainConfig(epochs=None, steps=7, eval_every=3))
    assert r.steps == 7
    assert [h["step"] for h in r.history] == [3, 6, 7]  # and a last one at the end


def test_same_seed_same_result():
    train, val = _data()  # one loader for both: fit reseeds its shuffling
    a, b = _model(), _model()
    fit(a, train, val, TrainConfig(epochs=2, seed=3))
    fit(b, train, val, TrainConfig(epochs=2, seed=3))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_early_stopping_and_restore_best():
    train, val = _data()
    seen = []
    # a metric that only gets worse after the first evaluation
    fake = iter([0.9, 0.5, 0.4, 0.3, 0.2, 0.1])
    r = fit(_model(), train, val, TrainConfig(epochs=10, patience=2, restore_best=True),
            evaluate_fn=lambda m, d: {"accuracy": next(fake)},
            callbacks=[LambdaCallback(on_evaluate=lambda s, m: seen.append(m["accuracy"]))])
    assert seen == [0.9, 0.5, 0.4]
    assert r.best == 0.9 and r.stop_reason and "2 evaluation" in r.stop_reason
    assert r.epochs == 3


def test_callbacks_see_every_hook_and_can_change_the_loss():
    train, val = _data(64)
    calls = []

    class Spy(Callback):
        def on_fit_start(self, s): calls.append("fit_start")
        def on_epoch_start(self, s): calls.append("epoch_start")
        def on_step_start(self, s, batch): calls.append("step_start")
        def on_loss(self, s, batch, outputs, loss):
            calls.append("loss")
            return loss * 0.0  # nothing to learn: weights must not move (AdamW, no decay)
        def on_step_end(self, s): calls.append("step_end")
        def on_epoch_end(self, s): calls.append("epoch_end")
        def on_evaluate(self, s, m): calls.append("evaluate")
        def on_fit_end(self, s): calls.append("fit_end")

    model = _model()
    before = [p.clone() for p in model.parameters()]
    fit(model, train, val, TrainConfig(epochs=1), callbacks=[Spy()])
    assert calls == ["fit_start", "epoch_start"] + ["step_start", "loss", "step_end"] * 2 + \
        ["epoch_end", "evaluate", "fit_end"]
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))


def test_a_callback_may_stop_or_raise():
    train, val = _data()

    class StopAfter3(Callback):
        def on_step_end(self, s):
            if s.step == 3:
                s.stop, s.stop_reason = True, "enough"

    r = fit(_model(), train, val, TrainConfig(epochs=3), callbacks=[StopAfter3()])
    assert r.steps == 3 and r.stop_reason == "enough" and r.history[-1]["step"] == 3

    class Prune(Exception):
        pass

    def prune(state, metrics):
        raise Prune()

    with pytest.raises(Prune):
        fit(_model(), train, val, TrainConfig(epochs=3), callbacks=[LambdaCallback(on_evaluate=prune)])


def test_accumulate_clip_schedule_and_given_optimizer():
    train, val = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    r = fit(model, train, val, TrainConfig(epochs=1, accumulate=2, clip_grad=1.0, schedule="cosine",
                                           warmup_steps=1), optimizer=opt)
    assert r.steps == len(train) // 2
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-6)  # cosine ends at zero


def test_params_restricts_what_trains():
    train, val = _data()
    model = _model()
    frozen = model[0].weight.clone()
    fit(model, train, val, TrainConfig(epochs=1), params=model[2].parameters())
    assert torch.equal(frozen, model[0].weight)


def test_config_rejects_nonsense():
    with pytest.raises(ValueError):
        TrainConfig(epochs=None, steps=None)
    with pytest.raises(ValueError):
        TrainConfig(optimizer="lion")
    with pytest.raises(ValueError):
        TrainConfig(epochs=0)
    assert TrainConfig.from_dict({"epochs": 2, "unrelated": 1, "lr": None}).epochs == 2


def test_progress_bar_runs():
    train, val = _data(64)
    fit(_model(), train, val, TrainConfig(epochs=1, progress=True))


def test_runtime_never_imports_the_compiler():
    import ast
    from pathlib import Path

    import archc.runtime

    root = Path(archc.runtime.__file__).parent
    for f in [*root.glob("train/*.py"), root / "data.py"]:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                name = "." * node.level + (node.module or "")
            elif isinstance(node, ast.Import):
                name = ",".join(a.name for a in node.names)
            else:
                continue
            assert "compiler" not in name and "search" not in name, f"{f.name} imports {name}"
