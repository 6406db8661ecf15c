"""Generators of hostile input for the compiler, shared by the fuzz tests (bounded,
in CI) and benchmarks/fuzz.py (a long run for use outside CI)."""
from __future__ import annotations

import random

from hypothesis import strategies as st

from archc.api import Program
from archc.compiler.diagnostics import CompileError, source_lines
from archc.compiler.resolve import load_text

KEYWORDS = ["import", "let", "block", "model", "train", "finetune", "compress", "search", "for", "in", "if",
            "else", "return", "input", "output", "assert", "and", "or", "not", "true", "false", "none"]
PUNCT = ["(", ")", "[", "]", "{", "}", ",", ":", "=", "->", "+", "-", "*", "/", "//", "%", "**", "@", "==",
         "!=", "<", "<=", ">", ">=", ".", "\n", "\n    "]
NAMES = ["x", "y", "B", "T", "conv", "linear", "relu", "bn", "Blk", "M", "choice", "cell", "shape", "range",
         "len", "float32", "int64", "stride", "label", "out", "tie", "std.layers"]
LITERALS = ["0", "1", "3", "64", "1_000", "3e-4", "0.5", "8GiB", "-1", '"s"', '"same"', "99999999999999999999"]

token_streams = st.lists(st.sampled_from(KEYWORDS + PUNCT + NAMES + LITERALS), max_size=60).map(" ".join)

OPS = ["conv(8, 3)", "conv(8, 3, padding=1)", "linear(16)", "bn", "relu", "max_pool(2)", "flatten",
       "global_avg_pool", "layernorm", "dropout(0.1)", "concat(dim=1)", "split(2, dim=1)", "reshape([B, -1])",
       "mha(4)", "embedding(10, 8)", "lstm(8)", "choice(relu, gelu)", "rleu", "linear(strid=2)", "conv(8)",
       "linear(-4)", "softmax(dim=9)", "transpose(0, 5)", "Blk(4)", "Blk", "zero", "identity * 3"]
SHAPES = ["[B, 3, 16, 16]", "[B, 16]", "[B, T, 16]", "[B, 3, 4, 8, 8]", "int64[B, T]", "[B, 0]", "[]"]


@st.composite
def wrong_specs(draw) -> str:
    """Syntactically valid specs that are often semantically wrong."""
    stages = " -> ".join(draw(st.lists(st.sampled_from(OPS), min_size=1, max_size=6)))
    shape = draw(st.sampled_from(SHAPES))
    extra = draw(st.sampled_from(["", "    z = x + y\n", "    a, b = y\n", "    assert y.shape[1] == 3, \"no\"\n",
                                  "    if x.shape[0] > 2 { y = relu(y) }\n", "    y = y -> q: relu -> q\n"]))
    block = draw(st.sampled_from(["block Blk(x, c: int = 4) { return x -> linear(c) }\n",
                                  "block Blk(x) { return x -> Blk }\n", "block Blk(x, c) { return c }\n", ""]))
    return f"{block}model M() {{\n    input x: {shape}\n    y = x -> {stages}\n{extra}    output o = y\n}}\n"


def check_text(text: str, filename: str = "fuzz.arch") -> list:
    """Compile like `archc check`; return diagnostics. Any other exception is a bug."""
    try:
        prog = Program(load_text(text, filename))
        diags = prog.check_names()
        if diags:
            return diags
        for model in prog.models:
            prog.check(model)
        return []
    except CompileError as e:
        return e.diagnostics


def assert_positions_inside(text: str, diags, filename: str = "fuzz.arch") -> None:
    lines = source_lines(text)
    for d in diags:
        assert d.code, d
        if d.span is None or d.span.file != filename:
            continue
        assert 1 <= d.span.line <= max(1, len(lines)), (d.render(), len(lines))
        assert 1 <= d.span.column <= len(lines[d.span.line - 1]) + 2, d.render()


def mutate(text: str, rng: random.Random) -> str | bytes:
    """One random mutation of a spec: delete, duplicate or swap a chunk, truncate, or insert bytes."""
    kind = rng.randrange(5)
    i, j = sorted(rng.randrange(len(text) + 1) for _ in range(2))
    if kind == 0:
        return text[:i] + text[j:]
    if kind == 1:
        return text[:j] + text[i:j] + text[j:]
    if kind == 2:
        return text[:i]
    if kind == 3:
        k = rng.randrange(len(text) + 1)
        return text[:k] + "".join(rng.choice("(){}[]->:,=*\n x1\"#") for _ in range(rng.randrange(1, 4))) + text[k:]
    raw = text.encode()
    k = rng.randrange(len(raw) + 1)
    return raw[:k] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4))) + raw[k:]
