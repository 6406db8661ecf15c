"""Text -> AST, with positions on every node and syntax errors as diagnostics."""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput

from ..compiler.diagnostics import (CompileError, Diagnostic, Span, deep_recursion, register_source, show_char,
                                    source_lines)
from . import ast as A

GRAMMAR = Path(__file__).with_name("arch.lark")

# A newline is dropped after a token that needs a right operand...
_CONTINUE_AFTER = {"->", "{", ",", "=", "+", "-", "*", "/", "//", "%", "@", "**", "==", "!=",
                   "<", "<=", ">", ">=", "and", "or", "not", "if", "else", ":", "in"}
# ...and before a token that cannot start a statement.
_CONTINUE_BEFORE = {"->", "else", "}"}
_OPEN, _CLOSE = {"(", "["}, {")", "]"}
_TOP_LEVEL = re.compile(r"^(import|let|block|model|train|finetune|compress|search)\b", re.M)


class _Newlines:
    """Post-lexer: decides which newlines end a statement."""

    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        prev = None  # last significant token
        pending = None  # a newline waiting to see the next token
        for tok in stream:
            if tok.type == "_NL":
                if depth == 0 and prev is not None and not _is_punct(prev, _CONTINUE_AFTER):
                    pending = pending or tok
                continue
            if pending is not None:
                if not _is_punct(tok, _CONTINUE_BEFORE):
                    yield pending
                pending = None
            if tok.type not in ("STRING", "NUMBER"):
                if tok.value in _OPEN:
                    depth += 1
                elif tok.value in _CLOSE:
                    depth = max(0, depth - 1)
            prev = tok
            yield tok


def _is_punct(tok: Token, values) -> bool:
    return tok.type not in ("STRING", "NUMBER", "NAME") and tok.value in values or (
        tok.type != "STRING" and tok.value in ("and", "or", "not", "if", "else", "in") and tok.value in values)


@lru_cache(maxsize=1)
def _lark() -> Lark:
    return Lark(GRAMMAR.read_text(), parser="lalr", lexer="basic", postlex=_Newlines(),
                propagate_positions=True, maybe_placeholders=True, cache=True)


_SUFFIX = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12,
           "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
           "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def parse_number(text: str) -> int | float:
    m = re.fullmatch(r"([\d_.]+(?:[eE][+-]?\d+)?)([A-Za-z]*)", text)
    body, suffix = m.group(1).replace("_", ""), m.group(2)
    is_float = any(c in body for c in ".eE")
    value = float(body) if is_float else int(body)
    if suffix:
        value = value * _SUFFIX[suffix]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
    return value


def _unescape(s: str) -> str:
    body = s[1:-1]
    return re.sub(r'\\(.)', lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


class _ToAst(Transformer):
    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def _span(self, meta) -> Span | None:
        if getattr(meta, "empty", True):
            return None
        return Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tspan(self, tok: Token) -> Span:
        return Span(self.file, tok.line, tok.column, tok.end_line, tok.end_column)

    # declarations
    @v_args(meta=True)
    def start(self, meta, items):
        return A.File([d for d in items if d is not None], path=self.file, span=self._span(meta))

    @v_args(meta=True)
    def import_decl(self, meta, items):
        (target,) = items
        if isinstance(target, Token):
            return A.Import(_unescape(target), False, span=self._span(meta))
        return A.Import(target, True, span=self._span(meta))

    def dotted(self, items):
        return ".".join(str(t) for t in items)

    @v_args(meta=True)
    def let_decl(self, meta, items):
        return A.Let(str(items[0]), items[1], span=self._span(meta))

    def _block(self, kind, meta, items):
        name, params, body = items
        return A.BlockDecl(kind, str(name), params or [], body, span=self._span(meta),
                           name_span=self._tspan(name))

    @v_args(meta=True)
    def block_decl(self, meta, items):
        return self._block("block", meta, items)

    @v_args(meta=True)
    def model_decl(self, meta, items):
        return self._block("model", meta, items)

    def plan_kind(self, items):
        return str(items[0])

    @v_args(meta=True)
    def plan_decl(self, meta, items):
        kind, name, model, args, directives = items
        pos, kw = self._split_args(args)
        return A.PlanDecl(kind, str(name), str(model), pos, kw, directives, span=self._span(meta))

    def plan_body(self, items):
        return list(items)

    @v_args(meta=True)
    def directive(self, meta, items):
        name, args = items
        pos, kw = self._split_args(args)
        return A.Call(A.Name(str(name), span=self._tspan(name)), pos, kw, span=self._span(meta))

    def params(self, items):
        return list(items)

    @v_args(meta=True)
    def param(self, meta, items):
        name, typ, default = items
        return A.Param(str(name), str(typ) if typ is not None else None, default, span=self._span(meta))

    def body(self, items):
        return list(items)

    # statements
    @v_args(meta=True)
    def assign(self, meta, items):
        return A.Assign(str(items[0]), items[1], span=self._span(meta))

    @v_args(meta=True)
    def unpack(self, meta, items):
        return A.Unpack([str(t) for t in items[:-1]], items[-1], span=self._span(meta))

    @v_args(meta=True)
    def return_stmt(self, meta, items):
        return A.Return(list(items), span=self._span(meta))

    @v_args(meta=True)
    def input_stmt(self, meta, items):
        return A.Input(str(items[0]), items[1], span=self._span(meta))

    @v_args(meta=True)
    def output_stmt(self, meta, items):
        return A.Output(str(items[0]), items[1], span=self._span(meta))

    @v_args(meta=True)
    def if_stmt(self, meta, items):
        cond, then, orelse = items
        if isinstance(orelse, A.If):
            orelse = [orelse]
        return A.If(cond, then, orelse, span=self._span(meta))

    @v_args(meta=True)
    def for_stmt(self, meta, items):
        return A.For(str(items[0]), items[1], items[2], span=self._span(meta))

    @v_args(meta=True)
    def assert_stmt(self, meta, items):
        cond, msg = items
        return A.Assert(cond, _unescape(msg) if msg is not None else None, span=self._span(meta))

    @v_args(meta=True)
    def tensor_type(self, meta, items):
        dtype, *dims = items
        dims = [d for d in dims if d is not None]
        return A.TensorTypeExpr(str(dtype) if dtype is not None else None, dims, span=self._span(meta))

    # pipelines
    @v_args(meta=True)
    def pipeline(self, meta, items):
        return A.Pipeline(items[0], list(items[1:]), span=self._span(meta))

    @v_args(meta=True)
    def labelled(self, meta, items):
        return A.Labelled(str(items[0]), items[1], span=self._span(meta), label_span=self._tspan(items[0]))

    @v_args(meta=True)
    def annotated(self, meta, items):
        return A.Annotated(str(items[0]), items[1], span=self._span(meta))

    # expressions
    @v_args(meta=True)
    def cond(self, meta, items):
        return A.Cond(items[0], items[1], items[2], span=self._span(meta))

    def _bin(op):
        @v_args(meta=True)
        def rule(self, meta, items):
            return A.BinOp(op, items[0], items[-1], span=self._span(meta))
        return rule

    or_op, and_op = _bin("or"), _bin("and")
    add, sub, mul, truediv, floordiv, mod, matmul, pow = (
        _bin("+"), _bin("-"), _bin("*"), _bin("/"), _bin("//"), _bin("%"), _bin("@"), _bin("**"))

    @v_args(meta=True)
    def compare(self, meta, items):
        return A.BinOp(str(items[1]), items[0], items[2], span=self._span(meta))

    @v_args(meta=True)
    def not_op(self, meta, items):
        return A.UnaryOp("not", items[0], span=self._span(meta))

    @v_args(meta=True)
    def neg(self, meta, items):
        return A.UnaryOp("-", items[0], span=self._span(meta))

    @v_args(meta=True)
    def call(self, meta, items):
        func, args = items
        pos, kw = self._split_args(args)
        return A.Call(func, pos, kw, span=self._span(meta))

    def _split_args(self, args):
        args = args or []
        return [a for a in args if not isinstance(a, A.Kwarg)], [a for a in args if isinstance(a, A.Kwarg)]

    def args(self, items):
        return list(items)

    @v_args(meta=True)
    def kwarg(self, meta, items):
        return A.Kwarg(str(items[0]), items[1], span=self._span(meta))

    @v_args(meta=True)
    def index(self, meta, items):
        return A.Index(items[0], items[1], span=self._span(meta))

    @v_args(meta=True)
    def attr(self, meta, items):
        return A.Attr(items[0], str(items[1]), span=self._span(meta))

    @v_args(meta=True)
    def name(self, meta, items):
        return A.Name(str(items[0]), span=self._tspan(items[0]))

    @v_args(meta=True)
    def number(self, meta, items):
        tok = items[0]
        return A.Num(parse_number(str(tok)), str(tok), span=self._tspan(tok))

    @v_args(meta=True)
    def string(self, meta, items):
        return A.Str(_unescape(str(items[0])), span=self._tspan(items[0]))

    @v_args(meta=True)
    def true(self, meta, items):
        return A.Const(True, span=self._span(meta))

    @v_args(meta=True)
    def false(self, meta, items):
        return A.Const(False, span=self._span(meta))

    @v_args(meta=True)
    def none(self, meta, items):
        return A.Const(None, span=self._span(meta))

    @v_args(meta=True)
    def list(self, meta, items):
        return A.ListExpr([i for i in items if i is not None], span=self._span(meta))

    @v_args(meta=True)
    def tuple(self, meta, items):
        return A.TupleExpr([i for i in items if i is not None], span=self._span(meta))


# -- errors --------------------------------------------------------------------

_WORDS = {"_NL": "a new line", "$END": "the end of the file", "NAME": "a name", "NUMBER": "a number",
          "STRING": "a string", "COMP_OP": "a comparison"}


def _expected_words(expected) -> str:
    terms = {t.name: t for t in _lark().terminals}
    words = []
    expected = set(expected)
    if {"NAME", "NUMBER", "STRING"} <= expected:
        # Everything that can start an expression: say so in one word.
        words.append("an expression")
        expected -= {"NAME", "NUMBER", "STRING", "LPAR", "LSQB", "MINUS", "NOT", "TRUE", "FALSE", "NONE", "AT"}
    expected.discard("$END") if len(expected) > 1 else None
    first = {"->": 0, "_NL": 1, "}": 2, ")": 3, "]": 4, ",": 5}  # the likeliest fixes come first
    ranked = []
    for name in expected:
        if name in _WORDS:
            word, key = _WORDS[name], first.get(name, 9)
        elif name in terms and terms[name].pattern.type == "str":
            value = terms[name].pattern.value
            word, key = f"`{value}`", first.get(value, 9)
        else:
            continue
        ranked.append((key, word))
    words += [w for _, w in sorted(ranked)]
    words = list(dict.fromkeys(words))
    if not words:
        return ""
    if len(words) > 8:
        words = words[:8] + ["..."]
    return "expected " + (", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0])


def _syntax_diagnostic(e: UnexpectedInput, file: str, text: str) -> Diagnostic:
    line = getattr(e, "line", 1) or 1
    col = getattr(e, "column", 1) or 1
    if isinstance(e, UnexpectedCharacters):
        src_lines = source_lines(text)
        src = src_lines[line - 1] if 0 < line <= len(src_lines) else ""
        ch = src[col - 1] if 0 < col <= len(src) else ""
        span = Span(file, line, col, line, col + 1)
        hint = None
        if ch == '"':
            return Diagnostic("E0005", "unterminated string", span, label="this string has no closing quote",
                              help='close the string with `"` on the same line')
        if ch.isdigit():
            return Diagnostic("E0005", "invalid number", span, label="not a number",
                              help="numbers look like `64`, `1_000`, `3e-4`, `3.5M` or `8GiB`")
        return Diagnostic("E0002", f"unexpected character `{show_char(ch)}`", span, label="not part of the language",
                          help=hint)
    tok = getattr(e, "token", None)
    accepts = None
    ip = getattr(e, "interactive_parser", None)
    if ip is not None:
        try:  # what really fits here; LALR's merged lookaheads may list more
            accepts = ip.accepts()
        except Exception:  # noqa: BLE001 - a best effort; fall back to the lookaheads
            accepts = None
    expected = _expected_words(accepts or getattr(e, "expected", ()) or getattr(e, "accepts", ()) or ())
    if tok is None or tok.type == "$END":
        lines = source_lines(text.rstrip("\n")) or [""]
        span = Span(file, len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 2)
        return Diagnostic("E0003", "unexpected end of file", span, label=expected,
                          help="a `{`, `(` or `[` may be missing its closing bracket")
    if tok.type == "_NL":
        line, col = tok.line, tok.column
        span = Span(file, line, col, line, col + 1)
        return Diagnostic("E0001", "unexpected end of line", span, label=expected,
                          help="a statement or argument list is incomplete")
    span = Span(file, tok.line, tok.column, tok.end_line or tok.line,
                tok.end_column or tok.column + max(1, len(str(tok))))
    return Diagnostic("E0001", f"unexpected `{tok}`", span, label=expected)


def _parse_one(text: str, file: str) -> A.File:
    def where():
        lines = source_lines(text)
        longest = max(range(len(lines)), key=lambda i: len(lines[i])) if lines else 0
        return Span(file, longest + 1, 1, longest + 1, len(lines[longest]) + 1 if lines else 2)

    with deep_recursion(where, "an expression on this line"):
        tree = _lark().parse(text)
        return _ToAst(file).transform(tree)


# In text that parsed, a `"` outside comments starts a string and a `#` outside
# strings starts a comment; braces occur only around bodies.
_TRIVIA = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|[{}]')


def _with_trivia(tree: A.File, text: str) -> A.File:
    """Record comments and brace positions on the File, for the formatter."""
    line, line_start = 1, 0
    for m in _TRIVIA.finditer(text):
        if m.group()[0] == '"':
            continue
        line += text.count("\n", line_start, m.start())
        line_start = text.rfind("\n", 0, m.start()) + 1
        col = m.start() - line_start + 1
        if m.group()[0] == "#":
            own = not text[line_start:m.start()].strip()
            tree.comments.append(A.Comment(line, col, m.group().rstrip(), own))
        else:
            tree.braces.append((line, col, m.group()))
    return tree


def parse(text: str | bytes, filename: str = "<string>") -> A.File:
    """Parse .arch text into an AST; raises CompileError with every syntax error found."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            line = text[: e.start].count(b"\n") + 1
            line_start = text.rfind(b"\n", 0, e.start) + 1
            col = len(text[line_start:e.start].decode("utf-8", "replace")) + 1  # characters, not bytes
            register_source(filename, text.decode("utf-8", "replace"))
            raise CompileError(Diagnostic("E0006", "file is not valid UTF-8", Span(filename, line, col, line, col + 1),
                                          label=f"byte 0x{text[e.start]:02x} here",
                                          help="save the file as UTF-8"))
    if text.startswith("\ufeff"):
        text = text[1:]
    register_source(filename, text)
    try:
        return _with_trivia(_parse_one(text, filename), text)
    except UnexpectedInput as e:
        first = _syntax_diagnostic(e, filename, text)
    # Report one error per top-level declaration: parse each one on its own,
    # padded with newlines so positions stay right.
    diags = [first]
    starts = [m.start() for m in _TOP_LEVEL.finditer(text)]
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        chunk = "\n" * text.count("\n", 0, start) + text[start:end]
        try:
            _parse_one(chunk, filename)
        except UnexpectedInput as e:
            d = _syntax_diagnostic(e, filename, text)
            if all((d.span.line, d.span.column) != (x.span.line, x.span.column) for x in diags):
                diags.append(d)
    diags.sort(key=lambda d: (d.span.line, d.span.column))
    raise CompileError(diags)
