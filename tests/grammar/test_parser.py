"""The parser: structure, positions, newlines and syntax errors."""
import pytest

from archc.compiler.diagnostics import CompileError
from archc.grammar import ast as A
from archc.grammar.parser import parse, parse_number


def body(text):
    (decl,) = parse("model M() {\n" + text + "\n}", "t.arch").decls
    return decl.body


@pytest.mark.parametrize("text,value", [("64", 64), ("1_000", 1000), ("3e-4", 3e-4), ("0.1", 0.1),
                                        ("3.5M", 3_500_000), ("1.2B", 1_200_000_000), ("8GiB", 8 * 2**30),
                                        ("512MiB", 512 * 2**20), ("80GB", 80 * 10**9), ("2K", 2000)])
def test_numbers_and_size_suffixes(text, value):
    assert parse_number(text) == value


def test_pipelines_continue_on_lines_starting_with_arrow():
    (stmt,) = body("x = a -> conv(64, 3)\n      -> bn\n      -> relu")
    assert isinstance(stmt.value, A.Pipeline) and len(stmt.value.stages) == 3


def test_arrow_binds_loosest():
    (stmt,) = body("y = x -> conv(64, 3) + x")
    stage = stmt.value.stages[0]
    assert isinstance(stage, A.BinOp) and stage.op == "+"
    (stmt,) = body("y = (x -> conv(64, 3)) + x")
    assert isinstance(stmt.value, A.BinOp) and isinstance(stmt.value.left, A.Pipeline)


def test_labels_annotations_sequences_and_repetition():
    (stmt,) = body("y = x -> layer1: [Blk(64) * 3] -> @residual conv(3, 3)")
    lab, ann = stmt.value.stages
    assert isinstance(lab, A.Labelled) and lab.label == "layer1" and isinstance(lab.stage, A.ListExpr)
    assert isinstance(lab.stage.items[0], A.BinOp) and lab.stage.items[0].op == "*"
    assert isinstance(ann, A.Annotated) and ann.annotation == "residual"


def test_statements():
    stmts = body('a, b = (x, y)\nif c { z = 1 }\nelse if d { z = 2 } else { z = 3 }\n'
                 'for i in range(3) { x = x }\nassert n > 0, "positive"\nreturn x')
    assert [type(s).__name__ for s in stmts] == ["Unpack", "If", "For", "Assert", "Return"]
    assert isinstance(stmts[1].orelse[0], A.If)
    assert stmts[3].message == "positive"


def test_every_node_has_a_position():
    (stmt,) = body("    y = x -> conv(64, 3)")
    conv = stmt.value.stages[0]
    assert (conv.span.line, conv.span.column) == (2, 14)
    assert (conv.span.end_line, conv.span.end_column) == (2, 25)


def test_comments_in_any_script_and_blank_lines():
    (stmt,) = body("# 잔차 연결 (residual)\n\n   y = x   # 주석\n")
    assert isinstance(stmt, A.Assign)


def test_plans_parse_as_directive_calls():
    (plan,) = parse('train P for GPT(layers=24) {\n  dims(B=8, T=1024)\n  precision("bf16-mixed")\n}').decls
    assert plan.kind == "train" and plan.model == "GPT" and [d.func.id for d in plan.directives] == [
        "dims", "precision"]


def test_syntax_errors_say_what_was_expected():
    with pytest.raises(CompileError) as e:
        parse("model M() {\n    y = x -> \n}", "t.arch")
    d = e.value.diagnostics[0]
    assert d.code == "E0001" and d.span.line == 3 and "expected an expression" in d.render()


def test_one_error_per_declaration_is_reported():
    text = "block A(x) {\n  return x -> )\n}\nblock B(x) {\n  y = = 2\n}\n"
    with pytest.raises(CompileError) as e:
        parse(text, "t.arch")
    assert [(d.code, d.span.line) for d in e.value.diagnostics] == [("E0001", 2), ("E0001", 5)]


def test_invalid_utf8_is_a_diagnostic():
    with pytest.raises(CompileError) as e:
        parse(b"model M() {\n  y = \xff\n}", "t.arch")
    d = e.value.diagnostics[0]
    assert d.code == "E0006" and (d.span.line, d.span.column) == (2, 7)
