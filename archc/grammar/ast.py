"""AST node classes. Every node carries its Span; spans never take part in
equality, so `parse(print(ast)) == ast` compares structure only."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..compiler.diagnostics import Span


@dataclass(eq=True)
class Node:
    span: Span | None = field(default=None, compare=False, repr=False, kw_only=True)


# -- expressions -------------------------------------------------------------

@dataclass
class Name(Node):
    id: str


@dataclass
class Num(Node):
    value: int | float
    text: str = field(default="", compare=False)  # as written, for the printer


@dataclass
class Str(Node):
    value: str


@dataclass
class Const(Node):
    value: Any  # True, False or None


@dataclass
class ListExpr(Node):
    items: list


@dataclass
class TupleExpr(Node):
    items: list


@dataclass
class Kwarg(Node):
    name: str
    value: Any


@dataclass
class Call(Node):
    func: Any
    args: list
    kwargs: list  # list[Kwarg], in written order


@dataclass
class Index(Node):
    obj: Any
    index: Any


@dataclass
class Attr(Node):
    obj: Any
    name: str


@dataclass
class BinOp(Node):
    op: str  # + - * / // % @ ** and or == != < <= > >=
    left: Any
    right: Any


@dataclass
class UnaryOp(Node):
    op: str  # - not
    operand: Any


@dataclass
class Cond(Node):
    then: Any
    cond: Any
    orelse: Any


@dataclass
class Pipeline(Node):
    head: Any
    stages: list


@dataclass
class Labelled(Node):
    label: str
    stage: Any
    label_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass
class Annotated(Node):
    annotation: str
    stage: Any


@dataclass
class TensorTypeExpr(Node):
    dtype: str | None
    dims: list


# -- statements --------------------------------------------------------------

@dataclass
class Assign(Node):
    name: str
    value: Any


@dataclass
class Unpack(Node):
    names: list[str]
    value: Any


@dataclass
class Return(Node):
    values: list


@dataclass
class Input(Node):
    name: str
    type: TensorTypeExpr


@dataclass
class Output(Node):
    name: str
    value: Any


@dataclass
class If(Node):
    cond: Any
    then: list
    orelse: list | None


@dataclass
class For(Node):
    var: str
    iter: Any
    body: list


@dataclass
class Assert(Node):
    cond: Any
    message: str | None


# -- declarations ------------------------------------------------------------

@dataclass
class Import(Node):
    target: str
    is_std: bool  # `import std.resnet` rather than `import "file.arch"`


@dataclass
class Let(Node):
    name: str
    value: Any


@dataclass
class Param(Node):
    name: str
    type: str | None
    default: Any


@dataclass
class BlockDecl(Node):
    kind: str  # "block" | "model"
    name: str
    params: list[Param]
    body: list
    name_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass
class PlanDecl(Node):
    kind: str  # "train" | "finetune" | "compress" | "search"
    name: str
    model: str
    args: list
    kwargs: list
    directives: list[Call]


@dataclass
class Comment:
    """A `#` comment as written (not a Node: it takes no part in the tree)."""
    line: int
    column: int
    text: str  # from `#` to the end of the line, trailing whitespace removed
    own_line: bool  # nothing but whitespace before it on its line


@dataclass
class File(Node):
    decls: list
    path: str = field(default="<string>", compare=False)
    # For the formatter (archc/grammar/printer.py) only; never compared:
    comments: list[Comment] = field(default_factory=list, compare=False, repr=False)
    # (line, column, "{" or "}") of every brace:
    braces: list[tuple[int, int, str]] = field(default_factory=list, compare=False, repr=False)
