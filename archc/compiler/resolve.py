"""Imports, declarations and names: a set of parsed files -> one Program."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..grammar import ast as A
from ..grammar.parser import parse
from .diagnostics import CompileError, Diagnostic, deep_recursion, did_you_mean

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"
BUILTINS = ("range", "len", "min", "max", "abs", "choice", "cell")


@dataclass
class Program:
    """Every declaration visible from one root file, by name."""

    root: str
    files: dict[str, A.File] = field(default_factory=dict)
    lets: dict[str, A.Let] = field(default_factory=dict)
    blocks: dict[str, A.BlockDecl] = field(default_factory=dict)  # blocks and models
    plans: dict[str, A.PlanDecl] = field(default_factory=dict)

    def models(self, own_only: bool = True) -> list[str]:
        """Model names; by default only those declared in the root file."""
        return [n for n, d in self.blocks.items()
                if d.kind == "model" and (not own_only or (d.span and d.span.file == self.root))]


MAX_IMPORT_DEPTH = 32


def allowed_roots(base: Path) -> list[Path]:
    """Where a file in `base` may import from: its own folder tree first, then the
    folders in ARCHC_PATH, then the shipped specs."""
    roots = [base.resolve()]
    for entry in os.environ.get("ARCHC_PATH", "").split(os.pathsep):
        if entry:
            roots.append(Path(entry).resolve())
    roots.append(SPECS_DIR.resolve())
    return roots


def std_path(dotted: str) -> Path:
    """`std.resnet` -> archc/specs/resnet.arch."""
    parts = dotted.split(".")
    return SPECS_DIR.joinpath(*parts[1:]).with_suffix(".arch")


def load_text(text: str | bytes, filename: str) -> Program:
    prog = Program(root=filename)
    _load(prog, text, filename, base=Path(filename).resolve().parent if filename != "<string>" else Path.cwd(),
          stack=[], errors=(errs := []))
    if errs:
        raise CompileError(errs)
    return prog


def load_file(path: str | os.PathLike) -> Program:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise CompileError(Diagnostic("E0101", f"cannot read `{path}`: {e.strerror}", None,
                                      help="check the path"))
    return load_text(data, str(path))


def _load(prog: Program, text, filename: str, base: Path, stack: list[str], errors: list[Diagnostic]) -> None:
    key = str(Path(filename).resolve()) if filename != "<string>" else filename
    if key in prog.files:
        return
    try:
        tree = parse(text, filename)
    except CompileError as e:
        errors.extend(e.diagnostics)
        return
    prog.files[key] = tree
    for decl in tree.decls:
        if isinstance(decl, A.Import):
            _import(prog, decl, base, stack + [key], errors)
    for decl in tree.decls:
        if isinstance(decl, A.Import):
            continue
        table = (prog.lets if isinstance(decl, A.Let) else prog.plans if isinstance(decl, A.PlanDecl)
                 else prog.blocks)
        name = decl.name
        clash = prog.lets.get(name) or prog.blocks.get(name) or prog.plans.get(name)
        if clash is not None:
            errors.append(Diagnostic(
                "E0103", f"`{name}` is defined twice", decl.span, label="second definition",
                notes=[f"first defined at {clash.span}"] if clash.span else [],
                help="rename one of them"))
            continue
        table[name] = decl


def _import(prog: Program, imp: A.Import, base: Path, stack: list[str], errors: list[Diagnostic]) -> None:
    if imp.is_std:
        if not imp.target.startswith("std."):
            errors.append(Diagnostic("E0101", f"cannot import `{imp.target}`", imp.span,
                                     help='import a shipped spec as `std.NAME` or a file as `"path.arch"`'))
            return
        path = std_path(imp.target)
        if not path.is_file():
            shipped = sorted("std." + p.stem for p in SPECS_DIR.glob("*.arch"))
            errors.append(Diagnostic("E0101", f"no shipped spec `{imp.target}`", imp.span,
                                     help=did_you_mean(imp.target, shipped) or
                                     "shipped specs: " + ", ".join(shipped)))
            return
    else:
        roots = allowed_roots(base)
        search = [r for r in roots[1:] if r != SPECS_DIR.resolve()]  # ARCHC_PATH; std is `import std.NAME`
        candidates = [base / imp.target] + [r / imp.target for r in search if not Path(imp.target).is_absolute()]
        found = [c for c in candidates if c.is_file()]
        if not found:
            errors.append(Diagnostic("E0101", f"cannot find `{imp.target}`", imp.span,
                                     help="import paths are relative to the importing file (or a folder in "
                                     "ARCHC_PATH)"))
            return
        path = found[0].resolve()  # symbolic links are followed before the check below
        if not any(path.is_relative_to(r) for r in roots):
            errors.append(Diagnostic("E0105", f"`{imp.target}` is outside the folders a spec may import from",
                                     imp.span, label=f"this is {path}",
                                     help="a spec imports files under its own folder, folders named in "
                                     "ARCHC_PATH, and `std.*`"))
            return
    if len(stack) >= MAX_IMPORT_DEPTH:
        errors.append(Diagnostic("E0402", f"imports nest deeper than {MAX_IMPORT_DEPTH} files", imp.span,
                                 help="flatten the chain of imports"))
        return
    key = str(path.resolve())
    if key in stack:
        chain = " -> ".join(Path(s).name for s in stack[stack.index(key):] + [key])
        errors.append(Diagnostic("E0102", f"import cycle: {chain}", imp.span,
                                 help="move the shared declarations into a third file"))
        return
    _load(prog, path.read_bytes(), str(path), path.parent, stack, errors)


# -- a static check of names, so that several are reported at once -------------

def check_names(prog: Program, op_names, files: list[str] | None = None) -> list[Diagnostic]:
    """Unknown names in every block and model body (flow-insensitive)."""
    with deep_recursion():
        return _check_names(prog, op_names, files)


def _check_names(prog: Program, op_names, files) -> list[Diagnostic]:
    globals_ = set(prog.lets) | set(prog.blocks) | set(op_names) | set(BUILTINS)
    diags: list[Diagnostic] = []
    for let in prog.lets.values():  # every let is checked, used or not
        if files is None or (let.span and let.span.file in files):
            _walk_names(let.value, globals_, diags)
    # Names used as dimensions in any input type are symbols everywhere.
    symbols = {n.id for d in prog.blocks.values() for t in _find(d.body, A.TensorTypeExpr)
               for x in t.dims for n in _find(x, A.Name)}
    for decl in prog.blocks.values():
        if files is not None and (decl.span is None or decl.span.file not in files):
            continue
        seen: set[str] = set()
        for p in decl.params:
            if p.name in seen:
                diags.append(Diagnostic("E0103", f"parameter `{p.name}` is declared twice", p.span,
                                        help="give each parameter its own name"))
            seen.add(p.name)
        bound = {p.name for p in decl.params} | _bound_in(decl.body) | symbols
        visible = globals_ | bound
        for p in decl.params:
            if p.default is not None:
                _walk_names(p.default, visible, diags)
        for stmt in decl.body:
            _walk_names(stmt, visible, diags)
    return diags


def _bound_in(stmts) -> set[str]:
    names: set[str] = set()

    def visit(node):
        if isinstance(node, (A.Assign, A.Input, A.Output)):
            names.add(node.name)
        elif isinstance(node, A.Unpack):
            names.update(node.names)
        elif isinstance(node, A.For):
            names.add(node.var)
        elif isinstance(node, A.Labelled):
            names.add(node.label)
        for child in _children(node):
            visit(child)

    for s in stmts:
        visit(s)
    return names


def _find(node, cls) -> list:
    """Every node of class `cls` at or below `node`."""
    out = [node] if isinstance(node, cls) else []
    for child in _children(node):
        out.extend(_find(child, cls))
    return out


def _children(node):
    if isinstance(node, list):
        return node
    if not isinstance(node, A.Node):
        return []
    out = []
    for name in node.__dataclass_fields__:
        if name == "span":
            continue
        v = getattr(node, name)
        if isinstance(v, A.Node):
            out.append(v)
        elif isinstance(v, list):
            out.extend(x for x in v if isinstance(x, A.Node))
    return out


def _walk_names(node, visible: set[str], diags: list[Diagnostic]) -> None:
    if isinstance(node, A.TensorTypeExpr):
        return  # unbound names in a tensor type are symbols
    if isinstance(node, A.Name) and node.id not in visible:
        diags.append(Diagnostic("E0201", f"unknown name `{node.id}`", node.span, label="not defined",
                                help=did_you_mean(node.id, visible)))
    if isinstance(node, A.Kwarg):
        _walk_names(node.value, visible, diags)
        return
    for child in _children(node):
        _walk_names(child, visible, diags)
