"""Source spans, diagnostics with codes, and the caret renderer.

Every error a user can cause is a `Diagnostic` with a code from `CODES`; the
compiler raises `CompileError` carrying one or more of them, and the CLI and
API render them, never a Python traceback.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Span:
    """A half-open region of a source file; lines and columns count from 1."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


# The closed set of error codes. docs/errors.md documents each one with an
# example that tests/compiler/test_error_catalogue.py runs.
CODES: dict[str, str] = {
    # syntax
    "E0001": "syntax error: unexpected token",
    "E0002": "syntax error: unexpected character",
    "E0003": "syntax error: unexpected end of file",
    "E0004": "ambiguous pipeline: `->` binds loosest",
    "E0005": "invalid literal",
    "E0006": "file is not valid UTF-8",
    # names and declarations
    "E0101": "import not found",
    "E0102": "import cycle",
    "E0103": "duplicate definition",
    "E0104": "model not found",
    "E0105": "import outside the allowed folders",
    "E0201": "unknown name",
    "E0202": "unknown op or block",
    "E0203": "unknown argument",
    "E0204": "missing argument",
    "E0205": "too many arguments",
    "E0206": "wrong kind of value",
    "E0207": "invalid argument value",
    "E0208": "assertion failed",
    "E0209": "wrong number of values to unpack",
    "E0210": "arithmetic error",
    "E0211": "label already used",
    "E0212": "model input or output error",
    "E0213": "value must be known at compile time",
    # shapes
    "E0301": "shape mismatch",
    "E0302": "wrong tensor rank",
    "E0303": "incompatible sizes",
    "E0304": "dimension out of range",
    "E0305": "empty or negative dimension",
    "E0306": "wrong number of tensor inputs",
    # search spaces
    "E0601": "undecided or unknown choice",
    "E0602": "inconsistent choice",
    "E0603": "candidates produce different shapes",
    "E0604": "invalid cell",
    # plans
    "E0501": "unknown directive",
    "E0502": "invalid directive argument",
    "E0503": "selector matches nothing",
    "E0504": "unknown device",
    # search plans (archc/search)
    "E0520": "not a search space",
    "E0521": "unknown objective or metric",
    "E0522": "invalid constraint",
    "E0523": "storage cannot be opened",
    "E0524": "search setting not supported",
    "E0525": "data cannot be loaded",
    # fine-tuning plans (passes/insert_lora.py)
    "E0701": "op cannot take an adapter",
    "E0702": "adapter rank too large",
    "E0703": "adapter name already used",
    "E0704": "no such adapter",
    "E0705": "merging would change a tied weight",
    # compression plans (archc/compress)
    "E0801": "pruning amount out of range",
    "E0802": "no quantized kernel",
    "E0803": "teacher and student outputs differ",
    "E0804": "plan data missing",
    "E0805": "invalid compression setting",
    # objectives, self-supervision, ensembles (ops/objectives.py, ops/stochastic.py, archc train)
    "E1101": "loss input of the wrong rank",
    "E1102": "loss inputs do not agree",
    "E1103": "EMA target differs from its source",
    "E1104": "ensemble members differ",
    "E1105": "model input the data cannot supply",
    # limits and command line
    "E0401": "too large",
    "E0402": "recursion too deep",
}


@dataclass
class Diagnostic:
    code: str
    message: str
    span: Span | None = None
    label: str = ""  # printed after the carets
    notes: list[str] = field(default_factory=list)
    help: str | None = None

    def __post_init__(self) -> None:
        assert self.code in CODES, f"undocumented diagnostic code {self.code}"

    def render(self, sources: dict[str, str] | None = None) -> str:
        """Render as `error[CODE]: message` with the source line and a caret."""
        out = [f"error[{self.code}]: {self.message}"]
        if self.span is not None:
            sp = self.span
            width = len(str(sp.end_line if sp.end_line else sp.line))
            out.append(f"{' ' * width}--> {sp}")
            text = _source_text(sp.file, sources)
            lines = source_lines(text) if text is not None else []
            if 1 <= sp.line <= len(lines):
                src = lines[sp.line - 1].expandtabs(1)
                gutter = f"{sp.line:>{width}} | "
                out.append(f"{' ' * width} |")
                out.append(gutter + src)
                end = sp.end_column if sp.end_line == sp.line else len(src) + 1
                n = max(1, end - sp.column)
                caret = " " * (sp.column - 1) + "^" * n
                out.append(f"{' ' * width} | {caret}" + (f" {self.label}" if self.label else ""))
            pad = " " * width
        else:
            pad = ""
        for note in self.notes:
            out.append(f"{pad} = note: {note}")
        if self.help:
            out.append(f"{pad} = help: {self.help}")
        return "\n".join(out)

    def to_json(self) -> dict:
        sp = self.span
        return {
            "code": self.code,
            "message": self.message,
            "file": sp.file if sp else None,
            "line": sp.line if sp else None,
            "column": sp.column if sp else None,
            "end_line": sp.end_line if sp else None,
            "end_column": sp.end_column if sp else None,
            "label": self.label,
            "notes": list(self.notes),
            "help": self.help,
        }


def source_lines(text: str) -> list[str]:
    """Lines as the lexer counts them: split on "\n" only (a form feed or U+2028 is not a line break)."""
    return [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]


def show_char(ch: str) -> str:
    """A character for a message: control and invisible characters by code point."""
    return ch if ch.isprintable() and not ch.isspace() else f"U+{ord(ch):04X}"


_SOURCE_CACHE: dict[str, str] = {}


def register_source(file: str, text: str) -> None:
    """Remember a file's text so diagnostics can quote it (parse() calls this)."""
    _SOURCE_CACHE[file] = text


def _source_text(file: str, sources: dict[str, str] | None) -> str | None:
    if sources and file in sources:
        return sources[file]
    if file in _SOURCE_CACHE:
        return _SOURCE_CACHE[file]
    try:
        return Path(file).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


class CompileError(Exception):
    """One or more diagnostics; what every user-caused failure raises."""

    def __init__(self, diagnostics: list[Diagnostic] | Diagnostic):
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics = list(diagnostics)
        super().__init__("\n\n".join(d.render() for d in self.diagnostics))


def error(code: str, message: str, span: Span | None = None, **kw) -> CompileError:
    """Build a CompileError holding a single diagnostic."""
    return CompileError(Diagnostic(code, message, span, **kw))


def did_you_mean(name: str, candidates) -> str | None:
    """A `help` line suggesting the closest candidate names, if any are close."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=3, cutoff=0.6)
    if not close:
        return None
    return "did you mean " + " or ".join(f"`{c}`" for c in close) + "?"


RECURSION_LIMIT = 20_000  # Python frames; expressions nest far less deeply in any real spec


class deep_recursion:
    """Raise Python's recursion limit for the compiler's recursive walks, and turn
    a RecursionError into error E0402 at `span_of()` (the place being worked on)."""

    def __init__(self, span_of=lambda: None, what: str = "this expression"):
        self.span_of, self.what = span_of, what

    def __enter__(self):
        import sys

        self.old = sys.getrecursionlimit()
        sys.setrecursionlimit(max(self.old, RECURSION_LIMIT))
        return self

    def __exit__(self, kind, exc, tb):
        import sys

        sys.setrecursionlimit(self.old)
        if kind is RecursionError:
            raise CompileError(Diagnostic("E0402", f"{self.what} nests too deeply to compile", self.span_of(),
                                          help="split it into named parts (`let` or assignments)")) from None
        return False

