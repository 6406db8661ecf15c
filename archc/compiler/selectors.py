"""Selectors: which modules a plan directive applies to (LANGUAGE.md section 9).

`"h.*.attn.qkv"` globs over module paths (`*` is one path component, `**` any
number); a pattern that matches a container selects everything under it, so
`"*"` is the whole model. `"op:linear"` picks nodes by op, `"block:Decoder"`
every instance of a block. Commas make unions; `exclude=` removes.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from functools import lru_cache

from .diagnostics import CompileError, Diagnostic, Span
from .ir import Graph


@dataclass
class Selection:
    nodes: set[int] = field(default_factory=set)
    modules: list[str] = field(default_factory=list)  # the matched paths, in graph order


@lru_cache(maxsize=256)
def _glob(pattern: str) -> re.Pattern:
    """A regex matching `path + "."`: each component is followed by a dot."""
    rx = ""
    for comp in pattern.split("."):
        if comp == "**":
            rx += r"(?:[^.]+\.)*"
        else:
            rx += "".join("[^.]*" if ch == "*" else "[^.]" if ch == "?" else re.escape(ch) for ch in comp) + r"\."
    return re.compile(rx)


def _matches(pattern: str, path: str) -> bool:
    return _glob(pattern).fullmatch(path + ".") is not None


def _prefixes(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _match_one(graph: Graph, term: str, real) -> tuple[set[int], list[str]]:
    nodes: set[int] = set()
    mods: dict[str, None] = {}
    if term.startswith("op:"):
        op = term[3:]
        for n in real:
            if n.op == op:
                nodes.add(n.id)
                mods[n.path] = None
    elif term.startswith("block:"):
        block = term[6:]
        for n in real:
            for site in n.calls:
                if site.block == block:
                    nodes.add(n.id)
                    mods[site.path] = None
                    break
    else:
        for n in real:
            for p in _prefixes(n.path):
                if _matches(term, p):
                    nodes.add(n.id)
                    mods[p] = None
                    break
    return nodes, list(mods)


def select(graph: Graph, selector: str, exclude: str | None = None, span: Span | None = None,
           what: str = "selector") -> Selection:
    """Resolve a selector; one that matches nothing is error E0503 listing near misses."""
    real = [n for n in graph.nodes() if n.op not in ("input", "output")]
    sel = Selection()
    mods: dict[str, None] = {}
    for term in [t.strip() for t in selector.split(",") if t.strip()]:
        nodes, paths = _match_one(graph, term, real)
        if not nodes:
            raise CompileError(Diagnostic("E0503", f"{what} `{term}` matches nothing", span,
                                          help=_near_misses(graph, term, real)))
        sel.nodes |= nodes
        mods.update(dict.fromkeys(paths))
    if exclude:
        for term in [t.strip() for t in exclude.split(",") if t.strip()]:
            nodes, paths = _match_one(graph, term, real)
            sel.nodes -= nodes
            for p in paths:
                mods.pop(p, None)
    sel.modules = [m for m in mods if any(graph.node(i).path == m or graph.node(i).path.startswith(m + ".")
                                          for i in sel.nodes)]
    return sel


def _near_misses(graph: Graph, term: str, real) -> str:
    if term.startswith("op:"):
        pool, prefix, key = {n.op for n in real}, "op:", term[3:]
    elif term.startswith("block:"):
        pool, prefix, key = {s.block for n in real for s in n.calls}, "block:", term[6:]
    else:
        pool, prefix, key = {p for n in real for p in _prefixes(n.path)}, "", term
    close = difflib.get_close_matches(key, sorted(pool), n=4, cutoff=0.5)
    if close:
        return "near misses: " + ", ".join(f"`{prefix}{c}`" for c in close)
    sample = sorted(pool)[:6]
    return "available: " + ", ".join(f"`{prefix}{c}`" for c in sample) + (" ..." if len(pool) > 6 else "")
