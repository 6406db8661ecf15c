"""AST -> .arch text, in archc's one canonical layout (what `archc fmt` writes).

Printing keeps the meaning (`parse(print_file(f)).decls == canonical_order(f.decls)`)
and the comments `parse` recorded on the File; it is idempotent. The layout:

- 4-space indentation; one statement per line; `{` ends the header line, `}`
  stands on its own line, `} else {` and `} else if c {` join them (an `else`
  body holding only an `if` is written `else if`); an empty body is `{}`.
- Declarations in a fixed order: imports, then `let`s, then blocks, models and
  plans, each group in written order. Two blank lines around each block, model
  or plan; one between the imports and the `let`s. Inside the import group,
  the `let` group and a body, one blank line is kept where the source had one
  or more; none is added.
- One space around binary operators, `->`, `=` of statements and of parameter
  defaults (`k: int = 3`); `: ` after a label or parameter name; none inside
  brackets; `, ` after commas; `name=value` for keyword arguments; parentheses
  only where precedence requires them.
- At most 88 columns where a break is possible: a pipeline that does not fit
  breaks before every `->`, each continuation line starting with `->` aligned
  under the first `->`; if its head is not a plain value (a name, number or
  string) and does not fit on the first line together with the first stage,
  the first `->` moves to the next line too and the `->` lines are indented 4
  columns past the start of the head. An operation `a + b` that does not fit
  breaks after its operator, and a conditional `a if c else b` before `else`,
  the next line aligned under `a`. A bracket that still does not fit breaks after commas,
  its lines aligned after the opening bracket: arguments, parameters and lists
  of plain values (names, numbers, strings) fill each line; a list or tuple
  holding anything else (a sequence of layers) takes one item per line.
- Numbers as written (`1_000`, `3.5M`, `8GiB`), else Python's repr; strings
  re-escaped (`\\"`, `\\\\`, `\\n`, `\\t`); `true`, `false`, `none`.
- Comments: a full-line comment is printed before the statement or declaration
  that follows it, or at the end of its body; a comment at the end of a line
  stays at the end of its statement's last line, after two spaces. Comments
  inside a statement that spans several lines move before it. Comments at the
  top of the file that a blank line separates from the first declaration stay
  at the top.
"""
from __future__ import annotations

import math
import re
from bisect import bisect_left

from . import ast as A

WIDTH = 88
INDENT = 4

__all__ = ["print_file", "print_expr", "canonical_order", "WIDTH"]


def _kind(decl) -> int:
    return 0 if isinstance(decl, A.Import) else 1 if isinstance(decl, A.Let) else 2


def canonical_order(decls: list) -> list:
    """Declarations as `print_file` writes them: imports, then `let`s, then the rest, each in written order.
    (`parse(print_file(f)).decls == canonical_order(f.decls)`.)"""
    return sorted(decls, key=_kind)


# -- documents: a small Wadler / Prettier-style layout engine ------------------
# A doc is a str, a list of docs, a _Group, an _Align or a _Line. A group is
# printed flat when it fits in the rest of the line, else its own lines break
# (groups inside it decide again). An _Align indents the lines that break inside
# it to the column where it starts.

class _Group:
    __slots__ = ("doc",)

    def __init__(self, doc):
        self.doc = doc


class _Align:
    __slots__ = ("doc",)

    def __init__(self, doc):
        self.doc = doc


class _Line:
    __slots__ = ("flat",)

    def __init__(self, flat: str):
        self.flat = flat


class _Fill:
    """Items separated by `, `; broken, as many items per line as fit, and a
    line break after an item that itself spans lines."""
    __slots__ = ("items", "k", "after_broken")

    def __init__(self, items: list, k: int = 0, after_broken: bool = False):
        self.items, self.k, self.after_broken = items, k, after_broken


class _Nest:
    """Lines that break inside it are indented `n` more."""
    __slots__ = ("n", "doc")

    def __init__(self, n: int, doc):
        self.n, self.doc = n, doc


class _Choice:
    """Layout `a`, or `b` when broken and `test` (flat) does not fit on the line."""
    __slots__ = ("a", "b", "test")

    def __init__(self, a, b, test):
        self.a, self.b, self.test = a, b, test


_SPACE = _Line(" ")


def _fits(doc, rest: list, room: int) -> bool:
    """Whether `doc`, flat, and what follows it up to the next line break fit in `room`.
    Groups that follow count as flat: an earlier bracket breaks before a later one."""
    cmds = [(False, doc)]
    i = len(rest)
    while room >= 0:
        if not cmds:
            if i == 0:
                return True
            i -= 1
            _, broken, d = rest[i]
            cmds.append((broken, d))
            continue
        broken, d = cmds.pop()
        if isinstance(d, str):
            room -= len(d)
        elif isinstance(d, list):
            cmds.extend((broken, x) for x in reversed(d))
        elif isinstance(d, _Group):
            cmds.append((False, d.doc))
        elif isinstance(d, (_Align, _Nest)):
            cmds.append((broken, d.doc))
        elif isinstance(d, _Choice):
            cmds.append((broken, d.a))
        elif isinstance(d, _Fill):
            if not broken:
                cmds.append((False, _join(d.items, ", ")))
            elif d.k == 0 and d.items:  # the first item, then a separator that may break
                cmds.append((True, _Fill(d.items, 1)))
                cmds.append((True, d.items[0]))
            else:  # the comma after the previous item stays on this line; then a break may come
                return room >= 1
        elif broken:  # a line that breaks: the rest goes on the next line
            return True
        else:
            room -= len(d.flat)
    return False


def _render(doc, column: int = 0, width: int = WIDTH) -> str:
    out: list[str] = []
    pos = column
    stack = [(column, True, doc)]  # (indentation, broken, doc)
    while stack:
        ind, broken, d = stack.pop()
        if isinstance(d, str):
            out.append(d)
            pos += len(d)
        elif isinstance(d, list):
            stack.extend((ind, broken, x) for x in reversed(d))
        elif isinstance(d, _Align):
            stack.append((pos, broken, d.doc))
        elif isinstance(d, _Nest):
            stack.append((ind + d.n, broken, d.doc))
        elif isinstance(d, _Choice):
            use_a = not broken or d.test is None or _fits(d.test, [], width - pos)
            stack.append((ind, broken, d.a if use_a else d.b))
        elif isinstance(d, _Group):
            stack.append((ind, broken and not _fits(d.doc, stack, width - pos), d.doc))
        elif isinstance(d, _Fill):
            if not broken:
                stack.append((ind, False, _join(d.items, ", ")))
            elif d.k == 0:
                if d.items:
                    broken_item = not _item_fits(d.items, 0, stack, width - pos)
                    if len(d.items) > 1:
                        stack.append((ind, True, _Fill(d.items, 1, broken_item)))
                    stack.append((ind, broken_item, d.items[0]))
            else:  # after item k - 1: does `, item` fit on this line?
                item, last = d.items[d.k], d.k == len(d.items) - 1
                flat = not d.after_broken and _item_fits(d.items, d.k, stack, width - pos - 2)
                broken_item = not flat and not _item_fits(d.items, d.k, stack, width - ind)
                if not last:
                    stack.append((ind, True, _Fill(d.items, d.k + 1, broken_item)))
                stack.append((ind, broken_item, item))
                stack.append((ind, True, ", " if flat else [",", _SPACE]))
        elif broken:
            out.append("\n" + " " * ind)
            pos = ind
        else:
            out.append(d.flat)
            pos += len(d.flat)
    return "".join(out)


def _item_fits(items: list, k: int, rest: list, room: int) -> bool:
    """Whether item k of a fill fits flat in `room`, with its comma (or, the last, what follows the fill)."""
    if k == len(items) - 1:
        return _fits(items[k], rest, room)
    return _fits([items[k], ","], [], room)


def _join(docs: list, sep) -> list:
    out: list = []
    for i, d in enumerate(docs):
        if i:
            out.append(sep)
        out.append(d)
    return out


def _bracketed(open_: str, items: list, close: str, fill: bool = True) -> _Group:
    """`(a, b)` flat; broken, the lines aligned after the opening bracket, filled
    (as many items per line as fit) or one item per line."""
    return _Group([open_, _Align(_Fill(items) if fill else _join(items, [",", _SPACE])), close])


def _simple(e) -> bool:
    return isinstance(e, (A.Name, A.Num, A.Str, A.Const)) or (
        isinstance(e, A.UnaryOp) and e.op == "-" and isinstance(e.operand, (A.Num, A.Name)))


# -- expressions -----------------------------------------------------------------

# Precedence, loosest first (arch.lark): -> | a if c else b | or | and | not |
# comparisons | + - | * / // % @ | unary - | ** | call, index, attribute | atoms.
PIPE, COND, OR, AND, NOT, CMP, SUM, PROD, UNARY, POW, POSTFIX, ATOM = range(12)
_LEVEL = {"or": OR, "and": AND, "==": CMP, "!=": CMP, "<": CMP, "<=": CMP, ">": CMP, ">=": CMP,
          "+": SUM, "-": SUM, "*": PROD, "/": PROD, "//": PROD, "%": PROD, "@": PROD, "**": POW}
# The level each operand must have (a looser one is parenthesized).
_OPERANDS = {OR: (OR, AND), AND: (AND, NOT), CMP: (SUM, SUM), SUM: (SUM, PROD), PROD: (PROD, UNARY),
             POW: (POSTFIX, UNARY)}

_NUMBER = re.compile(r"(\d[\d_]*(\.\d+)?|\.\d+)([eE][+-]?\d+)?(KiB|MiB|GiB|TiB|KB|MB|GB|TB|K|M|B|G|T)?")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t"}


def _level(e) -> int:
    if isinstance(e, (A.Pipeline, A.Labelled, A.Annotated)):
        return PIPE
    if isinstance(e, A.Cond):
        return COND
    if isinstance(e, A.BinOp):
        return _LEVEL[e.op]
    if isinstance(e, A.UnaryOp):
        return NOT if e.op == "not" else UNARY
    if isinstance(e, (A.Call, A.Index, A.Attr)):
        return POSTFIX
    return ATOM


def _string(s: str) -> str:
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in s) + '"'


def _number(n: A.Num) -> str:
    v = n.value
    if n.text and _NUMBER.fullmatch(n.text):
        from .parser import parse_number

        if parse_number(n.text) == v:
            return n.text
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"cannot print the number {v!r}")
    return repr(v)


def _x(e, ctx: int = PIPE):
    """The doc of expression `e` where the grammar needs level `ctx`."""
    d = _doc(e)
    if _level(e) < ctx and not isinstance(e, (A.Labelled, A.Annotated)):
        return ["(", _Align(d), ")"]
    return d


def _stage(s):
    if isinstance(s, A.Labelled):
        return [s.label, ": ", _stage(s.stage)]
    if isinstance(s, A.Annotated):
        return ["@", s.annotation, " ", _stage(s.stage)]
    return _x(s, COND)


def _args(args: list, kwargs: list) -> list:
    return [_x(a, PIPE) for a in args] + [[k.name, "=", _x(k.value, PIPE)] for k in kwargs]


def _doc(e):
    if isinstance(e, A.Name):
        return e.id
    if isinstance(e, A.Num):
        return _number(e)
    if isinstance(e, A.Str):
        return _string(e.value)
    if isinstance(e, A.Const):
        return {True: "true", False: "false", None: "none"}[e.value]
    if isinstance(e, A.ListExpr):
        return _bracketed("[", [_x(i, PIPE) for i in e.items], "]", all(map(_simple, e.items)))
    if isinstance(e, A.TupleExpr):
        if len(e.items) == 1:
            return ["(", _x(e.items[0], PIPE), ",)"]
        return _bracketed("(", [_x(i, PIPE) for i in e.items], ")", all(map(_simple, e.items)))
    if isinstance(e, A.Call):
        return [_x(e.func, POSTFIX), _bracketed("(", _args(e.args, e.kwargs), ")")]
    if isinstance(e, A.Kwarg):
        return [e.name, "=", _x(e.value, PIPE)]
    if isinstance(e, A.Index):
        return [_x(e.obj, POSTFIX), "[", _Align(_x(e.index, COND)), "]"]
    if isinstance(e, A.Attr):
        return [_x(e.obj, POSTFIX), ".", e.name]
    if isinstance(e, A.BinOp):  # breaks after the operator (a newline there never ends a statement)
        left, right = _OPERANDS[_LEVEL[e.op]]
        return _Align(_Group([_x(e.left, left), f" {e.op}", _SPACE, _x(e.right, right)]))
    if isinstance(e, A.UnaryOp):
        if e.op == "not":
            return ["not ", _x(e.operand, NOT)]
        return ["-", _x(e.operand, UNARY)]
    if isinstance(e, A.Cond):  # breaks before `else` (a newline there never ends a statement)
        return _Align(_Group([_x(e.then, OR), " if ", _x(e.cond, OR), _SPACE, "else ", _x(e.orelse, COND)]))
    if isinstance(e, A.Pipeline):
        # Broken: `->` lines aligned under the first `->`; but when a head that is not a
        # plain value does not fit on one line with the first stage, every stage goes on
        # its own line, indented 4 past the head.
        head, stages = _x(e.head, COND), [["-> ", _stage(s)] for s in e.stages]
        aligned = [head, " ", _Align(_join(stages, _SPACE))]
        hanging = _Align([head, _Nest(INDENT, [[_SPACE, s] for s in stages])])
        return _Group(_Choice(aligned, hanging, None if _simple(e.head) else [head, " ", stages[0]]))
    if isinstance(e, (A.Labelled, A.Annotated)):  # only valid as a pipeline stage
        return _stage(e)
    if isinstance(e, A.TensorTypeExpr):
        return [e.dtype or "", _bracketed("[", [_x(d, COND) for d in e.dims], "]")]
    raise TypeError(f"cannot print {type(e).__name__} as an expression")


def print_expr(expr) -> str:
    """One expression (or pipeline stage) in canonical form; long pipelines break over lines."""
    return _render(_doc(expr) if isinstance(expr, (A.Labelled, A.Annotated)) else _x(expr, PIPE))


# -- statements and declarations -------------------------------------------------

def _leaf_doc(s):
    if isinstance(s, A.Assign):
        return [s.name, " = ", _x(s.value, PIPE)]
    if isinstance(s, A.Unpack):
        return [", ".join(s.names), " = ", _x(s.value, PIPE)]
    if isinstance(s, A.Return):
        return ["return ", _join([_x(v, PIPE) for v in s.values], ", ")]
    if isinstance(s, A.Input):
        return ["input ", s.name, ": ", _doc(s.type)]
    if isinstance(s, A.Output):
        return ["output ", s.name, " = ", _x(s.value, PIPE)]
    if isinstance(s, A.Assert):
        return ["assert ", _x(s.cond, COND)] + ([", ", _string(s.message)] if s.message is not None else [])
    if isinstance(s, A.Import):
        return ["import ", s.target if s.is_std else _string(s.target)]
    if isinstance(s, A.Let):
        return ["let ", s.name, " = ", _x(s.value, COND)]
    if isinstance(s, A.Call):  # a plan directive
        return _x(s, PIPE)
    raise TypeError(f"cannot print {type(s).__name__} as a statement")


def _param(p: A.Param):
    out: list = [p.name]
    if p.type is not None:
        out += [": ", p.type]
    if p.default is not None:
        out += [" = ", _x(p.default, COND)]
    return out


def _pos(c: A.Comment) -> tuple[int, int]:
    return (c.line, c.column)


def _start(n) -> tuple[int, int] | None:
    sp = getattr(n, "span", None)
    return (sp.line, sp.column) if sp else None


def _end(n) -> tuple[int, int] | None:
    sp = getattr(n, "span", None)
    return (sp.end_line, sp.end_column) if sp else None


_BLANK = None  # a blank line in a gap between statements


class _Seg:
    """One `header { body }` part of a compound statement."""

    def __init__(self, header, body: list, comments: list, open_line: int | None):
        self.header, self.body, self.comments, self.open_line = header, body, comments, open_line
        self.extra: list[A.Comment] = []  # comments moved to the end of this body


class _Printer:
    def __init__(self, file: A.File):
        self.file = file
        self.comments = sorted(getattr(file, "comments", None) or [], key=_pos)
        braces = sorted(getattr(file, "braces", None) or [])
        self.opens: list[tuple[int, int]] = []
        self.match: dict[tuple[int, int], tuple[int, int]] = {}
        stack = []
        for line, col, ch in braces:
            if ch == "{":
                stack.append((line, col))
                self.opens.append((line, col))
            elif stack:
                self.match[stack.pop()] = (line, col)

    # -- comment placement

    def _body_braces(self, after):
        """The `{` of the first body at or after position `after`, and its `}`."""
        if after is None:
            return None, None
        i = bisect_left(self.opens, after)
        if i == len(self.opens) or self.opens[i] not in self.match:
            return None, None
        return self.opens[i], self.match[self.opens[i]]

    def _distribute(self, items, comments, open_line):
        """Split a container's comments: (on the `{` line, before each item, inside each item, after the last)."""
        header, tail = [], []
        before = [[] for _ in items]
        inside = [[] for _ in items]
        spans = [(i, it.span) for i, it in enumerate(items) if getattr(it, "span", None)]
        for c in comments:
            for i, sp in spans:
                if sp.line <= c.line <= sp.end_line:
                    inside[i].append(c)
                    break
            else:
                if not c.own_line and c.line == open_line:
                    header.append(c)
                    continue
                nxt = next((i for i, sp in spans if (sp.line, sp.column) > _pos(c)), None)
                (tail if nxt is None else before[nxt]).append(c)
        return header, before, inside, tail

    @staticmethod
    def _gap(comments, after_line, before_line) -> list:
        """Own-line comments between two lines, with the blank lines among them (at most one in a row)."""
        out: list = []
        prev = after_line
        for c in comments:
            if prev is not None and c.line - prev > 1 and out[-1:] != [_BLANK]:
                out.append(_BLANK)
            out.append(c)
            prev = c.line
        if prev is not None and before_line is not None and before_line - prev > 1 and out[-1:] != [_BLANK]:
            out.append(_BLANK)
        return out

    @staticmethod
    def _strip(gap: list, lead=True, trail=True) -> list:
        while lead and gap and gap[0] is _BLANK:
            gap = gap[1:]
        while trail and gap and gap[-1] is _BLANK:
            gap = gap[:-1]
        return gap

    @staticmethod
    def _gap_lines(gap: list, ind: int) -> list[str]:
        return ["" if g is _BLANK else " " * ind + g.text for g in gap]

    @staticmethod
    def _trailing(node, comments):
        """(the comment after the node's last token on its line, the others in order)."""
        end = _end(node)
        trailing = [c for c in comments if end is not None and not c.own_line and c.line == end[0]
                    and _pos(c) >= end]
        rest = [c for c in comments if c not in trailing]
        return (trailing[-1] if trailing else None), rest + trailing[:-1]

    # -- printing

    def file_text(self) -> str:
        decls = self.file.decls
        _, before, inside, tail = self._distribute(decls, self.comments, None)
        gaps, prev = [], 0
        for i, d in enumerate(decls):
            sp = getattr(d, "span", None)
            gaps.append(self._gap(before[i], prev, sp.line if sp else None))
            prev = sp.end_line if sp else None
        out: list[str] = []
        has_header = False
        if decls:
            g0 = self._strip(gaps[0], trail=False)
            if _BLANK in g0:  # a comment block at the top, set apart by a blank line: the file's header
                k = len(g0) - 1 - g0[::-1].index(_BLANK)
                out += self._gap_lines(g0[:k], 0)
                g0 = g0[k:]
                has_header = True
            gaps[0] = g0
        order = sorted(range(len(decls)), key=lambda i: _kind(decls[i]))
        last_kind = "header" if has_header else None
        for i in order:
            k, gap = _kind(decls[i]), gaps[i]
            if last_kind is None:
                gap = self._strip(gap, trail=False)
            elif last_kind == k and k < 2:  # inside the group of imports or of lets: keep a blank line
                pass
            else:
                gap = self._strip(gap, trail=False)
                out += [""] * (2 if k == 2 or last_kind == 2 else 1)
            out += self._gap_lines(gap, 0)
            out += self._stmt(decls[i], inside[i], 0)
            last_kind = k
        gap = self._strip(self._gap(tail, prev, None), lead=not decls)
        out += self._gap_lines(gap, 0)
        return "\n".join(out) + "\n" if out else ""

    def _body(self, items, comments, ind, open_line, extra):
        """(the comment on the `{` line, the lines of the body)."""
        header, before, inside, tail = self._distribute(items, comments, open_line)
        lines: list[str] = []
        prev = open_line
        for i, item in enumerate(items):
            sp = getattr(item, "span", None)
            gap = self._gap(before[i], prev, sp.line if sp else None)
            lines += self._gap_lines(self._strip(gap, trail=False) if i == 0 else gap, ind)
            lines += self._stmt(item, inside[i], ind)
            prev = sp.end_line if sp else None
        gap = self._strip(self._gap(tail, prev, None), lead=not items)
        lines += self._gap_lines(gap, ind)
        lines += [" " * ind + c.text for c in extra]
        trailing = None
        if header:  # one comment per line: at most one sits on the `{` line
            trailing = header[-1]
            lines = [" " * ind + c.text for c in header[:-1]] + lines
        return trailing, lines

    def _leaf(self, node, comments, ind) -> list[str]:
        trailing, moved = self._trailing(node, comments)
        lines = [" " * ind + c.text for c in moved]
        text = " " * ind + _render(_leaf_doc(node), ind)
        if trailing is not None:
            text += "  " + trailing.text
        return lines + text.split("\n")

    def _stmt(self, s, comments, ind) -> list[str]:
        if isinstance(s, A.If):
            return self._if(s, comments, ind)
        if isinstance(s, A.For):
            head = ["for ", s.var, " in ", _x(s.iter, COND)]
            return self._compound(s, head, s.body, comments, ind)
        if isinstance(s, A.BlockDecl):
            head = [s.kind, " ", s.name, _bracketed("(", [_param(p) for p in s.params], ")")]
            return self._compound(s, head, s.body, comments, ind)
        if isinstance(s, A.PlanDecl):
            head = [s.kind, " ", s.name, " for ", s.model, _bracketed("(", _args(s.args, s.kwargs), ")")]
            return self._compound(s, head, s.directives, comments, ind)
        return self._leaf(s, comments, ind)

    def _split(self, comments, open_, close):
        """Comments before the `{`, between the braces, after the `}`."""
        if open_ is None:
            return list(comments), [], []
        return ([c for c in comments if _pos(c) < open_], [c for c in comments if open_ < _pos(c) < close],
                [c for c in comments if _pos(c) > close])

    def _compound(self, node, head, body, comments, ind) -> list[str]:
        trailing, comments = self._trailing(node, comments)
        o, c = self._body_braces(_start(node))
        lead, inner, after = self._split(comments, o, c)
        seg = _Seg(head, body, inner, o[0] if o else None)
        seg.extra += after
        return self._emit([seg], lead, trailing, ind)

    def _if(self, node, comments, ind) -> list[str]:
        segs: list[_Seg] = []
        lead: list = []
        trailing, rest = self._trailing(node, comments)
        cur = node
        while True:
            o, c = self._body_braces(_start(cur))
            pre, inner, rest = self._split(rest, o, c)
            (segs[-1].extra if segs else lead).extend(pre)
            segs.append(_Seg([("else if " if segs else "if "), _x(cur.cond, COND)], cur.then, inner,
                             o[0] if o else None))
            orelse = cur.orelse
            if orelse is None:
                break
            if len(orelse) == 1 and isinstance(orelse[0], A.If):  # `else if`, also when written `else { if }`
                cur = orelse[0]
                start = _start(cur)
                segs[-1].extra += [x for x in rest if start is None or _pos(x) < start]
                rest = [x for x in rest if start is not None and _pos(x) >= start]
                continue
            o2, c2 = self._body_braces(c)
            pre, inner, rest = self._split(rest, o2, c2)
            segs[-1].extra += pre
            segs.append(_Seg("else", orelse, inner, o2[0] if o2 else None))
            break
        segs[-1].extra += rest  # inside the braces of an `else { if ... }`, after the inner `if`
        return self._emit(segs, lead, trailing, ind)

    def _emit(self, segs: list[_Seg], lead, trailing, ind) -> list[str]:
        """Lines of `head { body } else head { body } ...` with the comments placed."""
        lines = [" " * ind + c.text for c in lead]
        closed = False  # the last line ends with `}` (an empty body written `{}`)
        for i, seg in enumerate(segs):
            prefix = "" if i == 0 else (" " if closed else "} ")
            start = len(lines[-1]) if closed else ind
            text = _render([prefix, seg.header, " {"], start)
            if closed:
                lines[-1] += text
            else:
                lines += (" " * ind + text).split("\n")
            head_comment, body = self._body(seg.body, seg.comments, ind + INDENT, seg.open_line, seg.extra)
            if head_comment is not None:
                lines[-1] += "  " + head_comment.text
            if body or head_comment is not None:
                lines += body
                closed = False
            else:
                lines[-1] += "}"
                closed = True
        if not closed:
            lines.append(" " * ind + "}")
        if trailing is not None:
            lines[-1] += "  " + trailing.text
        return lines


def print_file(file: A.File) -> str:
    """The whole file in canonical layout, with the comments `parse` recorded on it."""
    return _Printer(file).file_text()
