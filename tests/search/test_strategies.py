"""Every strategy runs a small search on digits end to end and writes a buildable .arch."""
from __future__ import annotations

import pytest
import torch

import archc
from archc.runtime.data import load_data

from .conftest import NESTED, run_cli, states, study_of, write_spec

PLANS = {
    "random": 'strategy("random", trials=3)',
    "grid": 'strategy("grid")',
    "tpe": 'strategy("tpe", trials=4, startup=2)',
    "evolution": 'strategy("evolution", trials=5, population=2, sample=2)',
    "rl": 'strategy("rl", trials=4, lr=0.5)',
    "nsga2": 'strategy("nsga2", trials=4, population=2)\n    objective("accuracy", "max")\n'
             '    objective("params", "min")',
}


def _check_written(path, model: str):
    prog = archc.load(path)
    assert not prog.space(model).is_space, "the derived file still has choices"
    net = prog.build(model)
    x, y = next(iter(load_data("digits", batch=16).val))
    assert net(x[:16]).shape == (16, 10)


@pytest.mark.parametrize("strategy", list(PLANS))
def test_strategy_end_to_end(strategy, tmp_path, capsys):
    spec = write_spec(tmp_path, f"search S for Tiny() {{\n    {PLANS[strategy]}\n    FAST\n}}\n")
    out = tmp_path / "best.arch"
    assert run_cli(str(spec), "--plan", "S", "--threads", "1", "--quiet", "-o", str(out)) == 0
    printed = capsys.readouterr().out
    study = study_of(spec, "S")
    n = 4 if strategy == "grid" else int(PLANS[strategy].split("trials=")[1].split(",")[0].split(")")[0])
    assert states(study) == {"COMPLETE": n}
    for t in study.trials:
        assert set(t.params) == {"width", "act"}
        m = t.user_attrs["archc.metrics"]
        assert m["params"] > 0 and 0 <= m["accuracy"] <= 1
        assert t.user_attrs["archc.arch"]["act"] in ("relu", "gelu")
    _check_written(out, "Tiny")
    header = out.read_text().splitlines()[0]
    assert f"({strategy})" in header and "trial" in header
    if strategy == "nsga2":
        assert "Pareto front" in printed
    else:
        assert "best of" in printed
    assert f"wrote {out}" in printed.replace("\n", "")


def test_grid_visits_every_candidate_once(tmp_path):
    spec = write_spec(tmp_path, 'search G for Tiny() {\n    strategy("grid", trials=10)\n    FAST\n}\n')
    assert run_cli(str(spec), "--plan", "G", "--threads", "1", "--quiet", "-o", str(tmp_path / "g.arch")) == 0
    study = study_of(spec, "G")
    seen = sorted((t.params["width"], t.params["act"]) for t in study.trials)
    assert seen == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_evolution_mutates_one_decision_of_a_member(tmp_path):
    spec = write_spec(tmp_path, 'search E for Tiny() {\n    strategy("evolution", trials=6, population=2, sample=2)\n'
                                '    FAST\n}\n')
    assert run_cli(str(spec), "--plan", "E", "--threads", "1", "--quiet", "-o", str(tmp_path / "e.arch")) == 0
    trials = sorted(study_of(spec, "E").trials, key=lambda t: t.number)
    for i, t in enumerate(trials[2:], start=2):
        earlier = trials[:i]
        assert any(sum(t.params[k] != u.params[k] for k in t.params) == 1 for u in earlier), \
            f"trial {t.number} is not a one-step mutation of an earlier candidate"


def test_nested_choices_are_decided_as_met(tmp_path):
    spec = write_spec(tmp_path, 'search R for Nested() {\n    strategy("random", trials=4)\n    FAST\n}\n',
                      model=NESTED)
    assert run_cli(str(spec), "--plan", "R", "--threads", "1", "--quiet", "-o", str(tmp_path / "n.arch")) == 0
    for t in study_of(spec, "R").trials:
        depth = t.params["depth"] + 1
        blocks = {k for k in t.params if k.startswith("body.")}
        assert blocks == {f"body.{i}.choice_0" for i in range(depth)}
    _check_written(tmp_path / "n.arch", "Nested")


def test_constraints_reject_before_training(tmp_path):
    # width 8 has 8*9+8 + 8*16*10+10 = 1,370 parameters; width 4: 40 + 650 = 690
    spec = write_spec(tmp_path, 'search C for Tiny() {\n    strategy("random", trials=3)\n'
                                '    constraint("params < 1K")\n    FAST\n}\n')
    assert run_cli(str(spec), "--plan", "C", "--threads", "1", "--quiet", "-o", str(tmp_path / "c.arch")) == 0
    study = study_of(spec, "C")
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 3 and all(t.params["width"] == 0 for t in done)
    for t in study.trials:
        if t.state.name == "PRUNED":
            assert "breaks `params < 1K`" in t.user_attrs["archc.rejected"]
            assert "accuracy" not in t.user_attrs["archc.metrics"]  # never trained


def test_graph_and_latency_objectives_need_no_data(tmp_path):
    spec = write_spec(tmp_path, 'search L for Tiny() {\n    strategy("random", trials=3)\n'
                                '    objective("latency", "min")\n    objective("memory", "min")\n'
                                '    objective("flops", "min")\n    constraint("latency < 10s")\n}\n')
    assert run_cli(str(spec), "--plan", "L", "--threads", "1", "--quiet", "-o", str(tmp_path / "l.arch")) == 0
    for t in study_of(spec, "L").trials:
        lat, mem, flops = t.values
        params = t.user_attrs["archc.metrics"]["params"]
        assert lat > 0 and flops > 0
        assert mem > 3 * 4 * params  # a training step's peak: weights, gradients, AdamW's two moments, activations
        assert "accuracy" not in t.user_attrs["archc.metrics"]


def test_identical_candidates_reuse_results(tmp_path):
    spec = write_spec(tmp_path, 'search D for Tiny() {\n    strategy("random", trials=7)\n    FAST\n}\n')
    assert run_cli(str(spec), "--plan", "D", "--threads", "1", "--quiet", "-o", str(tmp_path / "d.arch")) == 0
    trials = study_of(spec, "D").trials
    dups = [t for t in trials if "archc.duplicate_of" in t.user_attrs]
    assert dups, "7 trials over 4 candidates must repeat one"
    for t in dups:
        orig = trials[t.user_attrs["archc.duplicate_of"]]
        assert orig.params == t.params and orig.values == t.values


def test_intermediate_accuracy_is_reported_for_pruning(tmp_path):
    spec = write_spec(tmp_path, 'search P for Tiny() {\n    strategy("random", trials=3)\n'
                                '    pruner("median", startup=1)\n    data("digits")\n    budget(epochs=2)\n}\n')
    assert run_cli(str(spec), "--plan", "P", "--threads", "1", "--quiet", "-o", str(tmp_path / "p.arch")) == 0
    study = study_of(spec, "P")
    assert states(study).get("COMPLETE") == 3
    trained = [t for t in study.trials if "archc.duplicate_of" not in t.user_attrs and t.state.name != "FAIL"]
    assert all(len(t.intermediate_values) >= 1 for t in trained)


def test_a_pruned_trial_stops_training(monkeypatch):
    import optuna

    from archc.runtime.train import TrainConfig, fit
    from archc.search.driver import _ReportToTrial

    class Trial:
        reported = []

        def report(self, value, step):
            self.reported.append((step, value))

        def should_prune(self):
            return len(self.reported) >= 2

    data = load_data("digits", batch=256)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(optuna.TrialPruned):
        fit(net, data.train, data.val, TrainConfig(epochs=5), callbacks=[_ReportToTrial(Trial(), True)])
    assert [s for s, _ in Trial.reported] == [1, 2]
