"""Search plans: their directives, the checks with codes and positions, and that bad
input never costs what a storage already holds."""
from __future__ import annotations

import json
import re

import pytest

import archc
from archc.cli import main
from archc.compiler.diagnostics import CompileError
from archc.search.config import load_config, parse_constraint

from .conftest import TINY, run_cli, states, study_of, write_spec

NO_CHOICES = """
model Plain() {
    input x: float32[B, 1, 8, 8]
    output logits = x -> flatten -> linear(10)
}
"""

SEQ = """
model Seq() {
    input x: float32[B, T, 16]
    output y = x -> linear(choice(8, 16, label="w"))
}
"""


def _errors(capsys, *argv) -> list[dict]:
    rc = main([*argv, "--json"])
    out = capsys.readouterr().out
    assert rc == 1, out
    return json.loads(out)["diagnostics"]


def _line_of(spec, text: str) -> int:
    return next(i for i, line in enumerate(spec.read_text().splitlines(), 1) if text in line)


BAD = [
    # (model, directive lines, code, message fragment, the line the caret is on)
    (NO_CHOICES, 'strategy("tpe", trials=2)', "E0520", "`Plain` has no choices", "search Bad"),
    (TINY, 'strategy("tpe", trials=2)\n    objective("acuracy", "max")', "E0521", "unknown objective `acuracy`",
     "acuracy"),
    (TINY, 'strategy("tpe", trials=2)\n    constraint("parms < 1M")', "E0521", "unknown metric `parms`", "parms"),
    (TINY, 'strategy("tpe", trials=2)\n    constraint("params lots")', "E0522", "cannot read the constraint",
     "lots"),
    (TINY, 'strategy("tpe", trials=2)\n    constraint("accuracy > 0.9")', "E0522", "cannot be decided before",
     "accuracy >"),
    (TINY, 'strategy("tpe", trials=2)\n    constraint("memory < 8ms")', "E0522", "`ms` is not a unit for `memory`",
     "8ms"),
    (SEQ, 'strategy("tpe", trials=2)\n    objective("params", "min")\n    constraint("flops < 1M")', "E0522",
     "depends on `T`", "flops <"),
    (TINY, 'strategy("tpe", trials=2)\n    storage("nosuch://db")', "E0523", "unknown storage `nosuch`",
     "nosuch"),
    (TINY, 'strategy("tpe", trials=2)\n    storage("sqlite:////no/such/folder/s.db")', "E0523",
     "does not exist", "no/such"),
    (TINY, 'strategy("rl", trials=2)\n    objective("accuracy")\n    objective("params")', "E0524",
     "`rl` optimizes one objective", 'strategy("rl"'),
    (TINY, 'strategy("nsga2", trials=2)\n    objective("accuracy")\n    objective("params")\n'
           '    pruner("median")', "E0524", "pruning needs a single objective", "pruner"),
    (TINY, 'objective("accuracy")', "E0524", "has no strategy", "search Bad"),
    (TINY, 'strategy("tpe", trials=2)\n    data("cifar10")', "E0525", "unknown data `cifar10`", "cifar10"),
    (TINY, 'strategy("tpe", trials=2)\n    objective("accuracy")', "E0525", "needs data", 'objective("accuracy")'),
]


@pytest.mark.parametrize("model,lines,code,fragment,where", BAD, ids=[b[2] + "-" + b[3][:24] for b in BAD])
def test_bad_plans_are_diagnosed_by_check_and_search(model, lines, code, fragment, where, tmp_path, capsys):
    data = '' if "data(" in lines or code == "E0525" else '\n    data("digits")'
    if model is SEQ:
        data = ""
    name = re.search(r"model (\w+)", model).group(1)
    spec = write_spec(tmp_path, f"search Bad for {name}() {{\n    {lines}{data}\n}}\n", model=model)
    line = _line_of(spec, where)
    for command in (["search", str(spec), "--plan", "Bad"], ["check", str(spec)]):
        diags = _errors(capsys, *command)
        assert diags[0]["code"] == code, diags
        assert fragment in diags[0]["message"], diags[0]["message"]
        assert diags[0]["file"] == str(spec) and diags[0]["line"] == line


def test_did_you_mean(tmp_path, capsys):
    spec = write_spec(tmp_path, 'search Bad for Tiny() {\n    strategy("tpe", trials=2)\n'
                                '    objective("acuracy")\n    data("digits")\n}\n')
    assert _errors(capsys, "search", str(spec), "--plan", "Bad")[0]["help"] == "did you mean `accuracy`?"


def test_directive_arguments_are_validated(tmp_path, capsys):
    spec = write_spec(tmp_path, 'search Bad for Tiny() {\n    strategy("annealing", trials=0)\n'
                                '    budget(epochs=0)\n    pruner("median", warmup=-1)\n    seed("x")\n}\n')
    diags = _errors(capsys, "check", str(spec))
    assert [d["code"] for d in diags] == ["E0502"] * 4
    assert [d["line"] for d in diags] == [_line_of(spec, s) for s in ("annealing", "budget", "pruner", "seed")]


def test_darts_needs_a_space_it_can_relax(tmp_path, capsys):
    # Tiny's `width` is a choice among values: DARTS mixes ops (tests/search/test_darts_cli.py runs it)
    spec = write_spec(tmp_path, 'search D for Tiny() {\n    strategy("darts")\n    data("digits")\n}\n')
    for cmd in (["check", str(spec)], ["search", str(spec), "--plan", "D"]):
        diags = _errors(capsys, *cmd)
        assert diags[0]["code"] == "E0524" and "relaxes op choices and cells only" in diags[0]["message"]
        assert "`width`" in diags[0]["message"] and diags[0]["line"] == _line_of(spec, "darts")


def test_data_that_fails_to_load_is_a_diagnostic(tmp_path, capsys):
    spec = write_spec(tmp_path, 'search D for Tiny() {\n    strategy("random", trials=1)\n'
                                '    data("no_such_module_abc:load")\n}\n')
    diags = _errors(capsys, "search", str(spec), "--plan", "D")
    assert diags[0]["code"] == "E0525" and "cannot import `no_such_module_abc`" in diags[0]["message"]
    assert diags[0]["line"] == _line_of(spec, "no_such_module")


def test_a_server_that_does_not_answer(tmp_path, capsys):
    spec = write_spec(tmp_path, 'search D for Tiny() {\n    strategy("random", trials=1)\n'
                                '    storage("postgresql://nobody@127.0.0.1:1/none")\n    data("digits")\n}\n')
    diags = _errors(capsys, "search", str(spec), "--plan", "D")
    assert diags[0]["code"] == "E0523" and "cannot open storage" in diags[0]["message"]
    assert diags[0]["line"] == _line_of(spec, "storage(")


def test_bad_input_leaves_the_storage_intact(tmp_path, capsys):
    good = 'search Good for Tiny() {\n    strategy("random", trials=2)\n    FAST\n}\n'
    spec = write_spec(tmp_path, good)
    db = f"sqlite:///{tmp_path}/shared.db"
    assert run_cli(str(spec), "--plan", "Good", "--storage", db, "--quiet", "--threads", "1") == 0
    study = study_of(spec, "Good", db)
    before = [(t.number, t.state.name, t.values, t.params) for t in study.trials]
    text = spec.read_text()
    bad = [
        'search B1 for Tiny() {\n    strategy("random", trials=2)\n    objective("nope")\n    FAST\n}\n',
        'search B2 for Tiny() {\n    strategy("random", trials=2)\n    constraint("params <")\n    FAST\n}\n',
        'search B3 for Tiny() {\n    strategy("random", trials=2)\n    data("missing_mod_q:load")\n}\n',
        'search B4 for Tiny() {\n    strategy("darts")\n    FAST\n}\n',
    ]
    spec.write_text(text + "\n".join(bad).replace("FAST", 'data("digits")\n    budget(steps=3)'))
    for name in ("B1", "B2", "B3", "B4"):
        assert main(["search", str(spec), "--plan", name, "--storage", db, "--quiet"]) == 1
    capsys.readouterr()
    import optuna

    from archc.search.storage import open_storage

    assert len(optuna.get_all_study_names(open_storage(db))) == 1  # no study was created for a bad plan
    after = [(t.number, t.state.name, t.values, t.params) for t in study_of(spec, "Good", db).trials]
    assert after == before
    # and asking for more trials continues the same study
    assert run_cli(str(spec), "--plan", "Good", "--storage", db, "--trials", "3", "--quiet", "--threads", "1") == 0
    assert states(study_of(spec, "Good", db)) == {"COMPLETE": 3}


def test_study_name_follows_what_the_values_depend_on(tmp_path):
    spec = write_spec(tmp_path, 'search S for Tiny() {\n    strategy("tpe", trials=5)\n    FAST\n}\n', stem="same")
    prog = archc.load(spec)
    a = load_config(prog, "S")
    assert a.study_name.startswith("same.S-")
    assert load_config(prog, "S", trials=9).study_name == a.study_name  # more trials: the same study
    spec.write_text(spec.read_text().replace('"tpe"', '"random"'))  # another strategy: the same study
    assert load_config(archc.load(spec), "S").study_name == a.study_name
    spec.write_text(spec.read_text().replace("steps=3", "steps=4"))  # another budget: another study
    assert load_config(archc.load(spec), "S").study_name != a.study_name
    assert a.storage == f"sqlite:///{tmp_path}/same.search.db"


def test_relative_sqlite_paths_are_next_to_the_spec(tmp_path):
    spec = write_spec(tmp_path, 'search S for Tiny() {\n    strategy("tpe")\n    storage("sqlite:///runs.db")\n'
                                '    FAST\n}\n')
    cfg = load_config(archc.load(spec), "S")
    assert cfg.storage == f"sqlite:///{tmp_path}/runs.db" and cfg.trials == 20


@pytest.mark.parametrize("text,metric,op,value", [
    ("params < 1M", "params", "<", 1e6),
    ("params<=1_500K", "params", "<=", 1.5e6),
    ("flops < 2.5B", "flops", "<", 2.5e9),
    ("memory <= 8GiB", "memory", "<=", 8 * 2**30),
    ("memory < 80GB", "memory", "<", 80e9),
    ("memory < 512MiB", "memory", "<", 512 * 2**20),
    ("latency < 5ms", "latency", "<", 5.0),
    ("latency < 0.5s", "latency", "<", 500.0),
    ("latency < 250us", "latency", "<", 0.25),
    ("params >= 10000", "params", ">=", 1e4),
])
def test_constraint_parsing(text, metric, op, value):
    c = parse_constraint(text)
    assert (c.metric, c.op) == (metric, op) and c.value == pytest.approx(value)
    assert c.holds(value) == ("=" in op)


@pytest.mark.parametrize("text", ["params < 1X", "params < 1GiB", "latency < 3M", "params", "< 3", "params < -1"])
def test_constraint_errors(text):
    with pytest.raises(CompileError) as e:
        parse_constraint(text)
    assert e.value.diagnostics[0].code in ("E0521", "E0522")


def test_check_does_not_import_torch_or_optuna(tmp_path):
    import subprocess
    import sys

    spec = write_spec(tmp_path, 'search S for Tiny() {\n    strategy("tpe")\n    constraint("params < 1M")\n'
                                '    FAST\n}\n')
    code = ("import sys, archc.cli; rc = archc.cli.main(['check', %r]); assert rc == 0, rc; "
            "bad = [m for m in ('torch', 'optuna', 'sqlalchemy') if m in sys.modules]; assert not bad, bad") % str(spec)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_memory_that_cannot_be_estimated(tmp_path, capsys):
    spec = write_spec(tmp_path, 'search Bad for Seq() {\n    strategy("tpe", trials=2)\n'
                                '    objective("memory", "min")\n}\n', model=SEQ)
    diags = _errors(capsys, "check", str(spec))
    assert diags[0]["code"] == "E0522" and "`memory` cannot be evaluated" in diags[0]["message"]
    assert "`T`" in diags[0]["message"] and diags[0]["line"] == _line_of(spec, "memory")
