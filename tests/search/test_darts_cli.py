"""DARTS through the ordinary commands: `strategy("darts", ...)` checked with positions,
`archc search SPEC --plan NAME` (first and second order, checkpoint and resume), and
`archc render --relax darts [--alphas FILE]` drawing α (the DOT source is checked)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import archc
from archc.cli import main
from archc.compiler.lower.graphviz import arch_tables

from .conftest import ROOT, subprocess_env

SPECS = ROOT / "archc" / "specs"
SMALL = "C=4, layers=3, size=8, channels=1"  # one normal and two reduction cells, 8 x 8 digits

# op choices outside cells: DARTS mixes them too (a search of a second or two)
OPS = """
model Ops(classes: int = 10) {
    input x: float32[B, 1, 8, 8]
    x = x -> conv(4, 3, padding=1) -> choice(relu, gelu, identity, label="act")
          -> max_pool(2) -> flatten
    output logits = x -> fc: linear(classes)
}
"""

CELLS = f"""import std.darts

search Tiny for DartsSearch({SMALL}) {{
    strategy("darts", order=ORDER)
    data("digits")
    budget(epochs=1, steps=2, batch=32)
    seed(0)
}}
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spec(folder: Path, text: str, name: str = "space.arch") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _check_errors(capsys, spec: Path) -> list[dict]:
    rc = main(["check", str(spec), "--json"])
    out = capsys.readouterr().out
    assert rc == 1, out
    return json.loads(out)["diagnostics"]


def _where(spec: Path, text: str) -> tuple[int, int]:
    """(line, column) of the first `text` in the spec, 1-based."""
    for i, line in enumerate(spec.read_text().splitlines(), 1):
        if text in line:
            return i, line.index(text) + 1
    raise AssertionError(text)


def _search(capsys, spec: Path, plan: str, *extra: str) -> tuple[int, str, str]:
    rc = main(["search", str(spec), "--plan", plan, "--threads", "1", "--quiet", *extra])
    out, err = capsys.readouterr()
    return rc, out, err


# -- strategy("darts", ...) in `archc check` -----------------------------------------------------

def test_bad_strategy_settings_have_codes_and_positions(tmp_path, capsys):
    bad = ['order=3', 'rule="nope"', 'relax="softmax"', 'arch_lr=-1']
    plans = [f'search B{i} for Ops() {{\n    strategy("darts", {arg})\n    data("digits")\n}}\n'
             for i, arg in enumerate(bad)]
    plans.append('search T for Ops() {\n    strategy("tpe", order=2)\n    data("digits")\n}\n')
    plans.append('search D for Ops() {\n    strategy("darts", trials=5)\n    data("digits")\n}\n')
    spec = _spec(tmp_path, OPS + "\n" + "\n".join(plans))
    diags = _check_errors(capsys, spec)
    assert [d["code"] for d in diags] == ["E0502"] * 6
    at = [(d["line"], d["column"]) for d in diags]
    assert at == [_where(spec, arg) for arg in (*bad, "order=2", "trials=5")]
    msgs = [d["message"] for d in diags]
    assert "`order`" in msgs[0] and "1 or 2" in msgs[0]
    assert "unknown derivation rule `nope`" in msgs[1] and "darts, pcdarts, raw, nb201" in msgs[1]
    assert "`relax`" in msgs[2] and "must be positive" in msgs[3]
    assert "only `darts` takes `order`" in msgs[4]
    assert "takes no `trials`" in msgs[5]


def test_good_settings_check_and_reach_the_config(tmp_path, capsys):
    from archc.search import load_config

    spec = _spec(tmp_path, OPS + '\nsearch S for Ops() {\n    strategy("darts", order=2, arch_lr=1e-3, '
                               'rule="raw", relax="gdas")\n    data("digits")\n}\n')
    assert main(["check", str(spec)]) == 0, capsys.readouterr()
    cfg = load_config(archc.load(spec), "S")
    assert cfg.options == {"order": 2, "arch_lr": 1e-3, "rule": "raw", "relax": "gdas"}
    assert cfg.option_spans["order"].line == _where(spec, "order=2")[0]


def test_what_darts_cannot_do_is_reported_where_it_is_written(tmp_path, capsys):
    plans = [
        'search P for Ops() {\n    strategy("darts")\n    data("digits")\n    objective("accuracy")\n'
        '    objective("params")\n}\n',
        'search C for Ops() {\n    strategy("darts")\n    data("digits")\n    constraint("params < 1M")\n}\n',
        'search R for Ops() {\n    strategy("darts")\n    data("digits")\n    pruner("median")\n}\n',
    ]
    spec = _spec(tmp_path, OPS + "\n" + "\n".join(plans))
    diags = _check_errors(capsys, spec)
    assert [d["code"] for d in diags] == ["E0524"] * 3
    assert [d["line"] for d in diags] == [_where(spec, s)[0] for s in ('objective("params")', "constraint(",
                                                                       "pruner(")]


@pytest.mark.slow
def test_nb201_rule_on_cells_that_keep_two_inputs(tmp_path, capsys):
    spec = _spec(tmp_path, CELLS.replace("order=ORDER", 'rule="nb201"'))
    (d,) = _check_errors(capsys, spec)
    assert d["code"] == "E0524" and "rule `nb201` keeps every edge" in d["message"]
    assert (d["line"], d["column"]) == _where(spec, 'rule="nb201"')


# -- archc search on a DARTS plan ----------------------------------------------------------------

@pytest.mark.slow
def test_search_op_choices_interrupted_then_resumed(tmp_path, capsys, monkeypatch):
    """Interrupted after epoch 1 of 2, the second run resumes and ends where one straight run does."""
    from archc.runtime.train import darts as rt_darts

    plan = '\nsearch S for Ops() {\n    strategy("darts")\n    data("digits")\n    budget(epochs=2, batch=128)\n' \
           '    seed(0)\n}\n'
    straight_dir, cut_dir = tmp_path / "straight", tmp_path / "cut"
    straight_dir.mkdir(), cut_dir.mkdir()
    straight = _spec(straight_dir, OPS + plan, "ops.arch")
    cut = _spec(cut_dir, OPS + plan, "ops.arch")

    rc, out, _ = _search(capsys, straight, "S", "--json")
    assert rc == 0
    want = json.loads(out)

    original = rt_darts.DartsCallback.on_epoch_start

    def stop_at_epoch_2(self, state):
        if self.start_epoch + state.epoch == 1:
            raise KeyboardInterrupt
        return original(self, state)

    monkeypatch.setattr(rt_darts.DartsCallback, "on_epoch_start", stop_at_epoch_2)
    rc, _, err = _search(capsys, cut, "S")
    assert rc == 130 and "checkpoint keeps every finished epoch" in err
    assert (cut_dir / "ops.S.darts.pt").exists() and not (cut_dir / "ops.S.best.arch").exists()
    monkeypatch.setattr(rt_darts.DartsCallback, "on_epoch_start", original)

    rc, out, _ = _search(capsys, cut, "S")
    assert rc == 0
    assert "resumed after 1 epoch" in out and "act = " in out
    assert f"wrote {cut_dir / 'ops.S.best.arch'}" in out
    rc, out, _ = _search(capsys, cut, "S", "--json")
    got = json.loads(out)
    assert got["best"][0]["metrics"]["epochs"] == 2 and got["ran"] == 0  # the checkpoint held it all
    assert got["best"][0]["alphas"] == want["best"][0]["alphas"]
    assert got["best"][0]["arch"] == want["best"][0]["arch"]
    written = archc.load(cut_dir / "ops.S.best.arch")
    assert written.space("Ops").size == 1

    # the checkpoint draws the supernet with α
    rc = main(["render", str(cut), "--plan", "S", "--alphas", str(cut_dir / "ops.S.darts.pt"), "--format", "dot",
               "-o", str(cut_dir / "a.dot")])
    assert rc == 0, capsys.readouterr()
    dot = (cut_dir / "a.dot").read_text()
    assert dot.count("penwidth") == 3  # one mixed op, three candidates
    weights = sorted(float(x) for x in __import__("re").findall(r"label=(0\.\d\d|1\.00)", dot))
    assert len(weights) == 3 and abs(sum(weights) - 1) < 0.02


def test_a_changed_plan_is_not_resumed(tmp_path, capsys):
    plan = '\nsearch S for Ops() {\n    strategy("darts")\n    data("digits")\n    budget(epochs=1, steps=2)\n}\n'
    spec = _spec(tmp_path, OPS + plan)
    rc, out, _ = _search(capsys, spec, "S")
    assert rc == 0 and "held the whole search" not in out and "resumed" not in out
    rc, out, _ = _search(capsys, spec, "S")  # resumes: nothing left to train
    assert rc == 0 and "(the checkpoint held the whole search)" in out
    spec.write_text(OPS + plan.replace('strategy("darts")', 'strategy("darts", order=2)'))
    rc, _, err = _search(capsys, spec, "S")
    assert rc == 1 and "is of another search (order: 1 there, 2 now" in err and "--restart" in err
    rc, out, _ = _search(capsys, spec, "S", "--restart")
    assert rc == 0 and "2 │ darts" in out  # order 2, relax darts
    # DARTS's own flags are refused for sampling strategies
    spec.write_text(OPS + plan.replace('strategy("darts")', 'strategy("random", trials=1)'))
    assert main(["search", str(spec), "--plan", "S", "--restart"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("order", [1, 2])
def test_archc_search_runs_a_darts_plan(tmp_path, capsys, order):
    spec = _spec(tmp_path, CELLS.replace("ORDER", str(order)))
    rc, out, _ = _search(capsys, spec, "Tiny")
    assert rc == 0, out
    assert "darts search space.Tiny-" in out and "supernet accuracy" in out
    assert "genotype:\n  Genotype(normal=[(" in out and "reduce_concat=[2, 3, 4, 5])" in out
    written = tmp_path / "space.Tiny.best.arch"
    assert f"wrote {written}" in out and f"checkpoint {tmp_path / 'space.Tiny.darts.pt'}" in out
    prog = archc.load(written)
    assert prog.space("DartsSearch").size == 1  # no choices left
    assert f"darts, order {order}" in written.read_text().splitlines()[0]
    # a second run finds the whole search in the checkpoint: the same result, no training
    before = written.read_text()
    rc, out, _ = _search(capsys, spec, "Tiny")
    assert rc == 0 and "the checkpoint held the whole search" in out
    assert written.read_text().splitlines()[1:] == before.splitlines()[1:]
    # the derived network draws its derived cells: no mixed op left
    assert main(["render", str(written), "--format", "dot", "-o", str(tmp_path / "d.dot")]) == 0
    dot = (tmp_path / "d.dot").read_text()
    assert "mixed" not in dot and "penwidth" not in dot and ".edge" in dot


def test_run_search_dispatches_darts(tmp_path):
    from archc.search import load_config, run_search

    spec = _spec(tmp_path, OPS + '\nsearch S for Ops() {\n    strategy("darts", rule="raw")\n    data("digits")\n'
                               '    budget(epochs=1, steps=2)\n}\n')
    prog = archc.load(spec)
    result = run_search(prog, load_config(prog, "S"), progress=False, verbose=False, threads=1)
    row = result.best[0]
    assert row["metrics"]["rule"] == "raw" and row["metrics"]["order"] == 1
    assert set(row["arch"]) == {"act"} and row["arch"]["act"] in ("relu", "gelu", "identity")
    assert result.written == tmp_path / "space.S.best.arch"


# -- archc render --relax darts [--alphas FILE] ----------------------------------------------

@pytest.fixture(scope="module")
def tables():
    prog = archc.load(SPECS / "darts.arch")
    graph = prog.graph("DartsSearch", relax="darts", C=4, layers=3, size=8, channels=1)
    return arch_tables(graph)


def _darts_spec(folder: Path) -> Path:
    return _spec(folder, f"import std.darts\n\nsearch Tiny for DartsSearch({SMALL}) {{\n    strategy(\"darts\")\n"
                         "    data(\"digits\")\n}\n")


def _peaked(tables) -> dict:
    """α all zero but row 0 of `normal`, where candidate 4 (sep_conv_3x3) weighs e^4 / (e^4 + 7) = 0.89."""
    alphas = {k: [[0.0] * c for _ in range(r)] for k, (r, c) in tables.items()}
    alphas["normal"][0][4] = 4.0
    return alphas


def _assert_peaked(dot: str) -> None:
    assert dot.count("penwidth") == 3 * 14 * 8  # three cells, 14 edges, 8 candidates
    assert dot.count("label=0.89") == 1 and dot.count("label=0.02") == 7
    assert dot.count("label=0.12") == 3 * 14 * 8 - 8
    line = next(s for s in dot.splitlines() if "label=0.89" in s)
    src = line.split("->")[0].strip()
    node = next(s for s in dot.splitlines() if s.strip().startswith(src + " ["))
    assert ".edge0_0.4." in node  # the heavy edge comes from candidate 4 of edge 0 <- 0


@pytest.mark.slow
def test_render_supernet_without_and_with_alphas_never_imports_torch(tmp_path, tables):
    spec = _darts_spec(tmp_path)
    (tmp_path / "alphas.json").write_text(json.dumps(_peaked(tables)))
    code = (
        "import sys\nfrom archc.cli import main\n"
        f"assert main(['render', {str(spec)!r}, '--plan', 'Tiny', '--relax', 'darts', '--format', 'dot', "
        f"'-o', {str(tmp_path / 'plain.dot')!r}]) == 0\n"
        f"assert main(['render', {str(spec)!r}, '--plan', 'Tiny', '--alphas', {str(tmp_path / 'alphas.json')!r}, "
        f"'--format', 'dot', '-o', {str(tmp_path / 'json.dot')!r}]) == 0\n"
        "assert 'torch' not in sys.modules, 'render imported torch'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    plain = (tmp_path / "plain.dot").read_text()
    assert "penwidth" not in plain
    assert plain.count("\\nmixed(row=") == 3 * 14  # a mixed op per edge, its candidates drawn into it
    assert "sep_conv_0" in plain and "dil_conv_0" in plain
    _assert_peaked((tmp_path / "json.dot").read_text())


@pytest.mark.slow
def test_render_alphas_from_a_torch_file_and_the_api(tmp_path, tables, capsys):
    import torch

    spec = _darts_spec(tmp_path)
    alphas = {f"arch.{k}": torch.tensor(v) for k, v in _peaked(tables).items()}  # as a state_dict has them
    torch.save({**alphas, "stem.0.weight": torch.zeros(1)}, tmp_path / "alphas.pt")
    assert main(["render", str(spec), "--plan", "Tiny", "--alphas", str(tmp_path / "alphas.pt"), "--format", "dot",
                 "-o", str(tmp_path / "pt.dot")]) == 0
    _assert_peaked((tmp_path / "pt.dot").read_text())
    # Program.render: a path or the tables themselves
    prog = archc.load(spec)
    _assert_peaked(prog.render(plan="Tiny", alphas=tmp_path / "alphas.pt").source)


def test_bad_alphas_are_usage_errors(tmp_path, capsys):
    spec = _spec(tmp_path, OPS)
    (tmp_path / "wrong.json").write_text(json.dumps({"act": [[0.0, 1.0]]}))
    (tmp_path / "other.json").write_text(json.dumps({"normal": [[0.0] * 8] * 14}))
    (tmp_path / "junk.pt").write_text("not a torch file")
    out = tmp_path / "x.dot"
    cases = {"wrong.json": "table `act` is 1 x 2, the supernet's is 1 x 3",
             "other.json": "the supernet has no table `normal`; its tables: act (1 x 3)",
             "missing.json": "no such file",
             "junk.pt": "cannot read"}
    for name, msg in cases.items():
        rc = main(["render", str(spec), "--alphas", str(tmp_path / name), "--format", "dot", "-o", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and msg in err, (name, err)
    (tmp_path / "ok.json").write_text(json.dumps({"act": [[0.0, 0.0, 2.0]]}))
    assert main(["render", str(spec), "--alphas", str(tmp_path / "ok.json"), "--format", "dot", "-o", str(out)]) == 0
    dot = out.read_text()
    assert dot.count("penwidth") == 3 and "label=0.79" in dot and dot.count("label=0.11") == 2
