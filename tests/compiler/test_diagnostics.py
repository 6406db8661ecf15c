"""Diagnostics: every code from a broken spec, at the right line and column.

Most specs go through the real command line in-process (`archc check --json`),
which gives each diagnostic's code and primary span; some go through the
Python API (`archc.parse(...).check_names()` / `.check()`). Tests of known
bugs are marked `xfail(strict=True)`; /tmp/diag_issues.md (kept by the
diagnostics work) has a reproduction of each.
"""
from __future__ import annotations

import json

import pytest

import archc
from archc.cli import main
from archc.compiler.diagnostics import CODES, CompileError

# -- helpers ---------------------------------------------------------------------


def at(text: str | bytes, marker: str, occurrence: int = 1) -> tuple[int, int]:
    """(line, column), counting from 1, where the `occurrence`-th `marker` starts."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    i = -1
    for _ in range(occurrence):
        i = text.index(marker, i + 1)
    line = text.count("\n", 0, i) + 1
    col = i - (text.rfind("\n", 0, i) + 1) + 1
    return line, col


def _argv_run(argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse exits on a bad command line
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """cli(text, *args, name="t.arch", cmd="check") -> (exit status, diagnostics as dicts).

    Writes the spec to tmp_path and runs `archc CMD --json NAME ARGS` from there."""
    monkeypatch.chdir(tmp_path)

    def run(text, *args, name="t.arch", cmd="check"):
        (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        rc, out, err = _argv_run([cmd, "--json", name, *args], capsys)
        assert "Traceback" not in out + err
        data = json.loads(out) if out.strip().startswith("{") else {}
        return rc, data.get("diagnostics", [])

    return run


@pytest.fixture
def cli_text(tmp_path, monkeypatch, capsys):
    """cli_text(files: dict[name, text], *argv) -> (exit status, stdout, stderr), rendered as users see it."""
    monkeypatch.chdir(tmp_path)

    def run(files: dict, *argv):
        for name, text in files.items():
            (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        rc, out, err = _argv_run(list(argv), capsys)
        assert "Traceback" not in out + err
        return rc, out, err

    return run


def api_diagnostics(text: str, filename: str = "t.arch"):
    """Diagnostics through the Python API: parse, then names, then every model."""
    try:
        prog = archc.parse(text, filename)
    except CompileError as e:
        return e.diagnostics
    names = prog.check_names()
    if names:
        return names
    out = []
    for model in prog.models:
        try:
            prog.check(model)
        except CompileError as e:
            out += e.diagnostics
    return out


# -- one broken spec per code ------------------------------------------------------

NET = "model Net() {\n    input x: float32[B, 16]\n    output y = x -> linear(10)\n}\n"

RESNET_NO_DOWNSAMPLE = """\
block Bottleneck(x, planes: int, stride: int = 1) {
    out = x -> conv1: conv(planes, 1, bias=false) -> bn1: bn -> relu
            -> conv2: conv(planes, 3, stride=stride, padding=1, bias=false) -> bn2: bn -> relu
            -> conv3: conv(planes * 4, 1, bias=false) -> bn3: bn
    return relu(out + x)
}

model ResNet50(classes: int = 1000) {
    input x: float32[B, 3, 224, 224]
    x = x -> conv1: conv(64, 7, stride=2, padding=3, bias=false) -> bn1: bn -> relu
          -> max_pool(3, stride=2, padding=1)
          -> layer1: [Bottleneck(64) * 3]
          -> layer2: [Bottleneck(128, stride=2), Bottleneck(128) * 3]
    output logits = x -> global_avg_pool -> flatten -> fc: linear(classes)
}
"""

HEAD = "block Head(x, n: int) {\n    return x -> linear(n)\n}\n\n"

SPACE = ("model Net() {\n    input x: float32[B, 16]\n"
         "    output y = x -> linear(choice(16, 32, label=\"width\")) -> relu -> linear(10)\n}\n\n")


def search_plan(*directives: str) -> str:
    return SPACE + "search Tune for Net() {\n" + "".join(f"    {d}\n" for d in directives) + "}\n"


# (code, spec, where the primary span starts: a marker string, (marker, occurrence) or (line, col), cli args)
CASES = [
    ("E0001", "model Net() {\n    input x float32[B, 16]\n    output y = x\n}\n", "float32"),
    ("E0001", "block A(x) {\n    return x -> linear(4\n}\n", "}"),
    ("E0002", "model Net() {\n    input x: float32[B, 16]\n    output y = x -> relu;\n}\n", ";"),
    ("E0002", "model Net() {\n    input x: float32[B, 16]\n    output y = x -> r\u00e9lu\n}\n", "\u00e9"),
    ("E0003", "model Net() {\n    input x: float32[B, 16]\n    output y = x -> linear(10)\n", (3, 31)),
    ("E0004", "model Net() {\n    input x: float32[B, 64, 32, 32]\n    output y = x -> conv(64, 3) + x\n}\n",
     "conv(64, 3) + x"),
    ("E0005", "model Net() {\n    input x: float32[B, 16]\n    output y = x -> linear(10x)\n}\n", "10x"),
    ("E0005", 'model Net() {\n    input x: float32[B, 16]\n    assert true, "oops\n    output y = x\n}\n', '"oops'),
    ("E0006", b"model Net() {\n    input x: float32[B, 16]  # caf\xe9\n    output y = x\n}\n", "\ufffd"),
    ("E0101", 'import "layers.arch"\n\n' + NET, "import"),
    ("E0101", "import std.no_such_spec\n\n" + NET, "import"),
    ("E0105", 'import "/etc/passwd"\n\n' + NET, "import"),
    ("E0102", 'import "t.arch"\n\n' + NET, "import"),
    ("E0103", HEAD + "block Head(x) {\n    return x\n}\n\n" + NET, ("block Head", 2)),
    ("E0103", "let Net = 3\n\n" + NET, ("model Net", 1)),
    ("E0104", NET + "\ntrain Fit for Nett() {\n    optimizer(\"adamw\")\n}\n", "train"),
    ("E0201", "model Net(classes: int = 10) {\n    input x: float32[B, 16]\n    output y = x -> linear(clases)\n}\n",
     "clases"),
    ("E0202", "model Net() {\n    input x: float32[B, 16]\n    output y = x -> @resdual linear(16)\n}\n", "@resdual"),
    ("E0202", "model Net() {\n    input x: float32[B, 16]\n    output y = x -> linear(3(4))\n}\n", "3(4)"),
    ("E0203", "model Net() {\n    input x: float32[B, 3, 32, 32]\n    output y = x -> conv(16, 3, strid=2)\n}\n",
     "strid=2"),
    ("E0203", HEAD + "model Net() {\n    input x: float32[B, 16]\n    output y = x -> Head(m=3)\n}\n", "m=3"),
    ("E0204", "model Net() {\n    input x: float32[B, 3, 32, 32]\n    output y = x -> conv(16)\n}\n", "conv(16)"),
    ("E0205", HEAD + "model Net() {\n    input x: float32[B, 16]\n    output y = x -> Head(10, 20)\n}\n",
     "Head(10, 20)"),
    ("E0205", "model Net() {\n    input x: float32[B, 16]\n    output y = x -> linear(4, out=5)\n}\n", "out=5"),
    ("E0206", HEAD + "model Net() {\n    input x: float32[B, 16]\n    output y = x -> Head(n=\"ten\")\n}\n",
     'n="ten"'),
    ("E0206", "model Net() {\n    input x: flaot32[B, 16]\n    output y = x\n}\n", "flaot32"),
    ("E0207", "model Net() {\n    input x: float32[B, 16]\n    output y = x -> dropout(1.5)\n}\n", "dropout(1.5)"),
    ("E0207", "model Net() {\n    input x: float32[B, 16]\n    output y = x -> relu * -1\n}\n", "-1"),
    ("E0208", "block Heads(x, dim: int, heads: int) {\n    assert dim % heads == 0, \"indivisible\"\n"
     "    return x\n}\n\nmodel Net() {\n    input x: float32[B, 16]\n    output y = x -> Heads(100, heads=8)\n}\n",
     "dim % heads"),
    ("E0209", "model Net() {\n    input x: float32[B, 32]\n    a, b, c = x -> split(16, dim=-1)\n    output y = a\n}\n",
     "a, b, c"),
    ("E0210", "model Net(groups: int = 0) {\n    input x: float32[B, 16]\n    output y = x -> linear(64 // groups)\n}\n",
     "64 // groups"),
    ("E0211", "model Net() {\n    input x: float32[B, 16]\n    h = x -> fc: linear(32)\n    output y = h -> fc: linear(10)\n}\n",
     "fc: linear(10)"),
    ("E0212", "model Net() {\n    input x: float32[B, 16]\n    y = x -> linear(10)\n}\n", "Net"),
    ("E0212", "block K(x) {\n    y = x\n}\n\nmodel Net() {\n    input x: float32[B, 16]\n    output y = x -> K\n}\n",
     "K"),
    ("E0213", "model Net() {\n    input x: float32[B, 16]\n    output y = x -> linear(x.shape[0])\n}\n",
     "linear(x.shape[0])"),
    ("E0213", "model Net() {\n    input x: float32[B, 16]\n    if x.shape[0] > 4 {\n        x = x -> relu\n    }\n"
     "    output y = x\n}\n", "x.shape[0] > 4"),
    ("E0301", RESNET_NO_DOWNSAMPLE, "out + x"),
    ("E0302", "model Net() {\n    input x: float32[B, 16]\n    output y = x -> conv(32, 3)\n}\n", "conv(32, 3)"),
    ("E0303", "model Net() {\n    input a: float32[B, 64, 32, 32]\n    input b: float32[B, 32, 16, 16]\n"
     "    output y = (a, b) -> concat(dim=1)\n}\n", "concat(dim=1)"),
    ("E0303", "model Net() {\n    input a: float32[B, 16, 32]\n    input b: float32[B, 16, 32]\n    output y = a @ b\n}\n",
     "a @ b"),
    ("E0304", "model Net() {\n    input x: float32[B, 16, 32]\n    output y = x -> transpose(1, 3)\n}\n",
     "transpose(1, 3)"),
    ("E0304", "model Net() {\n    input x: float32[B, 16]\n    output y = x -> linear(x.shape[5])\n}\n", "5]"),
    ("E0305", "model Net() {\n    input x: float32[B, 3, 4, 4]\n    output y = x -> conv(16, 7)\n}\n", "conv(16, 7)"),
    ("E0305", "model Net() {\n    input x: float32[B, 4 - 4]\n    output y = x\n}\n", "4 - 4"),
    ("E0306", "model Net() {\n    input a: float32[B, 16]\n    input b: float32[B, 16]\n    output y = (a, b) -> linear(10)\n}\n",
     "linear(10)"),
    ("E0401", "model Net() {\n    input x: float32[B, 8, 32, 32]\n    output y = x -> conv(8, 3, padding=1) * 1000000\n}\n",
     "1000000"),
    ("E0401", "model Net() {\n    input x: float32[B, 2000000000000]\n    output y = x\n}\n", "2000000000000"),
    ("E0402", "block Loop(x) {\n    return x -> relu -> Loop\n}\n\nmodel Net() {\n    input x: float32[B, 16]\n"
     "    output y = x -> Loop\n}\n", ("Loop", 2)),
    ("E0501", NET + "\ntrain Fit for Net() {\n    optimiser(\"adamw\", lr=3e-4)\n}\n", "optimiser"),
    ("E0502", NET + "\ntrain Fit for Net() {\n    precision(\"bf32\")\n}\n", '"bf32"'),
    ("E0503", "model Net() {\n    input x: float32[B, 16]\n    output y = x -> fc1: linear(32)\n}\n\n"
     "train Fit for Net() {\n    checkpoint(on=\"fc3\")\n}\n", 'on="fc3"'),
    ("E0504", NET + "\ntrain Fit for Net() {\n    device(\"h100-90gb\")\n}\n", '"h100-90gb"'),
    ("E0520", NET + "\nsearch Tune for Net() {\n    strategy(\"tpe\", trials=20)\n    objective(\"params\")\n}\n",
     "search Tune"),
    ("E0521", search_plan('strategy("tpe", trials=20)', 'objective("acuracy", "max")', 'data("digits")'),
     'objective("acuracy"'),
    ("E0521", search_plan('strategy("tpe", trials=20)', 'objective("params")', 'constraint("parms < 1M")'),
     "constraint("),
    ("E0522", search_plan('strategy("tpe", trials=20)', 'objective("params")', 'constraint("memory < 8 apples")'),
     "constraint("),
    ("E0523", search_plan('strategy("tpe", trials=20)', 'objective("params")', 'storage("mongodb://localhost/s")'),
     "storage("),
    ("E0523", search_plan('strategy("tpe", trials=20)', 'objective("params")', 'storage("sqlite:///:memory:")'),
     "storage("),
    ("E0524", search_plan('objective("params", "min")'), "search Tune"),
    ("E0524", search_plan('strategy("tpe", trials=20)', 'objective("params")', 'objective("flops")',
                          'pruner("median")'), "pruner("),
    ("E0525", search_plan('strategy("tpe", trials=20)', 'objective("accuracy")', 'data("imagenet-21k")'),
     "data("),
    ("E0525", search_plan('strategy("tpe", trials=20)', 'objective("accuracy")'), 'objective("accuracy")'),
    ("E0602", "model Net() {\n    input x: float32[B, 16]\n    h = x -> linear(choice(16, 32, label=\"w\"))\n"
     "    output y = h -> linear(choice(16, 32, 64, label=\"w\"))\n}\n", "choice(16, 32, 64"),
    ("E0603", "model Net() {\n    input x: float32[B, 16]\n    output y = x -> choice(linear(16), linear(32), label=\"op\")\n}\n",
     "choice(linear"),
    ("E0604", "model Net() {\n    input x: float32[B, 16, 8, 8]\n"
     "    output y = cell(x, x, nodes=2, ops=[identity, relu], keep=3)\n}\n", "keep=3"),
    # a malformed genotype, at the `genotype=` argument
    ("E0604", "model Net() {\n    input x: float32[B, 16, 8, 8]\n"
     "    output y = cell(x, x, nodes=1, ops=[identity], keep=1, genotype=[[[identity, 5]]])\n}\n", "genotype="),
    ("E0604", "model Net() {\n    input x: float32[B, 16, 8, 8]\n"
     "    output y = cell(x, x, nodes=2, ops=[identity], keep=1, genotype=[[[identity, 0]]])\n}\n", "genotype="),
    ("E0604", "model Net() {\n    input x: float32[B, 16, 8, 8]\n"
     "    output y = cell(x, x, nodes=1, ops=[identity], keep=\"all\",\n"
     "                    genotype=[[[identity, 0]]])\n}\n", "genotype="),
    # discrete space: an op that is never decided still has to fit every edge
    ("E0604", "model Net() {\n    input x: float32[B, 16, 8, 8]\n"
     "    output y = cell(x, x, nodes=2, ops=[identity, conv(32, 1)], keep=1)\n}\n", "cell("),
    ("E0604", "model Net() {\n    input x: float32[B, 16, 8, 8]\n"
     "    a = cell(x, nodes=2, ops=[identity, relu], keep=1, group=\"g\")\n"
     "    output y = cell(x, nodes=2, ops=[identity, relu], keep=1, combine=\"last\", group=\"g\")\n}\n",
     ("cell(", 2)),
]


def _code(case) -> str:
    return case.values[0] if hasattr(case, "marks") else case[0]


def _ids(cases):
    seen: dict[str, int] = {}
    out = []
    for c in cases:
        code = _code(c)
        seen[code] = seen.get(code, 0) + 1
        out.append(code if seen[code] == 1 else f"{code}-{seen[code]}")
    return out


def _expected_position(spec, where):
    if isinstance(where, tuple) and isinstance(where[0], int):
        return where
    if isinstance(where, tuple):
        return at(spec, *where)
    return at(spec, where)


@pytest.mark.parametrize("code,spec,where", CASES, ids=_ids(CASES))
def test_code_and_position(cli, code, spec, where):
    rc, diags = cli(spec)
    assert rc == 1, f"expected {code}, got exit status {rc}"
    assert diags, "no diagnostics"
    first = diags[0]
    assert first["code"] == code, f"expected {code}, got {first['code']}: {first['message']}"
    assert first["file"] == "t.arch"
    assert (first["line"], first["column"]) == _expected_position(spec, where), first["message"]


def test_undecided_choice_when_building(cli):
    spec = "model Net() {\n    input x: float32[B, 16]\n    output y = x -> linear(choice(16, 32, label=\"width\"))\n}\n"
    rc, diags = cli(spec, cmd="build")
    assert rc == 1
    assert diags[0]["code"] == "E0601"
    assert (diags[0]["line"], diags[0]["column"]) == at(spec, "choice(")
    assert "--choose width=" in diags[0]["help"]


def test_every_code_has_a_case_here():
    # A code is covered by a case here or by its example in docs/errors.md, which
    # test_error_catalogue runs and compares, position included.
    from .test_error_catalogue import SECTIONS

    documented = {s.code for s in SECTIONS if s.expected is not None}
    covered = {_code(c) for c in CASES} | {"E0601"} | documented
    assert set(CODES) <= covered, f"codes without a test: {sorted(set(CODES) - covered)}"


def test_import_cycle_across_two_files(cli_text):
    a = 'import "b.arch"\n\n' + NET
    b = 'import "a.arch"\n\nblock Unused(x) {\n    return x\n}\n'
    rc, _, err = cli_text({"a.arch": a, "b.arch": b}, "check", "a.arch")
    assert rc == 1
    assert "error[E0102]: import cycle: a.arch -> b.arch -> a.arch" in err
    assert "b.arch:1:1" in err  # the imported file's path is shown resolved


def test_garbled_genotype_is_a_diagnostic(cli_text):
    spec = ("model Net() {\n    input x: float32[B, 8, 8, 8]\n"
            "    output y = cell(x, x, nodes=2, ops=[identity], keep=2, genotype=[[[identity, 0], [identity, 0]], 7])\n"
            "}\n")
    rc, out, err = cli_text({"g.arch": spec}, "check", "g.arch")
    assert rc == 1, out + err
    line, col = at(spec, "genotype=")
    assert "error[E0604]: node 0 of the genotype takes input 0 twice" in err
    assert f"g.arch:{line}:{col}" in err and "help:" in err


def test_missing_file_on_the_command_line(cli_text):
    rc, _, err = cli_text({}, "check", "nowhere.arch")
    assert rc == 1
    assert "error[E0101]" in err and "nowhere.arch" in err


# -- the example of LANGUAGE.md section 11 ------------------------------------------


def test_shape_mismatch_in_a_block_shows_the_call_chain(cli_text):
    rc, _, err = cli_text({"resnet.arch": RESNET_NO_DOWNSAMPLE}, "check", "resnet.arch")
    assert rc == 1
    line, col = at(RESNET_NO_DOWNSAMPLE, "out + x")
    call_line, call_col = at(RESNET_NO_DOWNSAMPLE, "Bottleneck(64)")
    lines = err.splitlines()
    assert lines[0] == "error[E0301]: shape mismatch in `+`: [B, 256, 56, 56] vs [B, 64, 56, 56]"
    assert lines[1].strip() == f"--> resnet.arch:{line}:{col}"
    assert lines[3].endswith("return relu(out + x)")
    assert lines[4].endswith(" " * (col - 1) + "^^^^^^^ left is [B, 256, 56, 56], right is [B, 64, 56, 56]")
    assert f"= note: in block Bottleneck at `layer1.0`, called from resnet.arch:{call_line}:{call_col}" in err
    assert "= help: " in err
    # The first error stops this model: one diagnostic, not one per block instance.
    assert err.count("error[") == 1
    assert err.rstrip().endswith("error: 1 error found")


def test_shape_mismatch_help_suggests_residual(cli):
    _, diags = cli(RESNET_NO_DOWNSAMPLE)
    assert "@residual" in (diags[0]["help"] or "")


# -- several errors at once ---------------------------------------------------------


def test_unknown_names_in_two_blocks_are_both_reported():
    text = ("block A(x) {\n    return x -> rleu\n}\n\nblock C(x) {\n    return x -> linear(widht)\n}\n\n"
            "model N(width: int = 4) {\n    input x: float32[B, 4]\n    output y = x -> A -> C\n}\n")
    prog = archc.parse(text, "t.arch")
    diags = prog.check_names()
    assert [d.code for d in diags] == ["E0201", "E0201"]
    assert [(d.span.line, d.span.column) for d in diags] == [at(text, "rleu"), at(text, "widht")]
    assert "rleu" in diags[0].message and "widht" in diags[1].message


def test_syntax_errors_in_two_declarations_are_both_reported():
    text = ("block A(x) {\n    return x -> linear(4\n}\n\nblock B(x) {\n    return x -> relu relu\n}\n\n"
            "model N() {\n    input x: float32[B, 4]\n    output y = x -> A -> B\n}\n")
    with pytest.raises(CompileError) as e:
        archc.parse(text, "t.arch")
    diags = e.value.diagnostics
    assert [d.code for d in diags] == ["E0001", "E0001"]
    assert [(d.span.line, d.span.column) for d in diags] == [at(text, "}"), at(text, "relu", 2)]


def test_errors_in_several_models_are_all_reported(cli):
    text = ("model A() {\n    input x: float32[B, 4]\n    output y = x -> conv(4, 3)\n}\n\n"
            "model C() {\n    input x: float32[B, 4, 8, 8]\n    output y = x -> transpose(1, 7)\n}\n")
    rc, diags = cli(text)
    assert rc == 1
    assert [(d["code"], d["line"], d["column"]) for d in diags] == [
        ("E0302", *at(text, "conv(4, 3)")), ("E0304", *at(text, "transpose(1, 7)"))]


def test_check_reports_errors_from_each_file(cli_text):
    bad1 = "model A() {\n    input x: float32[B, 4]\n    output y = x -> rleu\n}\n"
    bad2 = "model C() {\n    input x: float32[B, 4]\n    output y = x -> linear(4) linear(3)\n}\n"
    rc, out, err = cli_text({"one.arch": bad1, "two.arch": NET, "three.arch": bad2},
                            "check", "one.arch", "two.arch", "three.arch")
    assert rc == 1
    assert "error[E0201]: unknown name `rleu`" in err and " --> one.arch:3:21" in err
    assert "error[E0001]" in err and " --> three.arch:3:31" in err
    assert "error: 2 errors found" in err


def test_check_several_good_files(cli_text):
    rc, out, err = cli_text({"one.arch": NET, "two.arch": NET.replace("Net", "Other")},
                            "check", "one.arch", "two.arch")
    assert rc == 0, err
    assert "one.arch: Net" in out and "two.arch: Other" in out


# -- hints -------------------------------------------------------------------------


def test_did_you_mean_an_op(cli):
    spec = "model Net() {\n    input x: float32[B, 16]\n    output y = x -> rleu\n}\n"
    rc, diags = cli(spec)
    assert rc == 1 and diags[0]["code"] in ("E0201", "E0202")
    assert (diags[0]["line"], diags[0]["column"]) == at(spec, "rleu")
    assert "`relu`" in diags[0]["help"]


def test_did_you_mean_a_block(cli):
    spec = ("block Bottleneck(x) {\n    return x\n}\n\n"
            "model Net() {\n    input x: float32[B, 16]\n    output y = x -> Botleneck\n}\n")
    rc, diags = cli(spec)
    assert rc == 1 and diags[0]["code"] in ("E0201", "E0202")
    assert (diags[0]["line"], diags[0]["column"]) == at(spec, "Botleneck")
    assert "`Bottleneck`" in diags[0]["help"]


def test_did_you_mean_an_argument(cli):
    spec = "model Net() {\n    input x: float32[B, 3, 32, 32]\n    output y = x -> conv(16, 3, strid=2)\n}\n"
    rc, diags = cli(spec)
    assert rc == 1 and diags[0]["code"] == "E0203"
    assert diags[0]["help"] == "did you mean `stride`?"


def test_did_you_mean_a_block_parameter(cli):
    spec = ("block Head(x, classes: int) {\n    return x -> linear(classes)\n}\n\n"
            "model Net() {\n    input x: float32[B, 16]\n    output y = x -> Head(clases=3)\n}\n")
    _, diags = cli(spec)
    assert diags[0]["code"] == "E0203"
    assert (diags[0]["line"], diags[0]["column"]) == at(spec, "clases=3")
    assert diags[0]["help"] == "did you mean `classes`?"


def test_did_you_mean_a_model_for_a_plan(cli):
    _, diags = cli(NET + "\ntrain Fit for Nett() {\n    optimizer(\"adamw\")\n}\n")
    assert diags[0]["code"] == "E0104" and diags[0]["help"] == "did you mean `Net`?"


def test_pipeline_precedence_hint(cli):
    spec = "model Net() {\n    input x: float32[B, 64, 32, 32]\n    output y = x -> conv(64, 3) + x\n}\n"
    rc, diags = cli(spec)
    assert rc == 1
    d = diags[0]
    assert d["code"] == "E0004"
    assert (d["line"], d["column"]) == at(spec, "conv(64, 3) + x")
    assert "`(x -> conv(64, 3)) + x`" in d["help"]


def test_rendered_format(cli_text):
    spec = "model Net() {\n    input x: float32[B, 3, 32, 32]\n    output y = x -> conv(16, 3, strid=2)\n}\n"
    rc, out, err = cli_text({"t.arch": spec}, "check", "t.arch")
    assert rc == 1 and out == ""
    assert err == (
        "error[E0203]: `conv` has no argument `strid`\n"
        " --> t.arch:3:33\n"
        "  |\n"
        "3 |     output y = x -> conv(16, 3, strid=2)\n"
        "  |                                 ^^^^^^^\n"
        "  = help: did you mean `stride`?\n"
        "\n"
        "error: 1 error found\n")


def test_api_reports_shape_errors_with_spans():
    diags = api_diagnostics(RESNET_NO_DOWNSAMPLE)
    assert [d.code for d in diags] == ["E0301"]
    assert (diags[0].span.line, diags[0].span.column) == at(RESNET_NO_DOWNSAMPLE, "out + x")
    assert diags[0].notes and "layer1.0" in diags[0].notes[0]


# -- the command line -----------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["check", "t.arch", "--dim", "B=x"],
    ["check", "t.arch", "--dim", "B=0"],
    ["check", "t.arch", "--dim", "B"],
    ["check", "t.arch", "--set", "classes"],
    ["check", "t.arch", "--frobnicate"],
    ["check"],
    ["frobnicate", "t.arch"],
    [],
], ids=["dim-not-a-number", "dim-zero", "dim-no-value", "set-no-value", "unknown-flag", "no-files",
        "unknown-subcommand", "no-subcommand"])
def test_wrong_command_line_use_exits_2(cli_text, argv):
    rc, out, err = cli_text({"t.arch": NET}, *argv)
    assert rc == 2
    assert "error" in err
    assert "error[" not in err  # usage errors have no code


def test_ok_exits_0(cli_text):
    rc, out, err = cli_text({"t.arch": NET}, "check", "t.arch")
    assert rc == 0 and err == ""
    assert out.startswith("ok  t.arch: Net")


def test_json_diagnostics(cli):
    spec = "model Net() {\n    input x: float32[B, 16]\n    output y = x -> rleu\n}\n"
    rc, diags = cli(spec)
    assert rc == 1
    assert diags == [{"code": "E0201", "message": "unknown name `rleu`", "file": "t.arch", "line": 3, "column": 21,
                      "end_line": 3, "end_column": 25, "label": "not defined", "notes": [],
                      "help": "did you mean `relu`?"}]


# -- fixed bugs, kept as regressions ---------------------------------------------------


def test_residual_on_a_tuple(cli):
    spec = ("model Net() {\n    input a: float32[B, 4]\n    input b: float32[B, 4]\n"
            "    output y = (a, b) -> @residual concat(dim=1)\n}\n")
    rc, diags = cli(spec)
    assert rc == 1 and diags[0]["code"] == "E0306"
    assert (diags[0]["line"], diags[0]["column"]) == at(spec, "@residual")


def test_assert_on_a_symbolic_size(cli):
    spec = ("model Net() {\n    input x: float32[B, 16]\n    assert x.shape[0] == 4, \"batch of 4\"\n"
            "    output y = x\n}\n")
    _, diags = cli(spec)
    assert diags[0]["code"] == "E0213"
    assert (diags[0]["line"], diags[0]["column"]) == at(spec, "x.shape[0] == 4")


# -- known bugs (see /tmp/diag_issues.md); each starts passing when fixed ---------------


@pytest.mark.parametrize("expr", ["+".join(["1"] * 600), "-" * 500 + "1", "[" * 400 + "]" * 400],
                         ids=["long-sum", "deep-negation", "deep-list"])
def test_deep_expressions_are_diagnosed(cli, expr):
    rc, diags = cli(f"model Net() {{\n    input x: float32[B, 4]\n    output y = x -> linear(len([{expr}]))\n}}\n")
    assert rc in (0, 1)
    assert rc == 0 or diags[0]["code"] in ("E0401", "E0402")


def test_reuse_on_symbolic_width(cli):
    spec = ("model Net() {\n    input x: float32[B, 4]\n    h = x -> proj: linear(4)\n"
            "    q = h -> flatten(0)\n    output y = q -> proj\n}\n")
    rc, diags = cli(spec)
    assert rc == 1 and diags
    assert (diags[0]["line"], diags[0]["column"]) == at(spec, "proj\n")


def test_invalid_utf8_column_counts_characters(cli):
    spec = "model Net() {\n    input x: float32[B, 16]  # caf\u00e9 cr\u00e8me \xff\n    output y = x\n}\n"
    data = spec.encode("utf-8").replace(b"\xc3\xbf", b"\xff")
    rc, diags = cli(data)
    assert diags[0]["code"] == "E0006"
    assert (diags[0]["line"], diags[0]["column"]) == at(spec, "\xff")


@pytest.mark.parametrize("sep", ["\x0c", "\u2028", "\x85"], ids=["form-feed", "line-separator", "next-line"])
def test_quoted_line_with_unusual_line_breaks_in_a_comment(cli_text, sep):
    spec = f"# a{sep}b\nmodel Net() {{\n    input x: float32[B, 16]\n    output y = x -> relu $\n}}\n"
    rc, out, err = cli_text({"t.arch": spec}, "check", "t.arch")
    assert "error[E0002]: unexpected character `$`" in err
    assert "4 |     output y = x -> relu $" in err


def test_end_of_file_position_with_a_form_feed(cli):
    spec = "# a\x0cb\nmodel Net() {\n    input x: float32[B, 16]\n    output y = x -> relu\n"
    _, diags = cli(spec)
    assert diags[0]["code"] == "E0003"
    assert (diags[0]["line"], diags[0]["column"]) == (4, len("    output y = x -> relu") + 1)


def test_stale_source_cache(cli_text):
    cli_text({"t.arch": "model Other() {\n    input q: float32[B, 2]\n}\n"}, "check", "t.arch")
    rc, out, err = cli_text({"t.arch": b"# caf\xe9\n" + NET.encode()}, "check", "t.arch")
    assert "error[E0006]" in err
    assert "1 | # caf" in err


def test_recursion_note_chain_is_short(cli):
    rc, diags = cli("block Loop(x) {\n    return x -> relu -> Loop\n}\n\nmodel Net() {\n"
                    "    input x: float32[B, 16]\n    output y = x -> Loop\n}\n")
    assert diags[0]["code"] == "E0402"
    assert len(diags[0]["notes"]) <= 10
    assert sum(len(n) for n in diags[0]["notes"]) < 2000


def test_expected_tokens_inside_a_body(cli):
    rc, diags = cli("model Net() {\n    input x: float32[B, 16]\n    output y = x relu\n}\n")
    assert diags[0]["code"] == "E0001"
    assert "end of the file" not in diags[0]["label"]


@pytest.mark.parametrize("ch", ["\x00", "\r", "\x1b"], ids=["nul", "cr", "esc"])
def test_control_character_is_named(cli, ch):
    rc, diags = cli(f"model Net() {{\n    input x: float32[B, 16]\n    output y = x{ch} -> relu\n}}\n")
    assert diags[0]["code"] == "E0002"
    assert ch not in diags[0]["message"] and "``" not in diags[0]["message"]


def test_pipeline_precedence_hint_quotes_the_stage(cli):
    _, diags = cli("model Net() {\n    input x: float32[B, 16]\n    output y = x -> linear(16) + x\n}\n")
    assert diags[0]["code"] == "E0004"
    assert "conv" not in diags[0]["help"]


def test_union_argument_message(cli):
    _, diags = cli("model Net() {\n    input x: float32[B, 3, 32, 32]\n    output y = x -> conv(16, 3, padding=\"full\")\n}\n")
    assert diags[0]["code"] == "E0207"
    assert "padding.int" not in diags[0]["message"]


def test_power_overflow(cli):
    _, diags = cli("let A = 2 ** 64 ** 64\n\n" + NET.replace("linear(10)", "linear(A)"))
    assert diags[0]["code"] in ("E0210", "E0401")


def test_repeat_zero_times(cli):
    rc, diags = cli("model Net() {\n    input x: float32[B, 16]\n    output y = x -> relu * 0\n}\n")
    assert rc == 0 or diags[0]["code"] != "E0212"


def test_reuse_of_a_labelled_block(cli):
    rc, diags = cli("block A(x) {\n    return x -> linear(4)\n}\n\nmodel Net() {\n    input x: float32[B, 4]\n"
                    "    h = x -> a: A\n    output y = h -> a\n}\n")
    assert rc == 0 or diags[0]["code"] != "E0201"


def test_duplicate_label_points_at_the_label(cli):
    spec = "model Net() {\n    input x: float32[B, 16]\n    h = x -> fc: linear(32)\n    output y = h -> fc: linear(10)\n}\n"
    _, diags = cli(spec)
    assert (diags[0]["line"], diags[0]["column"]) == at(spec, "fc", 2)


def test_duplicate_output_name(cli):
    rc, diags = cli("model Net() {\n    input x: float32[B, 16]\n    output y = x\n    output y = x -> relu\n}\n")
    assert rc == 1


def test_duplicate_parameter_name(cli):
    rc, diags = cli("block K(x, n: int, n: int) {\n    return x\n}\n\n"
                    "model Net() {\n    input x: float32[B, 16]\n    output y = x -> K(1)\n}\n")
    assert rc == 1 and diags[0]["code"] == "E0103"


def test_unknown_name_in_an_unused_let(cli):
    rc, diags = cli("let WIDTH = widht\n\n" + NET)
    assert rc == 1 and diags[0]["code"] == "E0201"
