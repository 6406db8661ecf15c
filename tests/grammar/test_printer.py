"""The printer and `archc fmt`: round trips, idempotence, comments, the command."""
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archc.cli import main
from archc.grammar import ast as A
from archc.grammar.parser import parse, parse_number
from archc.grammar.printer import WIDTH, canonical_order, print_expr, print_file

SPECS = sorted((Path(__file__).parents[2] / "archc" / "specs").glob("*.arch"))


def roundtrip(tree: A.File) -> str:
    """Print, parse back, print again: same tree, same text."""
    text = print_file(tree)
    again = parse(text, "printed.arch")
    assert again.decls == canonical_order(tree.decls), text
    assert print_file(again) == text
    return text


# -- shipped specs -----------------------------------------------------------------

@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_shipped_specs_round_trip(path):
    tree = parse(path.read_text(), str(path))
    text = roundtrip(tree)
    assert sorted(c.text for c in parse(text).comments) == sorted(c.text for c in tree.comments)


# -- layout ------------------------------------------------------------------------

def expr(text):
    (decl,) = parse(f"let v = {text}").decls
    return decl.value


def value(text):
    (decl,) = parse(f"model M() {{\n    y = {text}\n}}").decls
    return decl.body[0].value


@pytest.mark.parametrize("text,printed", [
    ("(a + b) * c", "(a + b) * c"),
    ("a + (b * c)", "a + b * c"),
    ("a - (b - c)", "a - (b - c)"),
    ("(a - b) - c", "a - b - c"),
    ("(a ** b) ** c", "(a ** b) ** c"),
    ("a ** (b ** c)", "a ** b ** c"),
    ("(-a) ** b", "(-a) ** b"),
    ("-(a ** b)", "-a ** b"),
    ("a ** -b", "a ** -b"),
    ("not (a and b) or c", "not (a and b) or c"),
    ("(a < b) == (c < d)", "(a < b) == (c < d)"),
    ("(a if b else c) if d else (e if f else g)", "(a if b else c) if d else e if f else g"),
    ("(a + b).shape[-1]", "(a + b).shape[-1]"),
    ("f(x,y ,k = 1,)", "f(x, y, k=1)"),
    ("[1_000,3.5M, 8GiB,3e-4]", "[1_000, 3.5M, 8GiB, 3e-4]"),
    ('"a\\"b\\\\c\\nd\\te"', '"a\\"b\\\\c\\nd\\te"'),
    ("(a,)", "(a,)"),
    ("[true, false, none]", "[true, false, none]"),
])
def test_expressions(text, printed):
    assert print_expr(expr(text)) == printed
    assert expr(printed) == expr(text)


@pytest.mark.parametrize("text,printed", [
    ("x->conv(64,3)->bn", "x -> conv(64, 3) -> bn"),
    ("(x -> conv(64, 3)) + x", "(x -> conv(64, 3)) + x"),
    ("x -> (a -> b)", "x -> (a -> b)"),
    ("x -> l: [B(1) * 3, c] -> @residual a: conv(3)", "x -> l: [B(1) * 3, c] -> @residual a: conv(3)"),
    ("x -> (a if c else b)", "x -> a if c else b"),
    ("(a, b) -> concat(dim=1)", "(a, b) -> concat(dim=1)"),
])
def test_pipelines(text, printed):
    assert print_expr(value(text)) == printed
    assert value(printed) == value(text)


def test_long_pipelines_break_before_every_arrow_aligned_under_the_first():
    text = ("model M() {\n    x = x -> conv1: conv(64, 7, stride=2, padding=3, bias=false) -> bn1: bn -> relu"
            " -> max_pool(3, stride=2, padding=1)\n}\n")
    assert print_file(parse(text)) == (
        "model M() {\n"
        "    x = x -> conv1: conv(64, 7, stride=2, padding=3, bias=false)\n"
        "          -> bn1: bn\n"
        "          -> relu\n"
        "          -> max_pool(3, stride=2, padding=1)\n"
        "}\n")


def test_long_brackets_fill_lines_aligned_after_the_bracket():
    text = "let CFG = [" + ", ".join(["512"] * 30) + "]\n"
    out = print_file(parse(text))
    lines = out.splitlines()
    assert len(lines) > 1 and all(len(line) <= WIDTH for line in lines)
    assert all(line.startswith(" " * len("let CFG = [") + "512") for line in lines[1:])
    seq = "model M() {\n    y = x -> op: [" + ", ".join(["conv(c, 3, padding=1)"] * 5) + "]\n}\n"
    lines = print_file(parse(seq)).splitlines()  # a sequence of layers: one per line
    assert lines[1:6] == ["    y = x -> op: [conv(c, 3, padding=1),"] + [
        " " * 18 + "conv(c, 3, padding=1)" + ("]" if i == 3 else ",") for i in range(4)]


def test_statements_and_declarations():
    text = '''import std.layers
import "common.arch"
let W = 64
block B(x, out: int, k: int = 3, act: op = relu, t) {
    a, b = x -> split([1, 2], dim=1)
    if k > 3 {
        y = a
    } else if k > 1 {
        y = b
    } else {
        y = a + b
    }
    for i in range(2) {}
    assert k % 2 == 1, "odd \\"k\\""
    return y, a
}
model M() {
    input x: float32[B, 3, 224, 224]
    input t: [B, T * 2]
    output y = B(x, 3)
}
train P for M(layers=24) {
    dims(B=8, T=1024)
    optimizer("adamw", lr=3e-4)
}
'''
    out = roundtrip(parse(text))
    assert out == '''import std.layers
import "common.arch"

let W = 64


block B(x, out: int, k: int = 3, act: op = relu, t) {
    a, b = x -> split([1, 2], dim=1)
    if k > 3 {
        y = a
    } else if k > 1 {
        y = b
    } else {
        y = a + b
    }
    for i in range(2) {}
    assert k % 2 == 1, "odd \\"k\\""
    return y, a
}


model M() {
    input x: float32[B, 3, 224, 224]
    input t: [B, T * 2]
    output y = B(x, 3)
}


train P for M(layers=24) {
    dims(B=8, T=1024)
    optimizer("adamw", lr=3e-4)
}
'''


def test_imports_and_lets_move_first_keeping_their_order():
    text = 'block A(x) {\n    return x\n}\nlet Z = 1\nimport "b.arch"\nlet Y = 2\nimport "a.arch"\n'
    tree = parse(text)
    out = roundtrip(tree)
    assert out.startswith('import "b.arch"\nimport "a.arch"\n\nlet Z = 1\nlet Y = 2\n\n\nblock A(x) {')


def test_else_block_holding_only_an_if_prints_as_else_if():
    text = ("model M() {\n    if a {\n        x = 1\n    } else {\n        if b {\n            x = 2\n        }\n"
            "    }\n}\n")
    out = roundtrip(parse(text))
    assert "    } else if b {\n" in out


# -- comments ----------------------------------------------------------------------

COMMENTED = '''# The file's header.
# Second line.

import "common.arch"  # shared layers
# Widths.
let W = 64   # base width


# A block.
block B(x,  # the input
        n: int = 3) {  # opens the body
    # before y

    y = x -> conv(n, 3)   # the conv
          # between stages
          -> relu  # the activation
    if n > 2 {  # wide
        # inside then
        y = y
        # end of then
    }
    else {  # narrow
        y = y  # same
    }  # after the if
    return y
    # end of the body
}  # after B
# 잔차 연결: the end of the file
'''


def test_comments_survive_formatting():
    tree = parse(COMMENTED)
    out = roundtrip(tree)
    assert sorted(c.text for c in parse(out).comments) == sorted(c.text for c in tree.comments)
    assert out == '''# The file's header.
# Second line.

import "common.arch"  # shared layers

# Widths.
let W = 64  # base width


# A block.
# the input
block B(x, n: int = 3) {  # opens the body
    # before y

    # the conv
    # between stages
    y = x -> conv(n, 3) -> relu  # the activation
    if n > 2 {  # wide
        # inside then
        y = y
        # end of then
    } else {  # narrow
        y = y  # same
    }  # after the if
    return y
    # end of the body
}  # after B
# 잔차 연결: the end of the file
'''


def test_comments_of_a_file_without_declarations():
    assert print_file(parse("\n\n# one\n\n\n# two\n\n")) == "# one\n\n# two\n"
    assert print_file(parse("")) == ""


def test_comment_markers_inside_strings_are_not_comments():
    tree = parse('let S = "# not {a} comment"  # a comment\n')
    assert [c.text for c in tree.comments] == ["# a comment"]
    assert roundtrip(tree) == 'let S = "# not {a} comment"  # a comment\n'


# -- random trees ------------------------------------------------------------------
# Drawn with explicit depths (nested `st.recursive` is slow to draw from).

KEYWORDS = {"import", "let", "block", "model", "train", "finetune", "compress", "search", "for", "in", "if",
            "else", "return", "input", "output", "assert", "and", "or", "not", "true", "false", "none"}
OPS = ["+", "-", "*", "/", "//", "%", "@", "**", "and", "or", "==", "!=", "<", "<=", ">", ">="]
NUMBER_TEXTS = ["1_000", "3.5M", "8GiB", "3e-4", "0.1", ".5", "512MiB", "80GB", "1.2B", "2K", "064", "1e10"]
# Identifiers, some of them close to keywords (`iff`, `nota`, `inputs`): none is one.
NAMES = ["x", "y", "a", "b1", "_t", "conv", "relu", "B", "T", "layer1", "Foo", "e5", "iff", "nota", "inputs",
         "models", "format", "std", "float32", "residual"]
assert not KEYWORDS & set(NAMES)

names = st.sampled_from(NAMES)
strings = st.text(alphabet=st.sampled_from(list('ab Z09#{}"\\\n\t잔_-:')), max_size=8)
numbers = st.one_of(
    st.integers(0, 10**12).map(A.Num),
    st.floats(0, 1e20, allow_nan=False, allow_infinity=False).map(A.Num),
    st.sampled_from(NUMBER_TEXTS).map(lambda t: A.Num(parse_number(t), t)),
)
leaves = st.one_of(names.map(A.Name), numbers, strings.map(A.Str), st.sampled_from([True, False, None]).map(A.Const))
EXPR_KINDS = ["leaf", "binop", "unary", "cond", "call", "index", "attr", "list", "tuple", "pipeline"]


@st.composite
def exprs(draw, depth=3):
    kind = "leaf" if depth == 0 else draw(st.sampled_from(EXPR_KINDS + ["leaf"] * 5))
    sub = lambda: draw(exprs(depth - 1))  # noqa: E731
    some = lambda lo, hi: [sub() for _ in range(draw(st.integers(lo, hi)))]  # noqa: E731
    if kind == "leaf":
        return draw(leaves)
    if kind == "binop":
        return A.BinOp(draw(st.sampled_from(OPS)), sub(), sub())
    if kind == "unary":
        return A.UnaryOp(draw(st.sampled_from(["-", "not"])), sub())
    if kind == "cond":
        return A.Cond(sub(), sub(), sub())
    if kind == "call":
        return A.Call(sub(), some(0, 3), draw(kwargs(depth - 1)))
    if kind == "index":
        return A.Index(sub(), sub())
    if kind == "attr":
        return A.Attr(sub(), draw(names))
    if kind == "list":  # a sequence's items may be labelled
        return A.ListExpr([A.Labelled(draw(names), draw(stages(depth - 1))) if draw(st.booleans()) else sub()
                           for _ in range(draw(st.integers(0, 4)))])
    if kind == "tuple":
        return A.TupleExpr(some(1, 3))
    return A.Pipeline(sub(), [draw(stages(depth - 1)) for _ in range(draw(st.integers(1, 4)))])


@st.composite
def stages(draw, depth):
    """A pipeline stage: an expression, maybe labelled and annotated."""
    stage = draw(exprs(depth))
    for wrap in draw(st.lists(st.sampled_from(["label", "annotation"]), max_size=2)):
        stage = A.Labelled(draw(names), stage) if wrap == "label" else A.Annotated(draw(names), stage)
    return stage


def kwargs(depth=2):
    return st.lists(st.builds(A.Kwarg, names, exprs(depth)), max_size=2)


@st.composite
def stmts(draw, depth=2):
    kinds = ["assign", "unpack", "return", "input", "output", "assert"] + (["if", "for"] if depth else [])
    kind = draw(st.sampled_from(kinds))
    e = lambda: draw(exprs(2))  # noqa: E731
    body = lambda: draw(st.lists(stmts(depth - 1), max_size=3))  # noqa: E731
    if kind == "assign":
        return A.Assign(draw(names), e())
    if kind == "unpack":
        return A.Unpack(draw(st.lists(names, min_size=2, max_size=3)), e())
    if kind == "return":
        return A.Return([e() for _ in range(draw(st.integers(1, 3)))])
    if kind == "input":
        return A.Input(draw(names), A.TensorTypeExpr(draw(st.none() | names), draw(st.lists(exprs(1), max_size=4))))
    if kind == "output":
        return A.Output(draw(names), e())
    if kind == "assert":
        return A.Assert(e(), draw(st.none() | strings))
    if kind == "for":
        return A.For(draw(names), e(), body())
    orelse = draw(st.sampled_from(["none", "body", "elif"]))
    if orelse == "elif":  # `else if`: the else body is one `if`
        orelse = [A.If(e(), body(), draw(st.none() | st.lists(stmts(depth - 1), max_size=2)))]
    else:
        orelse = body() if orelse == "body" else None
    return A.If(e(), body(), orelse)


params = st.builds(A.Param, names, st.none() | names, st.none() | exprs(2))
blocks = st.builds(A.BlockDecl, st.sampled_from(["block", "model"]), names, st.lists(params, max_size=4),
                   st.lists(stmts(), max_size=4))
directives = st.builds(A.Call, names.map(A.Name), st.lists(exprs(2), max_size=2), kwargs())
plans = st.builds(A.PlanDecl, st.sampled_from(["train", "finetune", "compress", "search"]), names, names,
                  st.lists(exprs(2), max_size=2), kwargs(), st.lists(directives, max_size=3))
imports = st.builds(A.Import, strings, st.just(False)) | st.builds(
    A.Import, st.lists(names, min_size=1, max_size=3).map(".".join), st.just(True))
lets = st.builds(A.Let, names, exprs(3))
decls = st.lists(st.one_of(imports, lets, blocks, plans), max_size=5)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.data_too_large])


@pytest.mark.slow
@SETTINGS
@given(decls)
def test_random_files_round_trip_and_print_idempotently(ds):
    roundtrip(A.File(ds))


@pytest.mark.slow
@SETTINGS
@given(exprs(4))
def test_random_expressions_round_trip(e):
    text = print_expr(e)
    assert value(text) == e, text
    assert print_expr(value(text)) == text


@pytest.mark.slow
@SETTINGS
@given(decls, st.lists(st.tuples(st.integers(0, 10**6), st.booleans(), st.integers(0, 10**6)), max_size=8))
def test_comments_anywhere_survive_and_print_idempotently(ds, inserts):
    """Comments put on random lines of a printed file, on their own line or at the end of one."""
    lines = print_file(A.File(ds)).splitlines()
    for n, (where, own, tag) in enumerate(inserts):
        i = where % (len(lines) + 1)
        if own or i == len(lines) or not lines[i].strip():
            lines.insert(i, f"# c{n} {tag}")
        else:
            lines[i] += f"  # t{n}"
    text = "\n".join(lines) + "\n"
    tree = parse(text)
    assert tree.decls == canonical_order(ds)
    out = roundtrip(tree)
    assert sorted(c.text for c in parse(out).comments) == sorted(c.text for c in tree.comments)


# -- archc fmt ---------------------------------------------------------------------

UNFORMATTED = "model M( ) {\n  input x : float32[B,3]\n  output y = x->relu   # act\n}\n"


def test_fmt_check_passes_on_a_formatted_file(tmp_path, capsys):
    f = tmp_path / "ok.arch"
    f.write_text(print_file(parse(UNFORMATTED)))
    assert main(["fmt", "--check", str(f)]) == 0
    assert capsys.readouterr().out == ""


def test_fmt_check_fails_on_an_unformatted_file_without_changing_it(tmp_path, capsys):
    f = tmp_path / "bad.arch"
    f.write_text(UNFORMATTED)
    assert main(["fmt", "--check", str(f)]) == 1
    assert str(f) in capsys.readouterr().out
    assert f.read_text() == UNFORMATTED


def test_fmt_rewrites_in_place(tmp_path, capsys):
    f = tmp_path / "m.arch"
    f.write_text(UNFORMATTED)
    f.chmod(0o640)
    assert main(["fmt", str(f)]) == 0
    assert f.read_text() == "model M() {\n    input x: float32[B, 3]\n    output y = x -> relu  # act\n}\n"
    assert f.stat().st_mode & 0o777 == 0o640
    assert main(["fmt", "--check", str(f)]) == 0


def test_fmt_diff_prints_a_unified_diff_and_changes_nothing(tmp_path, capsys):
    f = tmp_path / "m.arch"
    f.write_text(UNFORMATTED)
    assert main(["fmt", "--diff", str(f)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"--- {f}\n+++ {f} (formatted)\n")
    assert "-  output y = x->relu   # act\n" in out and "+    output y = x -> relu  # act\n" in out
    assert f.read_text() == UNFORMATTED


def test_fmt_leaves_a_file_with_a_syntax_error_byte_identical(tmp_path, capsys):
    f = tmp_path / "broken.arch"
    data = b"model M( ) {\n  y = = 2   # oops\n}\n"
    f.write_bytes(data)
    assert main(["fmt", str(f)]) == 1
    assert "E0001" in capsys.readouterr().err
    assert f.read_bytes() == data
    assert main(["fmt", "--check", str(f)]) == 1
    assert f.read_bytes() == data


def test_fmt_formats_the_good_files_and_reports_the_bad_ones(tmp_path, capsys):
    good, bad = tmp_path / "good.arch", tmp_path / "bad.arch"
    good.write_text(UNFORMATTED)
    bad.write_bytes(b"model M() {\n  y = \xff\n}\n")
    assert main(["fmt", str(bad), str(good)]) == 1
    assert "E0006" in capsys.readouterr().err
    assert bad.read_bytes() == b"model M() {\n  y = \xff\n}\n"
    assert good.read_text() == print_file(parse(UNFORMATTED))
